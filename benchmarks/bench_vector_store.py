"""Benchmark: the embedded vector store (qdrant-edge) at MovieLens-32M catalogue size.

    python benchmarks/bench_vector_store.py [--points 87000] [--dimension 1536] [--queries 3000] [--k 10]
        [--repeat 3] [--rebuild-repeat 1] [--workdir DIR] [--json PATH]

Data (untimed): ``--points`` float32 unit vectors of ``--dimension`` with some cluster structure
(400 random centres, each vector = 0.6 x its centre + standard normal noise, then normalised;
seed 20240401), MovieLens-like sparse ids, and small payloads (Korean title, series_id, year).

Timed, each in its own ``store.open()`` session as the pipeline does it:

1. ``rebuild``: a new generation filled and indexed (HNSW built by ``EdgeShard.optimize()``,
   flushed, manifest written, pointer switched, older generation dropped), ``--rebuild-repeat``
   times (each repeat builds the next generation);
2. reopen: ``store.open()`` + ``info()`` (loads the shard from disk; page cache warm), ``--repeat`` times;
3. ``neighbours`` of ``--queries`` ids drawn from the catalogue, k = ``--k``: the first call after a
   reopen, then ``--repeat`` more on the same session (median reported);
4. ``search`` of ``--queries`` arbitrary vectors with 5 excluded ids each, ``--repeat`` times;
5. ``upsert`` of 500 new vectors (copy-on-write: a new generation), once.

Checked (untimed): recall@k of ``neighbours`` against exact cosine search (numpy) on 300 of the ids,
and the largest score difference; every answer excludes the query id.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import print_machine  # noqa: E402

from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore, embedded  # noqa: E402

COLLECTION = "movie_emb_kr"
MODEL = "bench/random-clusters"
SEED = 20240401


def make_data(points: int, dimension: int, seed: int = SEED):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 300_001), points, replace=False)).astype(np.int64)
    centres = rng.standard_normal((400, dimension), dtype=np.float32)
    vectors = centres[rng.integers(0, 400, points)] * 0.6
    vectors += rng.standard_normal((points, dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    years = rng.integers(1920, 2025, points)
    series = np.where(rng.random(points) < 0.3, rng.integers(1, 5000, points), 0)
    payloads = [{"title": f"영화 {i}", "series_id": int(s), "year": int(y)}
                for i, s, y in zip(ids, series, years, strict=True)]
    return rng, ids, vectors, payloads


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included (the engine's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=87_000)
    parser.add_argument("--dimension", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild-repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ef-construct", type=int, default=None,
                        help="HNSW ef_construct to build with instead of the store's (a trial; recall is printed)")
    args = parser.parse_args()
    machine = print_machine()
    if args.ef_construct is not None:
        embedded.HNSW_EF_CONSTRUCT = args.ef_construct
    print(f"HNSW m={embedded.HNSW_M}, ef_construct={embedded.HNSW_EF_CONSTRUCT}", flush=True)

    t = time.perf_counter()
    rng, ids, vectors, payloads = make_data(args.points, args.dimension)
    print(f"data: {args.points:,} x {args.dimension} in {time.perf_counter() - t:.1f} s (untimed)", flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_vectors_"))
    if workdir.exists():
        shutil.rmtree(workdir)
    store = EmbeddedQdrantStore(path=str(workdir))
    result: dict = {"points": args.points, "dimension": args.dimension, "queries": args.queries, "k": args.k,
                    "machine": machine}

    rebuilds = []
    for _ in range(args.rebuild_repeat):
        load = os.getloadavg()[0]
        cpu = cpu_seconds()
        t = time.perf_counter()
        with store.open() as session:
            stats = session.rebuild(COLLECTION, ids, vectors, payloads, model=MODEL)
        wall = time.perf_counter() - t
        cpu_share = (cpu_seconds() - cpu) / wall  # cores this process kept busy (2 = both, here)
        rebuilds.append({"wall": wall, "cpu_cores_used": round(cpu_share, 2), "loadavg_1min_before": load,
                         **{k: stats[k] for k in ("upload_seconds", "index_seconds", "seconds",
                                                  "indexed_vectors", "generation")}})
        print(f"rebuild: {wall:.1f} s (points written {stats['upload_seconds']:.1f} s, index "
              f"{stats['index_seconds']:.1f} s, {stats['indexed_vectors']:,} vectors indexed; "
              f"{cpu_share:.2f} cores busy, load average before {load:.2f})", flush=True)
    result["rebuild"] = {**summary([r["wall"] for r in rebuilds]), "details": rebuilds}
    result["disk_mb"] = round(sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()) / 1024 ** 2, 1)

    query_ids = rng.choice(ids, args.queries, replace=False)
    reopen, first, repeats, search_runs = [], [], [], []
    answers = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        with store.open() as session:
            info = session.info(COLLECTION)
            reopen.append(time.perf_counter() - t)
            assert info["points"] == args.points
            t = time.perf_counter()
            answers = session.neighbours(COLLECTION, query_ids, args.k)
            first.append(time.perf_counter() - t)
    print(f"reopen (open + info): median {statistics.median(reopen):.2f} s; first neighbours call after it: "
          f"median {statistics.median(first):.2f} s", flush=True)
    queries = rng.standard_normal((args.queries, args.dimension), dtype=np.float32)
    exclude = [set(rng.choice(ids, 5).tolist()) for _ in range(args.queries)]
    with store.open() as session:
        session.info(COLLECTION)
        for _ in range(args.repeat):
            t = time.perf_counter()
            answers = session.neighbours(COLLECTION, query_ids, args.k)
            repeats.append(time.perf_counter() - t)
        for _ in range(args.repeat):
            t = time.perf_counter()
            found, _ = session.search(COLLECTION, queries, args.k, exclude=exclude)
            search_runs.append(time.perf_counter() - t)
            assert not any(set(row.tolist()) & ex for row, ex in zip(found, exclude, strict=True))
    print(f"neighbours x{args.queries}: median {statistics.median(repeats):.2f} s; search x{args.queries} "
          f"(5 exclusions each): median {statistics.median(search_runs):.2f} s", flush=True)
    result["reopen"] = summary(reopen)
    result["neighbours_first_after_reopen"] = summary(first)
    result["neighbours"] = summary(repeats)
    result["search"] = summary(search_runs)

    # recall against exact cosine search
    got_ids, got_scores = answers
    assert not (got_ids == query_ids[:, None]).any(), "a query id came back as its own neighbour"
    position = {int(v): j for j, v in enumerate(ids)}
    sample = np.array([position[int(i)] for i in query_ids[:300]])
    exact = vectors[sample] @ vectors.T
    exact[np.arange(len(sample)), sample] = -np.inf
    top = np.argsort(-exact, axis=1)[:, :args.k]
    recall = np.mean([len(set(ids[top[r]].tolist()) & set(got_ids[r].tolist())) / args.k for r in range(len(sample))])
    score_error = float(np.max(np.abs(np.sort(exact, axis=1)[:, ::-1][:, :args.k] - got_scores[:300])))
    result["recall_at_k"] = float(recall)
    result["max_score_error"] = score_error
    print(f"recall@{args.k} vs exact (300 ids): {recall:.4f}; largest score difference {score_error:.2e}", flush=True)

    new_ids = np.arange(400_001, 400_501, dtype=np.int64)
    new_vectors = rng.standard_normal((500, args.dimension), dtype=np.float32)
    t = time.perf_counter()
    with store.open() as session:
        up = session.upsert(COLLECTION, new_ids, new_vectors, None, model=MODEL)
    result["upsert_500"] = {"wall": time.perf_counter() - t, "points": up["points"], "generation": up["generation"]}
    print(f"upsert 500 (copy-on-write generation {up['generation']}): {result['upsert_500']['wall']:.1f} s", flush=True)

    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, default=str)[:2000])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
