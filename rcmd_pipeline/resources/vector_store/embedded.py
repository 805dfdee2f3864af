"""The default vector store: Qdrant's in-process engine (``qdrant-edge-py``) under
``RCMD_DATA_DIR/vectors``, no server and no key.

Each generation's ``shard/`` is an edge shard with an HNSW index over int8-quantised vectors; the
folders, locks and the switch between generations are :mod:`.generations`'. The index settings and
their measurements are in ``docs/vector_store.md``.
"""

import shutil
import time
from contextlib import suppress
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from rcmd_pipeline.lib.memory import release_memory
from rcmd_pipeline.resources.vector_store.generations import Generation, GenerationSession
from rcmd_pipeline.resources.vector_store.points import Points, utc_timestamp
from rcmd_pipeline.resources.vector_store.session import (
    QDRANT_URL_ENV,
    QUERY_BATCH,
    RETRIEVE_BATCH,
    VectorSession,
    VectorStore,
    VectorStoreError,
    VectorStoreMismatchError,
)

EDGE_UPSERT_BATCH = 1024
"""Points per qdrant-edge update operation (bounds the Python lists built for one call)."""

# Index settings (docs/vector_store.md for the measurements behind them).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 10_000
RESCORE_OVERSAMPLING = 2.0

BUILD_PHASE_BYTES = 256 << 20
"""Most float32 vector bytes indexed in one phase of a rebuild. A larger catalogue is written and
indexed in equal phases, each its own segment: the engine's index build holds the segment it reads
and the one it writes, about 3x a phase's vectors (82,702 x 1536: one phase of 508 MB peaked
1.6 GB above the process, two of 254 MB 0.9 GB; docs/vector_store.md)."""

_SHARD = "shard"


def build_phases(points: int, dimension: int) -> list[tuple[int, int]]:
    """The ``[begin, end)`` row ranges a rebuild of ``points`` vectors of ``dimension`` writes and
    indexes one after another: as few equal phases as keep each within :data:`BUILD_PHASE_BYTES`."""
    count = max(1, -(-points * dimension * 4 // BUILD_PHASE_BYTES))
    bounds = [points * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count) if bounds[i + 1] > bounds[i]] or [(0, 0)]


class EmbeddedQdrantStore(VectorStore):
    """Qdrant's in-process engine (``qdrant-edge-py``) with its files in ``path``: no server, no key.

    Default ``path``: ``RCMD_DATA_DIR/vectors``. The layout, and how generations, locks and concurrent
    processes work: ``docs/vector_store.md``.
    """

    path: str = Field(description="Folder of the store (one subfolder per collection), e.g. RCMD_DATA_DIR/vectors.")
    lock_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="Longest wait for another process's write (rebuild/upsert) to finish."
    )

    def describe(self) -> str:
        return f"embedded Qdrant (qdrant-edge) at {self.path}"

    def _open_session(self) -> VectorSession:
        try:
            import qdrant_edge  # noqa: F401
        except ImportError:
            raise VectorStoreError("the embedded vector store needs qdrant-edge-py (pip install "
                                   f"'qdrant-edge-py>=0.9'), or set {QDRANT_URL_ENV} to use a Qdrant server") from None
        root = Path(self.path).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return _EmbeddedSession(self, root)


def _edge_version() -> str:
    try:
        return importlib_metadata.version("qdrant-edge-py")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _engine() -> str:
    return f"qdrant-edge-py {_edge_version()}"


class _EmbeddedSession(GenerationSession):
    def __init__(self, store: EmbeddedQdrantStore, root: Path) -> None:
        import qdrant_edge

        super().__init__(root, store.path, store.lock_timeout_seconds)
        self._store = store
        self._q = qdrant_edge

    def where(self) -> str:
        return self._store.describe()

    # -- the engine

    def _open_data(self, folder: Path) -> Any:
        return self._load_shard(folder / _SHARD)

    def _load_shard(self, folder: Path) -> Any:
        for attempt in range(3):
            try:
                return self._q.EdgeShard.load(str(folder))
            except Exception as exc:  # noqa: BLE001
                if attempt == 2:
                    raise VectorStoreError(f"cannot open the vector shard {folder}: {exc}") from None
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _config(self, dimension: int, max_segment_points: int | None = None) -> Any:
        """The shard's settings; ``max_segment_points``: a phased rebuild's largest phase, whose
        segments are indexed one by one and never merged (None: one phase, the engine's defaults)."""
        q = self._q
        optimizers = None
        if max_segment_points is not None:
            # in kilobytes of vectors: each phase's segment is indexed (over half a phase) and stays
            # apart (two merged would pass 1.5 phases)
            phase_kb = max_segment_points * dimension * 4 / 1024
            optimizers = q.EdgeOptimizersConfig(indexing_threshold=max(1, int(phase_kb / 2)),
                                                max_segment_size=max(2, int(phase_kb * 1.5)))
        return q.EdgeConfig(
            # full vectors on disk (read through the page cache, only to rescore a few candidates);
            # the int8 copy and the graph in RAM: building 82,702 x 1536 peaks 0.5 GB lower
            vectors=q.EdgeVectorParams(size=dimension, distance=q.Distance.Cosine, memory=q.Memory.Cold),
            hnsw_config=q.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT,
                                          full_scan_threshold=FULL_SCAN_THRESHOLD_KB),
            quantization_config=q.ScalarQuantizationConfig(type=q.ScalarType.Int8, always_ram=True),
            wal_enabled=False,
            optimizers=optimizers,
        )

    def _search_params(self) -> Any:
        q = self._q
        return q.SearchParams(quantization=q.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING))

    def _write_points(self, shard: Any, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        q = self._q
        for begin in range(0, len(ids), EDGE_UPSERT_BATCH):
            end = min(len(ids), begin + EDGE_UPSERT_BATCH)
            # float32 rows as they are (the engine reads NumPy arrays): no list of 1,536 Python floats per
            # point, which left 50 MB of float objects per batch to the heap at 1536-d
            points = [q.Point(int(ids[j]), vectors[j], payloads[j] or None) for j in range(begin, end)]
            shard.update(q.UpdateOperation.upsert_points(points))

    def _reopened(self, shard: Any, folder: Path) -> Any:
        """``shard`` flushed, closed and loaded again, with the process's freed memory handed back.

        Closing drops the engine's write mappings of the segment just filled: the index build that
        follows then maps the written vectors once for reading instead of keeping the write mappings
        resident too (0.5 GB less peak RSS at 82,702 x 1536; docs/benchmarks.md).
        """
        shard.flush()
        shard.close()
        release_memory(collect=True)  # what earlier steps of the run left in the heap goes back too
        return self._load_shard(folder)

    def _count(self, shard: Any) -> int:
        return int(shard.count(self._q.CountRequest(exact=True)))

    def _manifest(self, shard: Any, model: str, dimension: int, count: int, source: str) -> dict[str, Any]:
        """The first entries of a new generation's manifest (the caller adds its own after them)."""
        info = shard.info()
        return {"model": model, "dimension": dimension, "distance": "cosine", "points": count,
                "indexed_vectors": int(info.indexed_vectors_count), "segments": int(info.segments_count),
                "created_at": utc_timestamp(), "source": source}

    @staticmethod
    def _copy_shard(source: Path, target: Path) -> None:
        """Copy a served shard (never modified once served; the engine's own atomic-write temporaries skipped)."""
        for attempt in range(3):
            try:
                shutil.copytree(source, target, ignore=shutil.ignore_patterns(".atomicwrite*"))
                return
            except (shutil.Error, FileNotFoundError):
                shutil.rmtree(target, ignore_errors=True)
                if attempt == 2:
                    raise
                time.sleep(0.1)

    # -- writes (the caller holds the write lock)

    def _rebuild_locked(self, collection, points):
        ids, model = points.ids, points.model
        self._touched.add(collection)
        started = time.perf_counter()
        dimension = int(points.vectors.shape[1])
        timings: dict[str, float] = {}

        phases = build_phases(len(ids), dimension)

        def fill(folder: Path) -> tuple[Any, dict[str, Any]]:
            largest = max(end - begin for begin, end in phases)
            shard = self._q.EdgeShard.create(str(folder / _SHARD),
                                             self._config(dimension, largest if len(phases) > 1 else None))
            timings.update(upload_seconds=0.0, index_seconds=0.0)
            try:
                for number, (begin, end) in enumerate(phases):
                    if number:  # let go of the mappings of the segment just indexed before the next is filled
                        shard = self._reopened(shard, folder / _SHARD)
                    t0 = time.perf_counter()
                    self._write_points(shard, ids[begin:end], points.vectors[begin:end], points.payloads[begin:end])
                    if end == len(ids):
                        points.written()  # the engine has them all now: free ours before the last index build
                    shard = self._reopened(shard, folder / _SHARD)
                    t1 = time.perf_counter()
                    shard.optimize()  # builds this phase's HNSW index (and quantised vectors); blocks until done
                    shard.flush()
                    t2 = time.perf_counter()
                    timings["upload_seconds"] += t1 - t0
                    timings["index_seconds"] += t2 - t1
                count = self._count(shard)
                if count != len(ids):
                    raise VectorStoreError(f"the new generation holds {count} points after writing {len(ids)}")
                self._write_point_hashes(folder, ids, points.hashes)
            except BaseException:
                with suppress(Exception):
                    shard.close()
                raise
            return shard, {**self._manifest(shard, model, dimension, count, "rebuild"), "engine": _engine(),
                           "digest": points.digest, "build_phases": len(phases),
                           **{k: round(v, 3) for k, v in timings.items()}}

        manifest = self._build(collection, fill)
        return {"collection": collection, "points": manifest["points"], "dimension": dimension, "model": model,
                "generation": manifest["generation"],
                "location": str(self._generation_folder(collection, manifest["generation"])),
                "seconds": time.perf_counter() - started, "indexed_vectors": manifest["indexed_vectors"],
                "digest": points.digest, **timings}

    def _patched(self, collection: str, served: Generation, points: Points, write: np.ndarray,
                 delete: np.ndarray, hashes: tuple[np.ndarray, np.ndarray] | None, digest: str | None,
                 source: str) -> dict[str, Any]:
        """A new generation: a copy of ``served`` with rows ``write`` of ``points`` upserted and the ids
        ``delete`` deleted, carrying the point hashes/digest given (None: unknown), switched in like a
        rebuild (caller holds the write lock). The served generation is never modified."""
        parent = served.manifest
        started = time.perf_counter()
        expected = len(points.ids) if source == "sync" else None

        def fill(folder: Path) -> tuple[Any, dict[str, Any]]:
            self._copy_shard(served.folder / _SHARD, folder / _SHARD)
            t0 = time.perf_counter()
            shard = self._load_shard(folder / _SHARD)
            try:
                self._check_copy(shard, served)
                self._apply(shard, points, write, delete)
                t1 = time.perf_counter()
                shard.optimize()
                shard.flush()
                t2 = time.perf_counter()
                count = self._count(shard)
                if expected is not None and count != expected:
                    raise VectorStoreError(f"the new generation holds {count} points, expected {expected}")
                if hashes is not None:
                    self._write_point_hashes(folder, *hashes)
            except BaseException:
                with suppress(Exception):
                    shard.close()
                raise
            manifest = {**self._manifest(shard, points.model, parent["dimension"], count, source),
                        "parent_generation": parent["generation"], "engine": _engine(),
                        "upserted": len(write), "deleted": len(delete),
                        "copy_seconds": round(t0 - started, 3), "upsert_seconds": round(t1 - t0, 3),
                        "index_seconds": round(t2 - t1, 3)}
            if digest is not None:
                manifest["digest"] = digest
            return shard, manifest

        manifest = self._build(collection, fill)
        return {"collection": collection, "points": manifest["points"], "upserted": len(write),
                "deleted": len(delete), "dimension": manifest["dimension"], "model": points.model,
                "generation": manifest["generation"],
                "location": str(self._generation_folder(collection, manifest["generation"])),
                "seconds": time.perf_counter() - started, "copy_seconds": manifest["copy_seconds"],
                "upsert_seconds": manifest["upsert_seconds"], "index_seconds": manifest["index_seconds"]}

    def _check_copy(self, shard: Any, served: Generation) -> None:
        """The copy of ``served`` holds as many points as its manifest says (when it says)."""
        before = self._count(shard)
        if before != served.manifest.get("points", before):
            raise VectorStoreError(f"the copy of generation {served.name} holds {before} points, "
                                   f"its manifest says {served.manifest.get('points')}")

    def _apply(self, shard: Any, points: Points, write: np.ndarray, delete: np.ndarray) -> None:
        """Delete the ids ``delete`` from ``shard``, then upsert rows ``write`` of ``points``; ``points`` lets
        go of its vectors."""
        if len(delete):
            for begin in range(0, len(delete), EDGE_UPSERT_BATCH):
                chunk = [int(i) for i in delete[begin:begin + EDGE_UPSERT_BATCH]]
                shard.update(self._q.UpdateOperation.delete_points(chunk))
        if len(write):
            self._write_points(shard, points.ids[write], points.vectors[write],
                               [points.payloads[i] for i in write.tolist()])
        points.written()

    # -- reads

    def _info(self, collection):
        served = self._served(collection)
        if served is None:
            return None
        manifest = served.manifest
        return {"collection": collection, "points": self._count(served.shard), "dimension": manifest["dimension"],
                "model": manifest["model"], "generation": manifest["generation"], "location": str(served.folder),
                "indexed_vectors": int(served.shard.info().indexed_vectors_count), "digest": manifest.get("digest")}

    def _retrieve(self, collection, ids):
        return self._vectors_of(self._need(collection).shard, ids)

    @staticmethod
    def _vectors_of(shard: Any, ids: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for begin in range(0, len(ids), RETRIEVE_BATCH):
            for record in shard.retrieve(ids[begin:begin + RETRIEVE_BATCH], False, True):
                if record.vector is not None:
                    out[int(record.id)] = np.asarray(record.vector, dtype=np.float32)
        return out

    def _neighbours(self, collection, ids, k):
        q = self._q
        served = self._need(collection)
        vectors = self._vectors_of(served.shard, ids)  # one generation for the whole call
        present = sorted(vectors)
        params = self._search_params()
        out: dict[int, list[tuple[int, float]]] = {}
        for begin in range(0, len(present), QUERY_BATCH):
            chunk = present[begin:begin + QUERY_BATCH]
            # k + 1 and drop the point itself: the k nearest others are always among the k + 1 nearest,
            # and requests that differ only in their vector are scored together (a per-request
            # "must_not has_id" filter made the batch 25 % slower)
            requests = [q.QueryRequest(limit=k + 1, query=q.Query.Nearest(vectors[point_id].tolist()),
                                       params=params, with_payload=False, with_vector=False)
                        for point_id in chunk]
            answers = served.shard.query_batch(q.QueryBatchRequest(requests))
            for point_id, answer in zip(chunk, answers, strict=True):
                out[point_id] = [(int(p.id), float(p.score)) for p in answer if int(p.id) != point_id][:k]
        return out

    def _search(self, collection, queries, rows, exclude, k):
        q = self._q
        served = self._need(collection)
        dimension = served.manifest["dimension"]
        if queries.shape[1] != dimension:
            raise VectorStoreMismatchError(f"collection {collection!r} serves {dimension}-d vectors; "
                                           f"got {queries.shape[1]}-d query vectors")
        params = self._search_params()
        out: dict[int, list[tuple[int, float]]] = {}
        for begin in range(0, len(rows), QUERY_BATCH):
            chunk = rows[begin:begin + QUERY_BATCH]
            requests = [q.QueryRequest(limit=k, query=q.Query.Nearest(queries[row].tolist()),
                                       filter=(q.Filter(must_not=[q.HasIdCondition(set(exclude[row]))])
                                               if exclude[row] else None),
                                       params=params, with_payload=False, with_vector=False)
                        for row in chunk]
            answers = served.shard.query_batch(q.QueryBatchRequest(requests))
            for row, answer in zip(chunk, answers, strict=True):
                out[row] = [(int(p.id), float(p.score)) for p in answer]
        return out

