"""The vector store: overview embeddings served for nearest-neighbour queries (Qdrant).

Two implementations of :class:`VectorStore`, picked by :func:`vector_store_from_environment`:
:class:`QdrantServerStore` (a Qdrant server or cluster through ``qdrant-client``, ``QDRANT_URL``,
``QDRANT_API_KEY``; ``location=":memory:"`` for the contract tests) and :class:`EmbeddedQdrantStore`
(the default: Qdrant's in-process engine ``qdrant-edge-py`` under ``RCMD_DATA_DIR/vectors``). Open
a store once per step and close it in a ``finally`` (``with store.open() as session: ...``): the
engines take file locks and Dagster runs steps in separate processes. Sessions are not
thread-safe. A reader never sees a half-filled or mixed-model index (generations switched
atomically); how, and the embedded engine's locking and index, are in ``docs/vector_store.md``.
"""

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from rcmd_pipeline.lib.arguments import check_k as _check_k
from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.memory import release_memory
from rcmd_pipeline.lib.secrets import env_value, redact, secret_value
from rcmd_pipeline.lib.secrets import mask_url as _mask_url

log = logging.getLogger(__name__)

QDRANT_URL_ENV = "QDRANT_URL"
QDRANT_API_KEY_ENV = "QDRANT_API_KEY"
VECTORS_FOLDER = "vectors"
"""Folder of the embedded store under ``RCMD_DATA_DIR``."""

QUERY_BATCH = 4096
"""Queries per batched engine/server call (3,000 evaluation pairs are one call)."""
RETRIEVE_BATCH = 1024
"""Ids per retrieve call."""
EDGE_UPSERT_BATCH = 1024
"""Points per qdrant-edge update operation (bounds the Python lists built for one call)."""

# Embedded index settings (see the module docstring for the measurements behind them).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 10_000
RESCORE_OVERSAMPLING = 2.0

_META_MODEL = "rcmd_model"
_META_DIMENSION = "rcmd_dimension"
_META_GENERATION = "rcmd_generation"
_META_CREATED = "rcmd_created_at"
_META_DIGEST = "rcmd_digest"

REBUILD_SHARE = 0.2
"""``sync`` rebuilds instead of patching when more than this share of the points changed (new,
changed or removed, relative to the larger of the old and new point counts). Below it, patching a
copy of the served generation writes only the changed points and is several times cheaper than a
rebuild (``docs/benchmarks.md``, issue 13); above it the patched copy costs nearly as much as a
rebuild and leaves many replaced points in the old HNSW graph (deleted points stay in the graph until
the optimiser rewrites the segment), so a fresh index is the better buy. 20 % is also far above a
night's normal churn (a handful of changed overviews) and below a catalogue-wide change (a new
TMDB language, a new embedding text recipe), which should give a fresh index."""

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_GENERATION_SUFFIX = re.compile(r"__g(\d{6,})$")
_GENERATION_FOLDER = re.compile(r"^g(\d{6,})$")
_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_READERS_LOCK = "readers.lock"
_WRITE_LOCK = "write.lock"
_SHARD = "shard"
_POINTS = "points.npz"


class VectorStoreError(RuntimeError):
    """The vector store could not do what was asked (the message says what and where)."""


class VectorStoreMismatchError(VectorStoreError):
    """Vectors of another model or dimension than the served generation's (rebuild to change models)."""


class VectorStoreConnectionError(VectorStoreError):
    """The Qdrant server could not be reached or refused the credentials."""


# ----------------------------------------------------------------------------- argument checks


def _check_collection(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name) or _GENERATION_SUFFIX.search(name):
        raise ValueError(
            f"collection name {name!r}: use letters, digits, '_', '-', '.', starting with a letter or "
            "digit, at most 200 characters, and not ending in '__g<digits>' (reserved for generations)"
        )
    return name


def _check_model(model: str) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model: a non-empty model id is required (the embedder's model_id())")
    return model


def _query_ids(ids: Any) -> np.ndarray:
    """Ids to look up, as a 1-d int64 array (negative ids are valid input: they match nothing)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _point_ids(ids: Any) -> np.ndarray:
    """Ids to write: 1-d int64, non-negative (Qdrant ids are unsigned), no duplicates."""
    arr = _query_ids(ids)
    if arr.size and arr.min() < 0:
        raise ValueError(f"point ids must be >= 0 (Qdrant ids are unsigned integers), got {int(arr.min())}")
    unique, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        shown = ", ".join(str(int(v)) for v in unique[counts > 1][:5])
        raise ValueError(f"duplicate point id(s) {shown}: each id may appear once")
    return arr


def _vectors(vectors: Any, rows: int | None, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (rows, d) array with d >= 1 and finite values."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-d array (n, dimension), got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{what}: {arr.shape[0]} rows for {rows} ids")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: non-finite values (NaN or inf)")
    return arr


def _point_vectors(vectors: Any, rows: int) -> np.ndarray:
    arr = _vectors(vectors, rows)
    zero = ~np.any(arr != 0, axis=1)
    if zero.any():
        raise ValueError(f"vectors: row {int(np.argmax(zero))} is all zeros; cosine needs a direction")
    return arr


def _plain(value: Any) -> Any:
    """A JSON-able copy of a payload value (numpy scalars and arrays, dates, NaN/NA -> None)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _payloads(payloads: Sequence[Mapping[str, Any]] | None, rows: int) -> list[dict[str, Any]]:
    if payloads is None:
        return [{} for _ in range(rows)]
    payloads = list(payloads)
    if len(payloads) != rows:
        raise ValueError(f"payloads: {len(payloads)} for {rows} ids")
    out = []
    for i, p in enumerate(payloads):
        if p is None:
            out.append({})
        elif isinstance(p, Mapping):
            out.append(_plain(p))
        else:
            raise ValueError(f"payloads[{i}] must be a dict, got {type(p).__name__}")
    return out


def point_hashes(vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A 64-bit content hash per point (its float32 vector bytes and its payload as canonical JSON), uint64.

    Together with the ids this is what :func:`points_digest` summarises: the diff between two
    generations is computed from these hashes, without reading any vector back from the engine.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(len(vectors), dtype=np.uint64)
    for i, payload in enumerate(payloads):
        h = hashlib.blake2b(vectors[i].data, digest_size=8)
        if payload:
            h.update(json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def points_digest(ids: np.ndarray, hashes: np.ndarray, model: str, dimension: int) -> str:
    """The content digest of a generation: model, dimension and every (id, point hash), in id order."""
    order = np.argsort(ids, kind="stable")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model}\x00{int(dimension)}\x00".encode())
    h.update(np.ascontiguousarray(ids[order], dtype="<i8").data)
    h.update(np.ascontiguousarray(hashes[order], dtype="<u8").data)
    return h.hexdigest()


class _Points:
    """The points of a write with their content hashes and the digest of the whole set.

    The embedded engine keeps its own copy of what it is given: once the points are written,
    :meth:`written` drops the vectors here, so a caller that handed over its only reference (as
    ``movie_vectors`` does) frees them before the engine builds its index (0.5 GB at 82,702 x 1536).
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]], model: str) -> None:
        self.ids, self.vectors, self.payloads, self.model = ids, vectors, payloads, model
        self.hashes = point_hashes(vectors, payloads)
        self.digest = points_digest(ids, self.hashes, model, int(vectors.shape[1]))

    def written(self) -> None:
        self.vectors = self.payloads = None


def _diff(old_ids: np.ndarray, old_hashes: np.ndarray, ids: np.ndarray, hashes: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``ids`` that are new or changed, old ids no longer present)."""
    old = dict(zip(old_ids.tolist(), old_hashes.tolist(), strict=True))
    write = np.fromiter((i for i, (pid, h) in enumerate(zip(ids.tolist(), hashes.tolist(), strict=True))
                         if old.get(pid) != h), dtype=np.int64)
    removed = np.setdiff1d(old_ids, ids, assume_unique=True)
    return write, removed.astype(np.int64)


def _exclusions(exclude: Sequence[Any] | None, rows: int) -> list[list[int]]:
    if exclude is None:
        return [[] for _ in range(rows)]
    exclude = list(exclude)
    if len(exclude) != rows:
        raise ValueError(f"exclude: {len(exclude)} sets for {rows} query vectors")
    return [sorted({int(i) for i in (e or ()) if int(i) >= 0}) for e in exclude]


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------- session interface


class VectorSession(ABC):
    """An open connection to a vector store, from :meth:`VectorStore.open`.

    Point ids are non-negative integers (MovieLens movie ids); distance is cosine, so stored vectors
    come back L2-normalised. Every query method answers a whole batch in one engine/server call
    (up to :data:`QUERY_BATCH` queries per call). Not thread-safe: one session per thread.
    """

    _closed = False

    # -- writes

    def rebuild(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
                payloads: Sequence[Mapping[str, Any]] | None, model: str) -> dict[str, Any]:
        """Replace ``collection`` by a new generation holding exactly these points.

        The new generation is filled and indexed completely, then switched into service atomically,
        then older generations are dropped. Returns ``points``, ``dimension``, ``model``,
        ``generation`` (a number, increasing), ``seconds`` and engine details.
        """
        self._check_open()
        collection, model = _check_collection(collection), _check_model(model)
        ids = _point_ids(ids)
        vectors = _point_vectors(vectors, len(ids))
        if len(ids) == 0:
            raise ValueError("rebuild needs at least one point (an empty collection serves nothing)")
        points = _Points(ids, vectors, _payloads(payloads, len(ids)), model)
        del vectors, payloads  # only ``points`` holds them now (see _Points.written)
        return self._rebuild(collection, points)

    def sync(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
             payloads: Sequence[Mapping[str, Any]] | None, model: str,
             max_changed_share: float = REBUILD_SHARE) -> dict[str, Any]:
        """Make ``collection`` serve exactly these points, doing as little as possible.

        ``action`` in the answer says what happened (``reason`` says why):

        - ``kept``: the served generation already holds exactly these points (same content digest of
          ids, vectors and payloads, same model and dimension): nothing is written.
        - ``updated``: a few points differ: a new generation is made from the served one with only
          the new/changed points upserted and the removed ones deleted, then switched in atomically
          (embedded store: a copy of the served shard; never modified in place, so a reader sees the
          old or the new generation, never a mix). ``upserted`` and ``deleted`` count the writes.
        - ``rebuilt``: no collection yet, another model or dimension, a served generation without
          point digests (made before them), more than ``max_changed_share`` of the points changed
          (:data:`REBUILD_SHARE`), or a Qdrant server (see :meth:`_sync` there): a full
          :meth:`rebuild`.
        """
        self._check_open()
        collection, model = _check_collection(collection), _check_model(model)
        if not 0 <= max_changed_share <= 1:
            raise ValueError(f"max_changed_share must be within [0, 1], got {max_changed_share!r}")
        ids = _point_ids(ids)
        vectors = _point_vectors(vectors, len(ids))
        if len(ids) == 0:
            raise ValueError("sync needs at least one point (an empty collection serves nothing)")
        started = time.perf_counter()
        points = _Points(ids, vectors, _payloads(payloads, len(ids)), model)
        del vectors, payloads  # only ``points`` holds them now (see _Points.written)
        hashed = time.perf_counter() - started
        stats = self._sync(collection, points, float(max_changed_share))
        return {"upserted": 0, "deleted": 0, **stats, "digest": points.digest, "hash_seconds": hashed,
                "seconds": time.perf_counter() - started}

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]] | None, model: str) -> dict[str, Any]:
        """Insert or replace these points in the served generation (creating the first generation
        if ``collection`` does not exist). Raises :class:`VectorStoreMismatchError` when the model
        or the dimension differs from the served generation's, which is then left unchanged."""
        self._check_open()
        collection, model = _check_collection(collection), _check_model(model)
        ids = _point_ids(ids)
        if len(ids) == 0:  # nothing to write: report the served generation (and still check the space)
            info = self._info(collection)
            arr = np.asarray(vectors)
            if info is not None:
                self._check_same_space(collection, info, arr.shape[-1] if arr.ndim == 2 else info["dimension"],
                                       model)
            return {**(info or {"collection": collection, "points": 0, "dimension": None, "model": None,
                                "generation": None}), "upserted": 0, "seconds": 0.0, "created": False}
        points = _Points(ids, _point_vectors(vectors, len(ids)), _payloads(payloads, len(ids)), model)
        del vectors  # only ``points`` holds them now (see _Points.written)
        return self._upsert(collection, points)

    # -- reads

    def info(self, collection: str) -> dict[str, Any] | None:
        """``points``, ``dimension``, ``model``, ``generation`` and ``digest`` (the content digest of
        its points, None when unknown) of the served generation; None if the collection is absent."""
        self._check_open()
        return self._info(_check_collection(collection))

    def retrieve(self, collection: str, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Stored vectors by id (float32, unit length); ids without a vector are absent."""
        self._check_open()
        collection = _check_collection(collection)
        ids = _query_ids(ids)
        wanted = [int(i) for i in np.unique(ids) if i >= 0]
        if not wanted:
            return {}
        return self._retrieve(collection, wanted)

    def neighbours(self, collection: str, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each id, its k nearest OTHER points by cosine, best first.

        Returns ``(ids, scores)``: int64 ``(n, k)`` padded with -1 and float32 ``(n, k)`` padded
        with NaN; the row of an id without a vector is all -1. Repeated ids are asked once.
        """
        self._check_open()
        collection, k = _check_collection(collection), _check_k(k)
        ids = _query_ids(ids)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        out_scores = np.full((len(ids), k), np.nan, dtype=np.float32)
        unique, inverse = np.unique(ids, return_inverse=True)
        asked = [int(i) for i in unique if i >= 0]
        if not asked:
            self._require(collection)
            return out_ids, out_scores
        found = self._neighbours(collection, asked, k)
        rows_ids = np.full((len(unique), k), -1, dtype=np.int64)
        rows_scores = np.full((len(unique), k), np.nan, dtype=np.float32)
        position = {int(v): j for j, v in enumerate(unique)}
        for point_id, hits in found.items():
            j = position[point_id]
            for c, (hit_id, score) in enumerate(hits[:k]):
                rows_ids[j, c] = hit_id
                rows_scores[j, c] = score
        return rows_ids[inverse.reshape(-1)], rows_scores[inverse.reshape(-1)]

    def search(self, collection: str, vectors: np.ndarray, k: int,
               exclude: Sequence[set[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest points to each query vector, best first, as in :meth:`neighbours`.

        ``exclude``: one set of ids per row that must not be returned for that row (e.g. what a user
        already saw). A query vector of the wrong dimension is an error; an all-zero row gets -1s.
        """
        self._check_open()
        collection, k = _check_collection(collection), _check_k(k)
        queries = _vectors(vectors, None, "query vectors")
        excluded = _exclusions(exclude, len(queries))
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), np.nan, dtype=np.float32)
        usable = [i for i in range(len(queries)) if np.any(queries[i] != 0)]
        found = self._search(collection, queries, usable, excluded, k)
        for row, hits in found.items():
            for c, (hit_id, score) in enumerate(hits[:k]):
                out_ids[row, c] = hit_id
                out_scores[row, c] = score
        return out_ids, out_scores

    # -- life cycle

    def close(self) -> None:
        """Release the engine/connection (called by :meth:`VectorStore.open`'s ``finally``)."""
        if not self._closed:
            self._closed = True
            self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError("this vector store session is closed; open a new one with store.open()")

    def _require(self, collection: str) -> dict[str, Any]:
        info = self._info(collection)
        if info is None:
            raise VectorStoreError(f"collection {collection!r} does not exist in {self.where()}; "
                                   "build it first (rebuild, e.g. by materializing movie_vectors)")
        return info

    @staticmethod
    def _check_same_space(collection: str, info: Mapping[str, Any], dimension: int, model: str) -> None:
        if info.get("dimension") != dimension:
            raise VectorStoreMismatchError(
                f"collection {collection!r} serves {info.get('dimension')}-d vectors of model "
                f"{info.get('model')!r}; got {dimension}-d vectors. Use rebuild to switch to another model "
                "or dimension (a new generation replaces the old one atomically); nothing was written."
            )
        if info.get("model") != model:
            raise VectorStoreMismatchError(
                f"collection {collection!r} serves vectors of model {info.get('model')!r}; got vectors of "
                f"model {model!r}. Vectors of two models are not comparable: use rebuild to switch models; "
                "nothing was written."
            )

    @abstractmethod
    def where(self) -> str:
        """A description of the store, safe to log (no secret)."""

    @abstractmethod
    def _rebuild(self, collection: str, points: _Points) -> dict[str, Any]: ...

    @abstractmethod
    def _upsert(self, collection: str, points: _Points) -> dict[str, Any]: ...

    @abstractmethod
    def _sync(self, collection: str, points: _Points, max_changed_share: float) -> dict[str, Any]: ...

    @abstractmethod
    def _info(self, collection: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _retrieve(self, collection: str, ids: list[int]) -> dict[int, np.ndarray]: ...

    @abstractmethod
    def _neighbours(self, collection: str, ids: list[int], k: int) -> dict[int, list[tuple[int, float]]]:
        """Hits per id that has a vector (ids without one are left out)."""

    @abstractmethod
    def _search(self, collection: str, queries: np.ndarray, rows: list[int], exclude: list[list[int]],
                k: int) -> dict[int, list[tuple[int, float]]]:
        """Hits per row index in ``rows``."""

    @abstractmethod
    def _close(self) -> None: ...


# ----------------------------------------------------------------------------- resources


class VectorStore(ConfigurableResource, ABC):
    """Where the overview vectors are served; see the module docstring for the guarantees.

    Use ``with store.open() as session: ...`` once per step (see :class:`VectorSession`).
    """

    @contextmanager
    def open(self) -> Iterator[VectorSession]:
        """A session, closed when the ``with`` block ends (whatever happens in it)."""
        session = self._open_session()
        try:
            yield session
        finally:
            session.close()

    @abstractmethod
    def _open_session(self) -> VectorSession: ...

    @abstractmethod
    def describe(self) -> str:
        """Which store this is, safe to log and to put in metadata (no secret)."""


class QdrantServerStore(VectorStore):
    """A Qdrant server or cluster (``QDRANT_URL``, ``QDRANT_API_KEY``) through ``qdrant-client``.

    ``location=":memory:"`` instead of ``url`` uses qdrant-client's in-process local mode, with the
    same client calls as a server (the contract tests run on it). Its data live as long as this
    resource object: every session opened from it shares one in-memory client.
    """

    url: str | None = Field(
        default=None, repr=False,
        description="Qdrant URL (QDRANT_URL), e.g. http://localhost:6333; may carry credentials, so it is passed "
                    "as EnvVar('QDRANT_URL') and shown masked.",
    )
    api_key: str | None = Field(
        default=None, repr=False,
        description="API key (QDRANT_API_KEY), for Qdrant Cloud or a secured server. Pass EnvVar('QDRANT_API_KEY').",
    )
    location: str | None = Field(
        default=None, description='":memory:" for qdrant-client\'s in-process local mode (tests); else unset.'
    )
    timeout: int = Field(default=60, ge=1, description="Seconds per request.")
    prefer_grpc: bool = Field(default=False, description="Talk gRPC (port 6334) instead of REST.")
    upsert_batch_size: int = Field(default=256, ge=1, description="Points per upload request.")
    upload_parallel: int = Field(default=1, ge=1, description="Upload processes (qdrant-client's parallel).")
    index_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="Longest wait for a new generation's index before giving up."
    )

    _memory_client: Any = PrivateAttr(default=None)
    _memory_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def resolved_url(self) -> str:
        """The URL behind the field (an ``EnvVar`` resolves here too); '' when unset."""
        return secret_value(self.url)

    def describe(self) -> str:
        if self.location:
            return f"Qdrant local mode {self.location} (qdrant-client)"
        return f"Qdrant server {_mask_url(self.resolved_url())} ({QDRANT_URL_ENV})"

    def _open_session(self) -> VectorSession:
        from qdrant_client import QdrantClient

        if self.location:
            if self.location != ":memory:":
                raise VectorStoreError(f'QdrantServerStore.location must be ":memory:" (got {self.location!r}); '
                                       "for files on disk use EmbeddedQdrantStore")
            with self._memory_lock:
                if self._memory_client is None:
                    self._memory_client = _SerializedClient(QdrantClient(location=":memory:"))
            return _ServerSession(self, self._memory_client, owns_client=False)
        url = self.resolved_url()
        if not url:
            raise VectorStoreError(f"QdrantServerStore needs a url: set {QDRANT_URL_ENV} (e.g. http://localhost:6333)")
        key = secret_value(self.api_key)
        try:
            client = QdrantClient(url=url, api_key=key or None, timeout=self.timeout,
                                  prefer_grpc=self.prefer_grpc, check_compatibility=False)
        except Exception as exc:  # noqa: BLE001 - a bad URL: say which variable, never the key
            raise VectorStoreConnectionError(
                f"Cannot use the Qdrant URL {_mask_url(url)} ({QDRANT_URL_ENV}): "
                f"{redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, [key])}"
            ) from None
        session = _ServerSession(self, client, owns_client=True)
        session.check_connection()
        return session


class EmbeddedQdrantStore(VectorStore):
    """Qdrant's in-process engine (``qdrant-edge-py``) with its files in ``path``: no server, no key.

    Default ``path``: ``RCMD_DATA_DIR/vectors``. See the module docstring for the layout and for how
    generations, locks and concurrent processes work.
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


def vector_store_from_environment(environ: Mapping[str, str], data_dir: str | os.PathLike) -> VectorStore:
    """:class:`QdrantServerStore` when ``QDRANT_URL`` is set (with ``QDRANT_API_KEY`` if set),
    else :class:`EmbeddedQdrantStore` in ``<data_dir>/vectors``. A blank variable counts as unset."""
    url = env_text(QDRANT_URL_ENV, environ)
    if not url:
        return EmbeddedQdrantStore(path=str(Path(data_dir) / VECTORS_FOLDER))
    kwargs: dict[str, Any] = {"url": env_value(environ, QDRANT_URL_ENV)}
    if env_text(QDRANT_API_KEY_ENV, environ):
        kwargs["api_key"] = env_value(environ, QDRANT_API_KEY_ENV)
    return QdrantServerStore(**kwargs)


# ----------------------------------------------------------------------------- server implementation


class _SerializedClient:
    """A qdrant-client whose calls run one at a time (local mode is plain Python dicts, not thread-safe)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


class _Target:
    """The physical collection behind a served name, with what was recorded about it."""

    def __init__(self, name: str, generation: int | None, dimension: int, model: str | None,
                 digest: str | None = None) -> None:
        self.name, self.generation, self.dimension, self.model = name, generation, dimension, model
        self.digest = digest or None


class _ServerSession(VectorSession):
    def __init__(self, store: QdrantServerStore, client: Any, owns_client: bool) -> None:
        from qdrant_client import models

        self._store = store
        self._client = client
        self._owns_client = owns_client
        self._m = models

    def where(self) -> str:
        return self._store.describe()

    def check_connection(self) -> None:
        try:
            self._client.get_collections()
        except Exception as exc:  # noqa: BLE001 - every failure here means "cannot use this server"
            key = secret_value(self._store.api_key)
            status = getattr(exc, "status_code", None)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            detail = redact(f"{type(exc).__name__}: {first}", [key])[:300]
            self._close()
            if status in (401, 403):
                raise VectorStoreConnectionError(
                    f"The Qdrant server at {_mask_url(self._store.resolved_url())} ({QDRANT_URL_ENV}) refused the "
                    f"request ({status}): check {QDRANT_API_KEY_ENV}."
                ) from None
            raise VectorStoreConnectionError(
                f"Cannot reach the Qdrant server at {_mask_url(self._store.resolved_url())} ({QDRANT_URL_ENV}): "
                f"{detail}. "
                f"Check that the server runs and that {QDRANT_URL_ENV} is right (or unset it to use the "
                "embedded store)."
            ) from None

    # -- names and generations

    def _generations(self, collection: str) -> dict[int, str]:
        prefix = f"{collection}__g"
        found = {}
        for description in self._client.get_collections().collections:
            name = description.name
            if name.startswith(prefix) and _GENERATION_SUFFIX.search(name) and name[len(prefix):].isdigit():
                found[int(name[len(prefix):])] = name
        return found

    def _alias_target(self, collection: str) -> str | None:
        for alias in self._client.get_aliases().aliases:
            if alias.alias_name == collection:
                return alias.collection_name
        return None

    def _target(self, collection: str) -> _Target | None:
        """The physical collection served as ``collection`` (alias target, or a plain collection of that
        name, e.g. one made by the study's notebook: readable, but it records no model); None if absent."""
        for attempt in range(5):
            name = self._alias_target(collection)
            if name is None:
                if not self._client.collection_exists(collection):
                    return None
                name = collection
            try:
                description = self._client.get_collection(name)
                break
            except Exception:
                if attempt < 4 and not self._client.collection_exists(name):
                    continue  # dropped by a rebuild between the two calls: resolve the alias again
                raise
        meta = description.config.metadata or {}
        vectors = description.config.params.vectors
        if not hasattr(vectors, "size"):
            raise VectorStoreError(f"collection {collection!r} ({name}) uses named vectors; this store expects "
                                   "one unnamed vector per point")
        match = _GENERATION_SUFFIX.search(name)
        generation = int(match.group(1)) if match else meta.get(_META_GENERATION)
        return _Target(name, generation, int(vectors.size), meta.get(_META_MODEL), meta.get(_META_DIGEST))

    def _read(self, collection: str, action: Callable[[_Target], Any], required: bool = True) -> Any:
        """``action`` on the served generation; retried when a switch dropped it meanwhile. An absent
        collection is an error, or None when not ``required``."""
        for attempt in range(5):
            target = self._target(collection)
            if target is None:
                if not required:
                    return None
                self._require(collection)  # raises
            try:
                return action(target)
            except Exception:
                if attempt < 4 and not self._client.collection_exists(target.name):
                    continue  # a rebuild switched the alias and dropped this generation: ask again
                raise
        raise VectorStoreError(f"collection {collection!r} kept changing while being read")

    # -- writes

    def _upload(self, name: str, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        self._client.upload_collection(
            collection_name=name, vectors=vectors, payload=payloads, ids=[int(i) for i in ids],
            batch_size=self._store.upsert_batch_size, parallel=self._store.upload_parallel, wait=True,
        )

    def _wait_until_indexed(self, name: str) -> None:
        """Until the collection is green: every optimisation (segment merge, HNSW build) done."""
        m = self._m
        deadline = time.monotonic() + self._store.index_timeout_seconds
        nudged = False
        while True:
            status = self._client.get_collection(name).status
            if status == m.CollectionStatus.GREEN:
                return
            if status == m.CollectionStatus.RED:
                raise VectorStoreError(f"Qdrant reports collection {name} as failed (red) while indexing")
            if status == m.CollectionStatus.GREY and not nudged:
                # grey = optimisations pending but not started; an (empty) config update triggers them
                self._client.update_collection(name, optimizers_config=m.OptimizersConfigDiff())
                nudged = True
            if time.monotonic() > deadline:
                raise VectorStoreError(f"collection {name} was not indexed within "
                                       f"{self._store.index_timeout_seconds:.0f} s (status {status}); "
                                       "the served generation was left unchanged")
            time.sleep(0.5)

    def _rebuild(self, collection, points):
        m = self._m
        ids, vectors, payloads, model = points.ids, points.vectors, points.payloads, points.model
        started = time.perf_counter()
        if self._alias_target(collection) is None and self._client.collection_exists(collection):
            raise VectorStoreError(
                f"{self.where()} has a plain collection named {collection!r}; this store serves {collection!r} "
                f"as an alias of generations {collection}__g000001, ... Rename or delete that collection first "
                "(nothing was written)."
            )
        generations = self._generations(collection)
        number = max(generations, default=0) + 1
        name = f"{collection}__g{number:06d}"
        dimension = int(vectors.shape[1])
        self._client.create_collection(
            collection_name=name,
            vectors_config=m.VectorParams(size=dimension, distance=m.Distance.COSINE),
            metadata={_META_MODEL: model, _META_DIMENSION: dimension, _META_GENERATION: number,
                      _META_CREATED: _now(), _META_DIGEST: points.digest},
        )
        try:
            self._upload(name, ids, vectors, payloads)
            uploaded = time.perf_counter()
            self._wait_until_indexed(name)
            indexed = time.perf_counter()
            count = self._client.count(name, exact=True).count
            if count != len(ids):
                raise VectorStoreError(f"generation {name} holds {count} points after uploading {len(ids)}")
            operations: list[Any] = []
            if self._alias_target(collection) is not None:
                operations.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=collection)))
            operations.append(m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name=name, alias_name=collection)))
            self._client.update_collection_aliases(change_aliases_operations=operations)  # one atomic switch
        except BaseException:
            with suppress(Exception):
                self._client.delete_collection(name)
            raise
        for old_number, old_name in sorted(self._generations(collection).items()):
            if old_number < number:
                try:
                    self._client.delete_collection(old_name)
                except Exception as exc:  # noqa: BLE001 - the switch is done; a leftover is only disk space
                    log.warning(f"could not drop old generation {old_name}: {type(exc).__name__}: {exc}")
        return {"collection": collection, "points": int(count), "dimension": dimension, "model": model,
                "generation": number, "location": name, "seconds": time.perf_counter() - started,
                "upload_seconds": uploaded - started, "index_seconds": indexed - uploaded, "digest": points.digest}

    def _sync(self, collection, points, max_changed_share):
        """Kept when the served generation's recorded digest is this one; otherwise a rebuild.

        Why not patch on a server: upserting into the served physical collection would show readers
        a mix of old and new points while it happens (and a half-applied diff if the run dies), and
        Qdrant has no server-side clone of a collection to patch a copy instead; copying through the
        client (scroll + upsert) moves as many bytes as uploading the new points outright. So a
        changed collection is uploaded whole into a new generation (``upload_collection`` in
        batches, then the atomic alias switch), and an unchanged one is kept, which is what makes an
        unchanged night cheap.
        """
        target = self._target(collection)
        dimension = int(points.vectors.shape[1])
        if target is None:
            reason = "no served collection yet"
        elif target.model != points.model:
            reason = f"model changed ({target.model!r} -> {points.model!r})"
        elif target.dimension != dimension:
            reason = f"dimension changed ({target.dimension} -> {dimension})"
        elif target.digest == points.digest:
            count = self._client.count(target.name, exact=True).count
            return {"action": "kept", "reason": "served generation holds exactly these points",
                    "collection": collection, "points": int(count), "dimension": dimension,
                    "model": target.model, "generation": target.generation, "location": target.name}
        elif target.digest is None:
            reason = "served generation records no content digest"
        else:
            reason = "points changed (a Qdrant server is never patched in place: a new generation is uploaded)"
        stats = self._rebuild(collection, points)
        return {**stats, "action": "rebuilt", "reason": reason, "upserted": len(points.ids)}

    def _upsert(self, collection, points):
        ids, vectors, payloads, model = points.ids, points.vectors, points.payloads, points.model
        started = time.perf_counter()
        target = self._target(collection)
        if target is None:
            stats = self._rebuild(collection, points)
            return {**stats, "upserted": len(ids), "created": True}
        if target.model is None:
            raise VectorStoreMismatchError(
                f"collection {collection!r} ({target.name}) records no model (not made by this store); "
                "rebuild it to serve it from this pipeline (nothing was written)"
            )
        info = {"dimension": target.dimension, "model": target.model}
        self._check_same_space(collection, info, int(vectors.shape[1]), model)
        if target.digest is not None:  # first: the recorded digest no longer describes what is served
            self._client.update_collection(target.name, metadata={_META_DIGEST: ""})
        self._upload(target.name, ids, vectors, payloads)
        count = self._client.count(target.name, exact=True).count
        return {"collection": collection, "points": int(count), "upserted": len(ids), "dimension": target.dimension,
                "model": target.model, "generation": target.generation, "location": target.name,
                "seconds": time.perf_counter() - started, "created": False}

    # -- reads

    def _info(self, collection):
        def action(target: _Target) -> dict[str, Any]:
            points = self._client.count(target.name, exact=True).count
            return {"collection": collection, "points": int(points), "dimension": target.dimension,
                    "model": target.model, "generation": target.generation, "location": target.name,
                    "digest": target.digest}

        return self._read(collection, action, required=False)

    def _retrieve(self, collection, ids):
        def action(target: _Target) -> dict[int, np.ndarray]:
            out: dict[int, np.ndarray] = {}
            for begin in range(0, len(ids), RETRIEVE_BATCH):
                for record in self._client.retrieve(target.name, ids[begin:begin + RETRIEVE_BATCH],
                                                    with_payload=False, with_vectors=True):
                    if record.vector is not None:
                        out[int(record.id)] = np.asarray(record.vector, dtype=np.float32)
            return out

        return self._read(collection, action)

    def _neighbours(self, collection, ids, k):
        m = self._m

        def action(target: _Target) -> dict[int, list[tuple[int, float]]]:
            present: list[int] = []
            for begin in range(0, len(ids), RETRIEVE_BATCH):
                present += [int(r.id) for r in self._client.retrieve(
                    target.name, ids[begin:begin + RETRIEVE_BATCH], with_payload=False, with_vectors=False)]
            present.sort()
            out: dict[int, list[tuple[int, float]]] = {}
            for begin in range(0, len(present), QUERY_BATCH):
                chunk = present[begin:begin + QUERY_BATCH]
                # a point id as the query: Qdrant uses its stored vector and leaves the point itself out
                requests = [m.QueryRequest(query=point_id, limit=k, with_payload=False, with_vector=False)
                            for point_id in chunk]
                answers = self._client.query_batch_points(target.name, requests=requests)
                for point_id, answer in zip(chunk, answers, strict=True):
                    out[point_id] = [(int(p.id), float(p.score)) for p in answer.points if int(p.id) != point_id]
            return out

        return self._read(collection, action)

    def _search(self, collection, queries, rows, exclude, k):
        m = self._m

        def action(target: _Target) -> dict[int, list[tuple[int, float]]]:
            if queries.shape[1] != target.dimension:
                raise VectorStoreMismatchError(f"collection {collection!r} serves {target.dimension}-d vectors; "
                                               f"got {queries.shape[1]}-d query vectors")
            out: dict[int, list[tuple[int, float]]] = {}
            for begin in range(0, len(rows), QUERY_BATCH):
                chunk = rows[begin:begin + QUERY_BATCH]
                requests = []
                for row in chunk:
                    flt = (m.Filter(must_not=[m.HasIdCondition(has_id=exclude[row])]) if exclude[row] else None)
                    requests.append(m.QueryRequest(query=queries[row].tolist(), limit=k, filter=flt,
                                                   with_payload=False, with_vector=False))
                answers = self._client.query_batch_points(target.name, requests=requests)
                for row, answer in zip(chunk, answers, strict=True):
                    out[row] = [(int(p.id), float(p.score)) for p in answer.points]
            return out

        return self._read(collection, action)

    def _close(self) -> None:
        if self._owns_client:
            with suppress(Exception):
                self._client.close()


# ----------------------------------------------------------------------------- embedded implementation


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it onto ``path``, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _edge_version() -> str:
    try:
        return importlib_metadata.version("qdrant-edge-py")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


class _Generation:
    """One generation opened by a session: its shard, and a shared lock that keeps it from deletion."""

    def __init__(self, folder: Path, manifest: dict[str, Any], shard: Any, lock_fd: int) -> None:
        self.folder, self.manifest, self.shard, self.lock_fd = folder, manifest, shard, lock_fd

    @property
    def name(self) -> str:
        return self.folder.name

    def close(self) -> None:
        try:
            with suppress(Exception):
                self.shard.close()
        finally:
            with suppress(OSError):
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            with suppress(OSError):
                os.close(self.lock_fd)


class _EmbeddedSession(VectorSession):
    def __init__(self, store: EmbeddedQdrantStore, root: Path) -> None:
        import qdrant_edge

        self._store = store
        self._root = root
        self._q = qdrant_edge
        self._open: dict[str, _Generation] = {}
        self._touched: set[str] = set()

    def where(self) -> str:
        return self._store.describe()

    # -- folders, locks, the CURRENT pointer

    def _folder(self, collection: str) -> Path:
        return self._root / collection

    @contextmanager
    def _write_lock(self, collection: str, wait: bool = True) -> Iterator[bool]:
        """The collection's exclusive write lock; yields False at once if busy and not ``wait``."""
        folder = self._folder(collection)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / _WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self._store.lock_timeout_seconds
            acquired = False
            while not acquired:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    acquired = True
                except BlockingIOError:
                    if not wait:
                        break
                    if time.monotonic() > deadline:
                        raise VectorStoreError(
                            f"another process has been writing collection {collection!r} in {self._store.path} "
                            f"for over {self._store.lock_timeout_seconds:.0f} s (lock {folder / _WRITE_LOCK})"
                        ) from None
                    time.sleep(0.2)
            try:
                yield acquired
            finally:
                if acquired:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _current_name(self, collection: str) -> str | None:
        name = _read_text(self._folder(collection) / _CURRENT)
        return name if name and _GENERATION_FOLDER.match(name) else None

    def _attach(self, folder: Path) -> _Generation | None:
        """Open a generation for reading, or None if it was deleted meanwhile."""
        try:
            fd = os.open(folder / _READERS_LOCK, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a clean-up deletes this folder (then it is gone)
            try:
                manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
            except FileNotFoundError:
                os.close(fd)
                return None
            shard = self._load_shard(folder / _SHARD)
        except BaseException:
            with suppress(OSError):
                os.close(fd)
            raise
        return _Generation(folder, manifest, shard, fd)

    def _load_shard(self, folder: Path) -> Any:
        for attempt in range(3):
            try:
                return self._q.EdgeShard.load(str(folder))
            except Exception as exc:  # noqa: BLE001
                if attempt == 2:
                    raise VectorStoreError(f"cannot open the vector shard {folder}: {exc}") from None
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _served(self, collection: str) -> _Generation | None:
        """The served generation, opened (or kept open) in this session; None if the collection is absent."""
        self._touched.add(collection)
        for _ in range(50):
            name = self._current_name(collection)
            cached = self._open.get(collection)
            if name is None:
                if cached is not None:
                    cached.close()
                    del self._open[collection]
                return None
            if cached is not None and cached.name == name:
                return cached
            generation = self._attach(self._folder(collection) / name)
            if generation is None:
                time.sleep(0.02)  # replaced and deleted between reading CURRENT and locking: read it again
                continue
            self._open[collection] = generation
            if cached is not None:
                cached.close()
            return generation
        raise VectorStoreError(f"collection {collection!r} in {self._store.path} kept changing while being opened")

    def _next_number(self, collection: str) -> int:
        numbers = [int(m.group(1)) for child in self._folder(collection).iterdir()
                   if (m := _GENERATION_FOLDER.match(child.name))]
        return max(numbers, default=0) + 1

    def _collect_garbage(self, collection: str) -> None:
        """Delete generations other than the served one that no session reads (caller holds the write lock)."""
        folder = self._folder(collection)
        current = self._current_name(collection)
        for child in folder.iterdir():
            if child.name == current or not _GENERATION_FOLDER.match(child.name) or not child.is_dir():
                continue
            try:
                fd = os.open(child / _READERS_LOCK, os.O_RDWR)
            except FileNotFoundError:
                shutil.rmtree(child, ignore_errors=True)  # an interrupted build
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # still read by a session (of any process): a later clean-up removes it
                (child / _MANIFEST).unlink(missing_ok=True)  # first: a folder without manifest is never opened
                shutil.rmtree(child, ignore_errors=True)
            finally:
                os.close(fd)

    # -- building a generation

    def _config(self, dimension: int) -> Any:
        q = self._q
        return q.EdgeConfig(
            # full vectors on disk (read through the page cache, only to rescore a few candidates);
            # the int8 copy and the graph in RAM: building 82,702 x 1536 peaks 0.5 GB lower
            vectors=q.EdgeVectorParams(size=dimension, distance=q.Distance.Cosine, memory=q.Memory.Cold),
            hnsw_config=q.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT,
                                          full_scan_threshold=FULL_SCAN_THRESHOLD_KB),
            quantization_config=q.ScalarQuantizationConfig(type=q.ScalarType.Int8, always_ram=True),
            wal_enabled=False,
        )

    def _search_params(self) -> Any:
        q = self._q
        return q.SearchParams(quantization=q.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING))

    def _write_points(self, shard: Any, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        q = self._q
        for begin in range(0, len(ids), EDGE_UPSERT_BATCH):
            end = min(len(ids), begin + EDGE_UPSERT_BATCH)
            rows = vectors[begin:end].tolist()
            points = [q.Point(int(ids[begin + j]), rows[j], payloads[begin + j] or None) for j in range(end - begin)]
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

    def _publish(self, collection: str, folder: Path, shard: Any, manifest: dict[str, Any]) -> _Generation:
        """Write the manifest, take a reader lock, switch CURRENT to ``folder``, drop old generations."""
        _write_atomically(folder / _MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
        fd = os.open(folder / _READERS_LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            _write_atomically(self._folder(collection) / _CURRENT, folder.name + "\n")  # THE switch
        except BaseException:
            os.close(fd)
            raise
        generation = _Generation(folder, manifest, shard, fd)
        previous = self._open.pop(collection, None)
        self._open[collection] = generation
        if previous is not None:
            previous.close()
        try:
            self._collect_garbage(collection)
        except OSError as exc:  # the switch is done; a leftover is only disk space
            log.warning(f"could not clean old generations of {collection!r}: {exc}")
        return generation

    def _build(self, collection: str, fill: Callable[[Path], tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        """A new generation folder, filled by ``fill(folder) -> (open shard, manifest)`` (which closes
        its shard if it fails), then published. Removed again if anything fails before the switch."""
        number = self._next_number(collection)
        folder = self._folder(collection) / f"g{number:06d}"
        folder.mkdir()
        (folder / _READERS_LOCK).touch()
        shard = None
        try:
            shard, manifest = fill(folder)
            manifest = {"format": 1, "collection": collection, "generation": number, **manifest}
            self._publish(collection, folder, shard, manifest)
        except BaseException:
            if self._current_name(collection) != folder.name:  # not switched: nobody reads it
                if shard is not None:
                    with suppress(Exception):
                        shard.close()
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return manifest

    def _rebuild(self, collection, points):
        with self._write_lock(collection):
            return self._rebuild_locked(collection, points)

    @staticmethod
    def _write_point_hashes(folder: Path, ids: np.ndarray, hashes: np.ndarray) -> None:
        """``points.npz``: ids (sorted) and their content hashes, what the next ``sync`` diffs against."""
        order = np.argsort(ids, kind="stable")
        with open(folder / _POINTS, "wb") as out:  # a file object: np.savez would append ".npz" to a name
            np.savez(out, ids=ids[order].astype(np.int64), hashes=hashes[order].astype(np.uint64))

    @staticmethod
    def _read_point_hashes(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(folder / _POINTS, allow_pickle=False) as stored:
                return stored["ids"], stored["hashes"]
        except (FileNotFoundError, KeyError, ValueError, OSError):
            return None

    def _rebuild_locked(self, collection, points):
        ids, model = points.ids, points.model
        self._touched.add(collection)
        started = time.perf_counter()
        dimension = int(points.vectors.shape[1])
        timings: dict[str, float] = {}

        def fill(folder: Path) -> tuple[Any, dict[str, Any]]:
            shard = self._q.EdgeShard.create(str(folder / _SHARD), self._config(dimension))
            try:
                t0 = time.perf_counter()
                self._write_points(shard, ids, points.vectors, points.payloads)
                points.written()  # the engine has them now: free ours before it builds the index
                shard = self._reopened(shard, folder / _SHARD)
                t1 = time.perf_counter()
                shard.optimize()  # builds the HNSW index (and the quantised vectors); blocks until done
                shard.flush()
                t2 = time.perf_counter()
                count = self._count(shard)
                if count != len(ids):
                    raise VectorStoreError(f"the new generation holds {count} points after writing {len(ids)}")
                self._write_point_hashes(folder, ids, points.hashes)
            except BaseException:
                with suppress(Exception):
                    shard.close()
                raise
            timings.update(upload_seconds=t1 - t0, index_seconds=t2 - t1)
            info = shard.info()
            return shard, {"model": model, "dimension": dimension, "distance": "cosine", "points": count,
                           "indexed_vectors": int(info.indexed_vectors_count), "segments": int(info.segments_count),
                           "created_at": _now(), "source": "rebuild", "engine": f"qdrant-edge-py {_edge_version()}",
                           "digest": points.digest, **{k: round(v, 3) for k, v in timings.items()}}

        manifest = self._build(collection, fill)
        return {"collection": collection, "points": manifest["points"], "dimension": dimension, "model": model,
                "generation": manifest["generation"],
                "location": str(self._folder(collection) / f"g{manifest['generation']:06d}"),
                "seconds": time.perf_counter() - started, "indexed_vectors": manifest["indexed_vectors"],
                "digest": points.digest, **timings}

    def _patched(self, collection: str, served: _Generation, points: _Points, write: np.ndarray,
                 delete: np.ndarray, hashes: tuple[np.ndarray, np.ndarray] | None, digest: str | None,
                 source: str) -> dict[str, Any]:
        """A new generation: a copy of ``served`` with rows ``write`` of ``points`` upserted and the ids
        ``delete`` deleted, carrying the point hashes/digest given (None: unknown), switched in like a
        rebuild (caller holds the write lock). The served generation is never modified."""
        parent = served.manifest
        started = time.perf_counter()
        expected: list[int] = []

        def fill(folder: Path) -> tuple[Any, dict[str, Any]]:
            self._copy_shard(served.folder / _SHARD, folder / _SHARD)
            t0 = time.perf_counter()
            shard = self._load_shard(folder / _SHARD)
            try:
                before = self._count(shard)
                if before != parent.get("points", before):
                    raise VectorStoreError(f"the copy of generation {served.name} holds {before} points, "
                                           f"its manifest says {parent.get('points')}")
                if len(delete):
                    for begin in range(0, len(delete), EDGE_UPSERT_BATCH):
                        chunk = [int(i) for i in delete[begin:begin + EDGE_UPSERT_BATCH]]
                        shard.update(self._q.UpdateOperation.delete_points(chunk))
                if len(write):
                    self._write_points(shard, points.ids[write], points.vectors[write],
                                       [points.payloads[i] for i in write.tolist()])
                points.written()
                t1 = time.perf_counter()
                shard.optimize()
                shard.flush()
                t2 = time.perf_counter()
                count = self._count(shard)
                if expected and count != expected[0]:
                    raise VectorStoreError(f"the new generation holds {count} points, expected {expected[0]}")
                if hashes is not None:
                    self._write_point_hashes(folder, *hashes)
            except BaseException:
                with suppress(Exception):
                    shard.close()
                raise
            info = shard.info()
            manifest = {"model": points.model, "dimension": parent["dimension"], "distance": "cosine",
                        "points": count, "indexed_vectors": int(info.indexed_vectors_count),
                        "segments": int(info.segments_count), "created_at": _now(), "source": source,
                        "parent_generation": parent["generation"], "engine": f"qdrant-edge-py {_edge_version()}",
                        "upserted": len(write), "deleted": len(delete),
                        "copy_seconds": round(t0 - started, 3), "upsert_seconds": round(t1 - t0, 3),
                        "index_seconds": round(t2 - t1, 3)}
            if digest is not None:
                manifest["digest"] = digest
            return shard, manifest

        if source == "sync":
            expected.append(len(points.ids))
        manifest = self._build(collection, fill)
        return {"collection": collection, "points": manifest["points"], "upserted": len(write),
                "deleted": len(delete), "dimension": manifest["dimension"], "model": points.model,
                "generation": manifest["generation"],
                "location": str(self._folder(collection) / f"g{manifest['generation']:06d}"),
                "seconds": time.perf_counter() - started, "copy_seconds": manifest["copy_seconds"],
                "upsert_seconds": manifest["upsert_seconds"], "index_seconds": manifest["index_seconds"]}

    def _upsert(self, collection, points):
        with self._write_lock(collection):
            self._touched.add(collection)
            served = self._served(collection)
            if served is None:
                stats = self._rebuild_locked(collection, points)
                return {**stats, "upserted": len(points.ids), "created": True}
            parent = served.manifest
            self._check_same_space(collection, parent, int(points.vectors.shape[1]), points.model)
            hashes, digest = None, None
            known = self._read_point_hashes(served.folder) if parent.get("digest") else None
            if known is not None:  # keep the point hashes exact: the parent's, updated by these points
                merged = dict(zip(known[0].tolist(), known[1].tolist(), strict=True))
                merged.update(zip(points.ids.tolist(), points.hashes.tolist(), strict=True))
                all_ids = np.fromiter(merged, dtype=np.int64, count=len(merged))
                all_hashes = np.fromiter(merged.values(), dtype=np.uint64, count=len(merged))
                hashes = (all_ids, all_hashes)
                digest = points_digest(all_ids, all_hashes, points.model, int(parent["dimension"]))
            stats = self._patched(collection, served, points, np.arange(len(points.ids)),
                                  np.zeros(0, dtype=np.int64), hashes, digest, "upsert")
            return {**stats, "created": False}

    def _sync(self, collection, points, max_changed_share):
        with self._write_lock(collection):
            self._touched.add(collection)
            served = self._served(collection)
            dimension = int(points.vectors.shape[1])
            manifest = served.manifest if served is not None else {}
            known = None
            if served is None:
                reason = "no served collection yet"
            elif manifest.get("model") != points.model:
                reason = f"model changed ({manifest.get('model')!r} -> {points.model!r})"
            elif manifest.get("dimension") != dimension:
                reason = f"dimension changed ({manifest.get('dimension')} -> {dimension})"
            elif manifest.get("digest") == points.digest:
                return {"action": "kept", "reason": "served generation holds exactly these points",
                        "collection": collection, "points": int(manifest["points"]), "dimension": dimension,
                        "model": points.model, "generation": manifest["generation"], "location": str(served.folder)}
            elif not manifest.get("digest") or (known := self._read_point_hashes(served.folder)) is None:
                reason = "served generation records no point hashes"
            else:
                write, delete = _diff(known[0], known[1], points.ids, points.hashes)
                changed = len(write) + len(delete)
                share = changed / max(len(points.ids), len(known[0]), 1)
                if share > max_changed_share:
                    reason = f"{share:.1%} of the points changed (more than {max_changed_share:.0%})"
                else:
                    stats = self._patched(collection, served, points, write, delete,
                                          (points.ids, points.hashes), points.digest, "sync")
                    return {**stats, "action": "updated", "changed_share": share,
                            "reason": f"{len(write)} new or changed, {len(delete)} removed ({share:.2%})"}
            stats = self._rebuild_locked(collection, points)
            return {**stats, "action": "rebuilt", "reason": reason, "upserted": len(points.ids)}

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

    # -- reads

    def _need(self, collection: str) -> _Generation:
        served = self._served(collection)
        if served is None:
            self._require(collection)  # raises with the usual message
        return served

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

    def _close(self) -> None:
        for generation in self._open.values():
            generation.close()
        self._open.clear()
        for collection in sorted(self._touched):  # drop generations this session was the last to read
            if not self._folder(collection).is_dir():
                continue
            try:
                with self._write_lock(collection, wait=False) as locked:
                    if locked:
                        self._collect_garbage(collection)
            except OSError as exc:
                log.warning(f"could not clean old generations of {collection!r}: {exc}")
