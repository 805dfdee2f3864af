"""Which embedder runs: the OpenAI-compatible client when a key is set, else the local model."""

from collections.abc import Mapping
from typing import Any

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import env_value
from rcmd_pipeline.resources.embedder.interface import EMBEDDING_NAMESPACE_ENV, Embedder, EmbedderError
from rcmd_pipeline.resources.embedder.local import LocalE5Embedder
from rcmd_pipeline.resources.embedder.openai_api import (
    EMBEDDING_DIMENSIONS_ENV,
    EMBEDDING_MODEL_ENV,
    OPENAI_API_KEY_ENV,
    OPENAI_BASE_URL_ENV,
    OpenAIEmbedder,
)


def embedder_from_environment(environ: Mapping[str, str]) -> Embedder:
    """:class:`OpenAIEmbedder` when ``OPENAI_API_KEY`` is set, else :class:`LocalE5Embedder`.

    With a key: ``RCMD_EMBEDDING_MODEL`` (default ``text-embedding-ada-002``, the study's model),
    ``OPENAI_BASE_URL`` (default OpenAI's), ``RCMD_EMBEDDING_DIMENSIONS`` (optional, a positive
    integer, for text-embedding-3-*). Either way ``RCMD_EMBEDDING_NAMESPACE`` (optional) separates
    embedding caches. A variable that is set but blank counts as unset.
    """
    namespace = env_text(EMBEDDING_NAMESPACE_ENV, environ) or None
    key = env_text(OPENAI_API_KEY_ENV, environ)
    if not key:
        return LocalE5Embedder(namespace=namespace)
    kwargs: dict[str, Any] = {"api_key": env_value(environ, OPENAI_API_KEY_ENV), "namespace": namespace}
    model = env_text(EMBEDDING_MODEL_ENV, environ)
    if model:
        kwargs["model"] = model
    base_url = env_text(OPENAI_BASE_URL_ENV, environ)
    if base_url:
        kwargs["base_url"] = env_value(environ, OPENAI_BASE_URL_ENV)
    dims = env_text(EMBEDDING_DIMENSIONS_ENV, environ)
    if dims:
        try:
            kwargs["dimensions"] = int(dims)
        except ValueError:
            raise EmbedderError(f"{EMBEDDING_DIMENSIONS_ENV}={dims!r}: expected a whole number of dimensions "
                                "(e.g. 512)") from None
        if kwargs["dimensions"] < 1:
            raise EmbedderError(f"{EMBEDDING_DIMENSIONS_ENV}={dims!r}: must be at least 1")
    return OpenAIEmbedder(**kwargs)
