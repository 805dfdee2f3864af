"""Benchmark: TMDB fetch rate of ``HttpTmdbClient`` against a local TMDB-shaped server with latency.

    python benchmarks/bench_tmdb_fetch.py [--n 400] [--rate 40] [--latency 0.05] [--repeat 3] [--json PATH]

The fake server (``rcmd_pipeline_tests/fake_tmdb_server.py``, a real HTTP server on 127.0.0.1)
answers every ``/3/movie/{id}`` after ``--latency`` seconds. Each repeat fetches ``--n`` distinct
ids into a fresh temporary cache with ``requests_per_second=--rate`` and the default concurrency,
so every id is one HTTP request. The figure is ``FetchReport.requests_per_second`` (requests sent /
wall time of ``fetch_details``). The goal is that the rate limit, not the latency, bounds it:
with 50 ms per answer one connection alone would manage 20 req/s, so reaching ~40 req/s needs the
concurrent workers, and exceeding it would mean the limiter leaks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import print_machine  # noqa: E402

from rcmd_pipeline.resources.tmdb import HttpTmdbClient  # noqa: E402
from rcmd_pipeline_tests.fake_tmdb_server import FakeTmdbServer, movie_body, slow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="distinct TMDB ids per repeat")
    parser.add_argument("--rate", type=float, default=40.0, help="requests_per_second of the client")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    machine = print_machine()

    ids = list(range(100_001, 100_001 + args.n))
    bodies = {t: movie_body(t) for t in ids}
    client_defaults = HttpTmdbClient()
    runs = []
    with FakeTmdbServer(bodies, default_fault=slow(args.latency)) as server:
        client = HttpTmdbClient(base_url=server.url, read_access_token="bench", requests_per_second=args.rate)
        for i in range(args.repeat):
            server.reset_log()
            with tempfile.TemporaryDirectory(prefix="bench_tmdb_") as cache:
                records, report = client.fetch_details([(t, t) for t in ids], cache)
            if len(records) != args.n or report.failed or server.total() != args.n:
                raise SystemExit(f"run {i + 1}: expected {args.n} records and requests, got {len(records)} records, "
                                 f"{server.total()} requests, {len(report.failed)} failed")
            runs.append({"seconds": report.seconds, "requests": report.requests_sent,
                         "requests_per_second": report.requests_per_second})
            print(f"run {i + 1}: {report.requests_sent} requests in {report.seconds:.2f} s = "
                  f"{report.requests_per_second:.2f} req/s", flush=True)

    rates = [r["requests_per_second"] for r in runs]
    result = {
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
        "n": args.n, "rate_limit": args.rate, "latency_seconds": args.latency, "repeat": args.repeat,
        "max_concurrency": client_defaults.max_concurrency,
        "median_rps": statistics.median(rates), "min_rps": min(rates), "max_rps": max(rates),
        "runs": runs,
        "machine": machine,
    }
    print(f"median {result['median_rps']:.2f} req/s (min {result['min_rps']:.2f}, max {result['max_rps']:.2f}); "
          f"limit {args.rate:g} req/s, {args.latency * 1000:g} ms per answer, "
          f"{client_defaults.max_concurrency} connections")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
