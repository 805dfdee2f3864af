"""The vector store: overview embeddings served for nearest-neighbour queries (Qdrant).

Two implementations of :class:`VectorStore` (``session``), picked by
:func:`vector_store_from_environment` (``environment``): :class:`QdrantServerStore` (``server``: a
Qdrant server or cluster through ``qdrant-client``, ``QDRANT_URL``, ``QDRANT_API_KEY``) and
:class:`EmbeddedQdrantStore` (``embedded``, the default: Qdrant's in-process engine ``qdrant-edge-py``
under ``RCMD_DATA_DIR/vectors``, its generation folders in ``generations``). ``points`` checks and
hashes what is written. Open a store once per step and close it in a ``finally``
(``with store.open() as session: ...``): the engines take file locks and Dagster runs steps in
separate processes. Sessions are not thread-safe. A reader never sees a half-filled or mixed-model
index (generations switched atomically); how, and the embedded engine's locking and index, are in
``docs/vector_store.md``.
"""

from rcmd_pipeline.resources.vector_store.embedded import EmbeddedQdrantStore
from rcmd_pipeline.resources.vector_store.environment import VECTORS_FOLDER, vector_store_from_environment
from rcmd_pipeline.resources.vector_store.points import point_hashes, points_digest
from rcmd_pipeline.resources.vector_store.server import QdrantServerStore
from rcmd_pipeline.resources.vector_store.session import (
    QDRANT_API_KEY_ENV,
    QDRANT_URL_ENV,
    QUERY_BATCH,
    REBUILD_SHARE,
    RETRIEVE_BATCH,
    VectorSession,
    VectorStore,
    VectorStoreConnectionError,
    VectorStoreError,
    VectorStoreMismatchError,
)

__all__ = [
    "QDRANT_API_KEY_ENV", "QDRANT_URL_ENV", "QUERY_BATCH", "REBUILD_SHARE", "RETRIEVE_BATCH", "VECTORS_FOLDER",
    "EmbeddedQdrantStore", "QdrantServerStore", "VectorSession", "VectorStore", "VectorStoreConnectionError",
    "VectorStoreError", "VectorStoreMismatchError", "point_hashes", "points_digest", "vector_store_from_environment",
]
