"""The vector store's contract: :class:`VectorStore` (the resource), :class:`VectorSession` (what a
step calls), the errors, and the settings both stores share.

The public methods check their arguments (``points``) and shape the answers; an implementation fills
in the ``_``-methods. The guarantees (atomic generations, ``sync`` writing only what changed) are in
the method docstrings and ``docs/vector_store.md``.
"""

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from dagster import ConfigurableResource

from rcmd_pipeline.lib.arguments import check_k as _check_k
from rcmd_pipeline.resources.vector_store.points import (
    Points,
    check_collection,
    check_model,
    checked_exclusions,
    checked_payloads,
    checked_vectors,
    point_ids,
    point_vectors,
    query_ids,
)

QDRANT_URL_ENV = "QDRANT_URL"
QDRANT_API_KEY_ENV = "QDRANT_API_KEY"

QUERY_BATCH = 4096
"""Queries per batched engine/server call (3,000 evaluation pairs are one call)."""
RETRIEVE_BATCH = 1024
"""Ids per retrieve call."""

REBUILD_SHARE = 0.2
"""``sync`` rebuilds instead of patching when more than this share of the points changed (new,
changed or removed, relative to the larger of the old and new point counts). Below it, patching a
copy of the served generation writes only the changed points and is several times cheaper than a
rebuild (``docs/benchmarks.md``, issue 13); above it the patched copy costs nearly as much as a
rebuild and leaves many replaced points in the old HNSW graph (deleted points stay in the graph until
the optimiser rewrites the segment), so a fresh index is the better buy. 20 % is also far above a
night's normal churn (a handful of changed overviews) and below a catalogue-wide change (a new
TMDB language, a new embedding text recipe), which should give a fresh index."""


class VectorStoreError(RuntimeError):
    """The vector store could not do what was asked (the message says what and where)."""


class VectorStoreMismatchError(VectorStoreError):
    """Vectors of another model or dimension than the served generation's (rebuild to change models)."""


class VectorStoreConnectionError(VectorStoreError):
    """The Qdrant server could not be reached or refused the credentials."""


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
        collection, model = check_collection(collection), check_model(model)
        ids = point_ids(ids)
        vectors = point_vectors(vectors, len(ids))
        if len(ids) == 0:
            raise ValueError("rebuild needs at least one point (an empty collection serves nothing)")
        points = Points(ids, vectors, checked_payloads(payloads, len(ids)), model)
        del vectors, payloads  # only ``points`` holds them now (see Points.written)
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
        collection, model = check_collection(collection), check_model(model)
        if not 0 <= max_changed_share <= 1:
            raise ValueError(f"max_changed_share must be within [0, 1], got {max_changed_share!r}")
        ids = point_ids(ids)
        vectors = point_vectors(vectors, len(ids))
        if len(ids) == 0:
            raise ValueError("sync needs at least one point (an empty collection serves nothing)")
        started = time.perf_counter()
        points = Points(ids, vectors, checked_payloads(payloads, len(ids)), model)
        del vectors, payloads  # only ``points`` holds them now (see Points.written)
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
        collection, model = check_collection(collection), check_model(model)
        ids = point_ids(ids)
        if len(ids) == 0:  # nothing to write: report the served generation (and still check the space)
            info = self._info(collection)
            arr = np.asarray(vectors)
            if info is not None:
                self._check_same_space(collection, info, arr.shape[-1] if arr.ndim == 2 else info["dimension"],
                                       model)
            return {**(info or {"collection": collection, "points": 0, "dimension": None, "model": None,
                                "generation": None}), "upserted": 0, "seconds": 0.0, "created": False}
        points = Points(ids, point_vectors(vectors, len(ids)), checked_payloads(payloads, len(ids)), model)
        del vectors  # only ``points`` holds them now (see Points.written)
        return self._upsert(collection, points)

    # -- reads

    def info(self, collection: str) -> dict[str, Any] | None:
        """``points``, ``dimension``, ``model``, ``generation`` and ``digest`` (the content digest of
        its points, None when unknown) of the served generation; None if the collection is absent."""
        self._check_open()
        return self._info(check_collection(collection))

    def retrieve(self, collection: str, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Stored vectors by id (float32, unit length); ids without a vector are absent."""
        self._check_open()
        collection = check_collection(collection)
        ids = query_ids(ids)
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
        collection, k = check_collection(collection), _check_k(k)
        ids = query_ids(ids)
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
        collection, k = check_collection(collection), _check_k(k)
        queries = checked_vectors(vectors, None, "query vectors")
        excluded = checked_exclusions(exclude, len(queries))
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
    def _rebuild(self, collection: str, points: Points) -> dict[str, Any]: ...

    @abstractmethod
    def _upsert(self, collection: str, points: Points) -> dict[str, Any]: ...

    @abstractmethod
    def _sync(self, collection: str, points: Points, max_changed_share: float) -> dict[str, Any]: ...

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


class VectorStore(ConfigurableResource, ABC):
    """Where the overview vectors are served; the guarantees are in ``docs/vector_store.md``.

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

