"""Which vector store runs, chosen from environment variables."""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import env_value
from rcmd_pipeline.resources.vector_store.embedded import EmbeddedQdrantStore
from rcmd_pipeline.resources.vector_store.server import QdrantServerStore
from rcmd_pipeline.resources.vector_store.session import QDRANT_API_KEY_ENV, QDRANT_URL_ENV, VectorStore

VECTORS_FOLDER = "vectors"
"""Folder of the embedded store under ``RCMD_DATA_DIR``."""


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
