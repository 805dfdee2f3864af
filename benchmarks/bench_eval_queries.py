"""Benchmark: the evaluation pairs' histories rebuilt by every consumer vs stored once (``eval_queries``).

    python benchmarks/bench_eval_queries.py --data benchmarks/work/scale/full --state /tmp/eq-state [--repeat 3]

Before ``eval_queries``, each hit ratio of a strategy that reads histories (``seq_rules``, ``item_knn``,
``slist``, ``seq_hybrid``) read the stored ratings' three columns and ran ``build_queries`` over them,
and the leaderboard did it once more (``max_len=1``, for its split by history length): five times a
run. Now ``eval_queries`` does it once and stores the queries; the four hit ratios and the
leaderboard load them. This script times both ways, as the assets run them, on a state folder of
its own (``--state``): the first time it materializes ``movielens_ratings`` and ``eval_transitions``
there (study settings 1,000 / 3,000) from ``--data`` (only read).

Each measured piece runs in a fresh Python process (``--child``), so its peak memory is its own
(``VmHWM``, with the process's size after its imports beside it); the pieces alternate ``--repeat``
times and the medians are reported, with the load average before and after (the machine may be
shared). The setup runs in a process of its own too (``--setup``).

* ``rebuild``: one old consumer: ``read_arrays`` of userId/movieId/timestamp + ``build_queries``;
* ``leaderboard_old`` / ``leaderboard_new``: the leaderboard's ratings work: popularity before the
  window and the history bins, from ``build_queries(max_len=1)`` over three columns (old) or from the
  stored queries and two columns (new);
* ``eval_queries``: the new asset's work: read, build, the arrays, their digest, the ``.npz`` write;
* ``load``: one new consumer: the ``.npz`` read, ``queries_from_arrays`` and the check against the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import print_machine

REPO = Path(__file__).resolve().parent.parent
PIECES = ("rebuild", "eval_queries", "load", "leaderboard_old", "leaderboard_new")
HISTORY_CONSUMERS = 4  # hit_ratio_seq_rules, _item_knn, _slist, _seq_hybrid


def _peak_mb() -> float:
    """This process's peak RSS: VmHWM of its own address space (ru_maxrss would carry the parent's
    high-water mark across fork + exec, and the parent may have materialized the ratings)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class _Laps:
    """Named wall-clock laps of one piece, and its memory (after imports, peak)."""

    WORK = ("read", "build", "arrays_and_digest", "write", "load", "popularity", "history_bins")

    def __init__(self) -> None:
        self.imports_mb = _peak_mb()
        self.times: dict[str, float] = {}
        self.started = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.started, 3)
        self.started = now

    def result(self) -> dict:
        return {**self.times, "total": round(sum(v for k, v in self.times.items() if k in self.WORK), 3),
                "peak_mb": round(_peak_mb()), "imports_mb": round(self.imports_mb)}


def _history_piece(piece: str, pairs, ratings_path: Path, stored: Path, laps: _Laps) -> None:
    """``rebuild`` (one old consumer) or ``eval_queries`` (the new asset: also arrays, digest, write)."""
    import numpy as np

    from rcmd_pipeline import storage
    from rcmd_pipeline.assets.evaluation import HISTORY_MAX_LEN
    from rcmd_pipeline.assets.strategies import TRAINING_COLUMNS
    from rcmd_pipeline.assets.versioning import arrays_digest
    from rcmd_pipeline.recommenders.history import build_queries, queries_to_arrays
    from rcmd_pipeline.resources.local_state import read_arrays

    ratings = read_arrays(ratings_path, TRAINING_COLUMNS)
    laps.lap("read")
    queries = build_queries(pairs, ratings["userId"], ratings["movieId"], ratings["timestamp"], max_len=HISTORY_MAX_LEN)
    del ratings
    laps.lap("build")
    if piece == "eval_queries":
        arrays = queries_to_arrays(queries)
        arrays_digest(arrays)
        laps.lap("arrays_and_digest")

        def write(path: Path) -> None:
            with open(path, "wb") as out:
                np.savez(out, **arrays)
        storage.atomic_write(stored, write)
        laps.lap("write")
        laps.times.update(stored_mb=round(stored.stat().st_size / 2**20, 1), history_items=int(len(queries.items)))


def _load_stored(pairs, stored: Path):
    from rcmd_pipeline import storage
    from rcmd_pipeline.recommenders.history import queries_from_arrays, queries_match_pairs

    queries = queries_from_arrays(storage.load_npz(stored))
    assert queries_match_pairs(queries, pairs)
    return queries


def _leaderboard_piece(piece: str, pairs, ratings_path: Path, stored: Path, laps: _Laps) -> None:
    """The leaderboard's ratings work, old (three columns, ``build_queries(max_len=1)``) or new."""
    from rcmd_pipeline.assets.evaluation import LEADERBOARD_RATINGS, window_popularity
    from rcmd_pipeline.assets.strategies import TRAINING_COLUMNS
    from rcmd_pipeline.recommenders.history import build_queries, history_bin_labels
    from rcmd_pipeline.resources.local_state import read_arrays

    ratings = read_arrays(ratings_path, TRAINING_COLUMNS if piece == "leaderboard_old" else LEADERBOARD_RATINGS)
    laps.lap("read")
    window_popularity(ratings, int(pairs["timestamp"].min()))
    laps.lap("popularity")
    if piece == "leaderboard_old":
        queries = build_queries(pairs, ratings["userId"], ratings["movieId"], ratings["timestamp"], max_len=1)
    else:
        queries = _load_stored(pairs, stored)
    del ratings
    history_bin_labels(queries)
    laps.lap("history_bins")


def _child(piece: str, state: Path) -> dict:
    import pandas as pd

    import rcmd_pipeline.assets.evaluation  # noqa: F401 - the imports a step has, outside the timing

    laps = _Laps()
    assets = state / "assets"
    ratings_path, stored = assets / "movielens_ratings.parquet", assets / "eval_queries.npz"
    pairs = pd.read_parquet(assets / "eval_transitions.parquet")
    laps.started = time.perf_counter()
    if piece in ("rebuild", "eval_queries"):
        _history_piece(piece, pairs, ratings_path, stored, laps)
    elif piece == "load":
        _load_stored(pairs, stored)
        laps.lap("load")
    else:
        _leaderboard_piece(piece, pairs, ratings_path, stored, laps)
    return laps.result()


def _setup(data: Path, state: Path) -> None:
    """movielens_ratings and eval_transitions (study settings) materialized into ``state``, once."""
    assets = state / "assets"
    if (assets / "movielens_ratings.parquet").exists() and (assets / "eval_transitions.parquet").exists():
        return
    from dagster import materialize

    from rcmd_pipeline.assets.evaluation import eval_transitions
    from rcmd_pipeline.assets.movielens import movielens_ratings
    from rcmd_pipeline.resources.lazy_input import LAZY, LazyInputManager
    from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager
    from rcmd_pipeline.resources.movielens import MovieLensFiles

    state.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = materialize(
        [movielens_ratings, eval_transitions],
        resources={"io_manager": LocalStateIOManager(base_dir=str(state)), LAZY: LazyInputManager(base_dir=str(state)),
                   "local_state": LocalStateDir(base_dir=str(state)), "movielens": MovieLensFiles(path=str(data))},
        run_config={"ops": {"eval_transitions": {"config": {"min_movie_ratings": 1000, "eval_size": 3000}}}})
    assert result.success
    print(f"setup: movielens_ratings and eval_transitions in {time.perf_counter() - started:.0f} s", flush=True)


def _check(state: Path) -> None:
    """The stored queries equal build_queries' on the whole ratings (every field)."""
    import numpy as np
    import pandas as pd

    from rcmd_pipeline import storage
    from rcmd_pipeline.assets.evaluation import HISTORY_MAX_LEN
    from rcmd_pipeline.assets.strategies import TRAINING_COLUMNS
    from rcmd_pipeline.recommenders.history import QUERY_ARRAYS, build_queries, queries_from_arrays
    from rcmd_pipeline.resources.local_state import read_arrays

    assets = state / "assets"
    pairs = pd.read_parquet(assets / "eval_transitions.parquet")
    ratings = read_arrays(assets / "movielens_ratings.parquet", TRAINING_COLUMNS)
    want = build_queries(pairs, ratings["userId"], ratings["movieId"], ratings["timestamp"], max_len=HISTORY_MAX_LEN)
    got = queries_from_arrays(storage.load_npz(assets / "eval_queries.npz"))
    same = all(np.array_equal(getattr(got, f), getattr(want, f)) for f in QUERY_ARRAYS)
    lengths = np.diff(want.offsets)
    print(f"check: stored queries equal build_queries' on {len(ratings['userId']):,} ratings: {same}; "
          f"{len(pairs):,} pairs, {len(want.items):,} history items, history length mean {lengths.mean():.1f}, "
          f"median {np.median(lengths):.0f}, max {lengths.max():,}")
    if not same:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a MovieLens folder (ratings.parquet), only read")
    parser.add_argument("--state", type=Path, required=True, help="a state folder of this benchmark's own")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=PIECES)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        _check(args.state)
        return
    if args.child:
        print(json.dumps(_child(args.child, args.state)))
        return
    if args.setup:
        _setup(args.data, args.state)
        return
    machine = print_machine()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, __file__, "--data", str(args.data), "--state", str(args.state), "--setup"],
                   env=env, check=True)
    load_before = _load()
    runs: dict[str, list[dict]] = {piece: [] for piece in PIECES}
    for round_ in range(args.repeat):
        for piece in PIECES:
            out = subprocess.run([sys.executable, __file__, "--state", str(args.state), "--child", piece],
                                 env=env, check=True, capture_output=True, text=True).stdout
            runs[piece].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {piece:16s} {runs[piece][-1]}  (load {_load()})", flush=True)
    subprocess.run([sys.executable, __file__, "--state", str(args.state), "--check"], env=env, check=True)
    median = {piece: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for piece, rs in runs.items()}
    before = HISTORY_CONSUMERS * median["rebuild"]["total"] + median["leaderboard_old"]["total"]
    after = (median["eval_queries"]["total"] + HISTORY_CONSUMERS * median["load"]["total"]
             + median["leaderboard_new"]["total"])
    summary = {"median": median, "before_seconds": round(before, 2), "after_seconds": round(after, 2),
               "saved_seconds": round(before - after, 2), "load_before": load_before, "load_after": _load(),
               "machine": machine, "runs": runs}
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "machine")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
