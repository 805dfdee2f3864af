"""Benchmark: the ``movie_vectors`` asset against its engine, at MovieLens-32M catalogue size (issue 13).

    python benchmarks/bench_movie_vectors.py [--points 87000] [--dimension 1536] [--repeat 3]
        [--changed-share 0.01] [--workdir DIR] [--json PATH]

Data (untimed): the same seeded vectors, ids and payloads as ``bench_vector_store.py`` (400
clusters, seed 20240401), stored as the pipeline stores them: the embeddings asset value
(``movieId``, ``text_hash``, ``vector`` float32 n x d) as ``.npz`` through ``LocalStateIOManager``, and
a TMDB details frame (``movieId``, ``title``, ``release_date``, ``collection_id``, ...) as Parquet,
under a temporary ``RCMD_DATA_DIR``.

Timed, in this one process, alternating so that machine load drifts hit both alike:

1. ``store rebuild``: ``EmbeddedQdrantStore`` ``rebuild`` of the same points, through the store's
   public API (what ``bench_vector_store.py`` measures), ``--repeat`` times;
2. ``asset rebuild``: ``dagster.materialize`` of ``movie_vectors`` with the real resources
   (``LocalStateIOManager``, ``EmbeddedQdrantStore``) and ``rebuild: true``, ``--repeat`` times:
   the input read from disk, the payload build, the hashing and the rebuild;

then, on the last generation:

3. ``asset unchanged, same instance``: a re-run whose inputs' data versions did not change (the
   Dagster history says so): kept without touching the vectors;
4. ``asset unchanged, no history``: a re-run on a fresh Dagster instance: the asset reads its input
   and syncs; the store finds the same content digest and keeps the generation;
5. ``asset 1 % changed``: ``--changed-share`` of the vectors replaced (new directions), fresh
   instance: the store writes a patched copy of the served generation (copy, delete/upsert of
   the changed points, optimise, switch).

Each answer is checked (points served, action, generation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_vector_store import make_data  # noqa: E402
from dagster import DagsterInstance, SourceAsset, materialize  # noqa: E402
from machine import print_machine  # noqa: E402

from rcmd_pipeline.assets.embeddings import movie_vectors  # noqa: E402
from rcmd_pipeline.embedding_cache import embeddings_value  # noqa: E402
from rcmd_pipeline.resources.embedder import LocalE5Embedder  # noqa: E402
from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager  # noqa: E402
from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore  # noqa: E402

COLLECTION = "movie_emb_kr"


def write_inputs(state: Path, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict]) -> None:
    """The two upstream asset values, written as the IO manager writes them."""
    assets = state / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    keys = [f"{int(i):064x}" for i in ids]
    with open(assets / "movie_overview_embeddings.npz", "wb") as out:
        np.savez(out, **embeddings_value(ids, keys, vectors))
    details = pd.DataFrame({
        "movieId": ids, "tmdbId": ids + 1000, "title": [p["title"] for p in payloads],
        "overview": ["줄거리"] * len(ids), "release_date": [f"{p['year']}-01-01" for p in payloads],
        "collection_id": [p["series_id"] for p in payloads],
    })
    details.to_parquet(assets / "tmdb_movie_info_kr.parquet", index=False)


def resources(state: Path) -> dict:
    return {
        "io_manager": LocalStateIOManager(base_dir=str(state)),
        "local_state": LocalStateDir(base_dir=str(state)),
        "embedder": LocalE5Embedder(),  # only its model_id() is used: nothing is embedded
        "vector_store": EmbeddedQdrantStore(path=str(state / "vectors")),
    }


def run_asset(state: Path, instance: DagsterInstance, rebuild: bool = False) -> tuple[float, dict]:
    config = {"ops": {"movie_vectors": {"config": {"rebuild": rebuild}}},
              "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    started = time.perf_counter()
    upstream = [SourceAsset(key="movie_overview_embeddings"), SourceAsset(key="tmdb_movie_info_kr")]
    result = materialize([movie_vectors, *upstream], resources=resources(state), run_config=config,
                         instance=instance)
    wall = time.perf_counter() - started
    meta = {k: v.value for k, v in result.asset_materializations_for_node("movie_vectors")[0].metadata.items()}
    step = [e for e in result.all_events if e.event_type_value == "STEP_SUCCESS"][0]
    meta["step_seconds"] = step.event_specific_data.duration_ms / 1000  # the step alone, inputs included
    return wall, meta


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=87_000)
    parser.add_argument("--dimension", type=int, default=1536)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed-share", type=float, default=0.01)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = print_machine()

    t = time.perf_counter()
    rng, ids, vectors, payloads = make_data(args.points, args.dimension)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_movie_vectors_"))
    shutil.rmtree(workdir, ignore_errors=True)
    state, store_dir = workdir / "state", workdir / "store"
    write_inputs(state, ids, vectors, payloads)
    print(f"data: {args.points:,} x {args.dimension} written in {time.perf_counter() - t:.1f} s (untimed)",
          flush=True)
    result: dict = {"points": args.points, "dimension": args.dimension, "machine": machine,
                    "loadavg_1min_before": os.getloadavg()[0]}

    store = EmbeddedQdrantStore(path=str(store_dir))
    instance = DagsterInstance.ephemeral()
    store_runs, asset_runs = [], []
    for i in range(args.repeat):
        t = time.perf_counter()
        with store.open() as session:
            stats = session.rebuild(COLLECTION, ids, vectors, payloads, model="bench/random-clusters")
        store_runs.append(time.perf_counter() - t)
        assert stats["points"] == args.points
        wall, meta = run_asset(state, instance, rebuild=True)
        asset_runs.append(wall)
        assert (meta["action"], meta["points"]) == ("rebuilt", args.points), meta
        print(f"round {i + 1}: store rebuild {store_runs[-1]:.1f} s, asset rebuild {wall:.1f} s "
              f"(step {meta['step_seconds']:.1f} s) "
              f"(of which input + payloads {meta['prepare_seconds']:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f})", flush=True)
    shutil.rmtree(store_dir, ignore_errors=True)
    result["store_rebuild"] = summary(store_runs)
    result["asset_rebuild"] = summary(asset_runs)
    result["ratio_asset_to_store"] = result["asset_rebuild"]["median"] / result["store_rebuild"]["median"]
    generation = int(meta["generation"])

    wall, meta = run_asset(state, instance)  # same instance: the history says nothing changed
    assert "kept_from_run" in meta and meta["generation"] == str(generation), meta
    result["asset_unchanged_same_instance"] = {"wall": wall, "step": meta["step_seconds"]}
    print(f"unchanged, same Dagster instance: {wall:.2f} s, step {meta['step_seconds']:.2f} s "
          f"(kept from run {meta['kept_from_run'][:8]})", flush=True)

    wall, meta = run_asset(state, DagsterInstance.ephemeral())  # no history: the store's digest decides
    assert (meta["action"], meta["generation"]) == ("kept", str(generation)), meta
    result["asset_unchanged_no_history"] = {"wall": wall, "step": meta["step_seconds"]}
    print(f"unchanged, fresh Dagster instance (store digest equal): {wall:.2f} s, step {meta['step_seconds']:.2f} s",
          flush=True)

    changed = rng.choice(len(ids), max(1, int(round(args.changed_share * len(ids)))), replace=False)
    moved = vectors.copy()
    moved[changed] = rng.standard_normal((len(changed), args.dimension), dtype=np.float32)
    write_inputs(state, ids, moved, payloads)
    wall, meta = run_asset(state, DagsterInstance.ephemeral())
    assert (meta["action"], meta["upserted"], meta["generation"]) == ("updated", len(changed),
                                                                     str(generation + 1)), meta
    result["asset_changed"] = {"wall": wall, "step": meta["step_seconds"], "changed_points": len(changed),
                               "share": args.changed_share}
    print(f"{args.changed_share:.0%} changed ({len(changed):,} points): {wall:.1f} s, "
          f"step {meta['step_seconds']:.1f} s ({meta['reason']})", flush=True)
    with EmbeddedQdrantStore(path=str(state / "vectors")).open() as session:
        manifest = json.loads((Path(session.info(COLLECTION)["location"]) / "manifest.json").read_text())
    result["asset_changed"]["manifest"] = {k: manifest[k] for k in ("copy_seconds", "upsert_seconds",
                                                                     "index_seconds", "indexed_vectors", "points")}
    print(f"  copy {manifest['copy_seconds']:.1f} s, writes {manifest['upsert_seconds']:.1f} s, optimise + flush "
          f"{manifest['index_seconds']:.1f} s; {manifest['indexed_vectors']:,} of {manifest['points']:,} "
          "vectors in the HNSW index", flush=True)

    print(f"\nmedian store rebuild {result['store_rebuild']['median']:.1f} s, median asset rebuild "
          f"{result['asset_rebuild']['median']:.1f} s: ratio {result['ratio_asset_to_store']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
