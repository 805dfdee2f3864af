"""The vector store on a Qdrant server or cluster (``QDRANT_URL``, ``QDRANT_API_KEY``), through
``qdrant-client``; ``location=":memory:"`` runs the same client calls in-process for the tests.

A generation is a physical collection ``<C>__g<n>`` behind the alias ``<C>``, switched in one
atomic alias update; the model, dimension and digest travel in the collection's metadata.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import numpy as np
from pydantic import Field, PrivateAttr

from rcmd_pipeline.lib.secrets import mask_url as _mask_url
from rcmd_pipeline.lib.secrets import redact, secret_value
from rcmd_pipeline.resources.vector_store.points import GENERATION_SUFFIX, utc_timestamp
from rcmd_pipeline.resources.vector_store.session import (
    QDRANT_API_KEY_ENV,
    QDRANT_URL_ENV,
    QUERY_BATCH,
    RETRIEVE_BATCH,
    VectorSession,
    VectorStore,
    VectorStoreConnectionError,
    VectorStoreError,
    VectorStoreMismatchError,
)

log = logging.getLogger(__name__)

_META_MODEL = "rcmd_model"
_META_DIMENSION = "rcmd_dimension"
_META_GENERATION = "rcmd_generation"
_META_CREATED = "rcmd_created_at"
_META_DIGEST = "rcmd_digest"


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
            if name.startswith(prefix) and GENERATION_SUFFIX.search(name) and name[len(prefix):].isdigit():
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
        match = GENERATION_SUFFIX.search(name)
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
                      _META_CREATED: utc_timestamp(), _META_DIGEST: points.digest},
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

