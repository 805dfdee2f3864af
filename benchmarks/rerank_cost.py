"""What the re-ranker adds to ``sequence_tuning``'s choice on the demo: time and peak RSS.

    python benchmarks/rerank_cost.py            # 4 fresh processes: without, with, without, with

Each process runs ``choose_sequence_parameters`` as the asset does (study settings 1,000 / 3,000, the
asset's grids and 2 M-rating cap), without (``none``) or with (``rerank``) the re-ranker, and prints
wall and CPU seconds, the process's peak RSS (``ru_maxrss``, imports and the loaded ratings included)
and the same just before the re-ranker starts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(mode: str) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from eval_real_small import DEMO, MAX_LEN, SLIST_ITEMS, _load

    from rcmd_pipeline.evaluation.rerank_choice import RerankOptions
    from rcmd_pipeline.evaluation.tuning import TUNING_MAX_RATINGS, choose_sequence_parameters, validation_split

    users, movies, times = _load(DEMO)
    split = validation_split(users, movies, times, 1000, 3000)
    marks = {}
    wall, cpu = time.perf_counter(), time.process_time()

    def log(line: str) -> None:
        if line.startswith("seq_hybrid: weights"):
            marks["seconds_before_rerank"] = round(time.perf_counter() - wall, 1)
            marks["peak_mb_before_rerank"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    choice = choose_sequence_parameters(lambda: (users, movies, times), split.final_cutoff, 1000, 3000, 10,
                                        fixed={"slist": SLIST_ITEMS}, depth=50, max_len=MAX_LEN, log=log,
                                        max_training_ratings=TUNING_MAX_RATINGS,
                                        rerank=RerankOptions() if mode == "rerank" else None)
    print(json.dumps({"mode": mode, "wall_s": round(time.perf_counter() - wall, 1),
                      "cpu_s": round(time.process_time() - cpu, 1),
                      "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **marks,
                      "selected": choice.selected, "load_average": [round(x, 1) for x in os.getloadavg()]}),
          flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one(sys.argv[1])
    else:
        for mode in ("none", "rerank", "none", "rerank"):
            subprocess.run([sys.executable, __file__, mode], check=True)
