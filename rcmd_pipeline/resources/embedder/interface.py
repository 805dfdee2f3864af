"""The embedder interface: what every embedder of movie overviews promises, and the checks behind it.

``embed(texts)`` returns one float32, L2-normalised row per text, ``dimension()`` the row length,
and ``model_id()`` a stable name of "the vector space": the model plus every setting that changes
the vectors. The embedding asset hashes the cache space (:meth:`Embedder.cache_space`) with each
text to decide what must be re-embedded, so two embedders share vectors only when they give the
same vectors for the same text. The rules and their reasons are in ``docs/embedder.md``.
"""

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

EMBEDDING_NAMESPACE_ENV = "RCMD_EMBEDDING_NAMESPACE"

_NEWLINES = re.compile(r"\r\n|\r|\n")


class EmbedderError(Exception):
    """An embedding problem the caller should see (bad setting, a request the API refused, ...)."""


class EmbedderAuthError(EmbedderError):
    """The embeddings API rejected the key; the message names the variable to check, never the key."""


def _checked_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list with newlines replaced by spaces; ValueError on an empty or blank text."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of strings, not a single string")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty or blank: filter out movies without an overview before "
                             "embedding (the OpenAI API rejects empty strings)")
        out.append(_NEWLINES.sub(" ", text))
    return out


def _l2_normalised(vectors: Any, n: int, source: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, d) array with unit rows; EmbedderError if unusable."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise EmbedderError(f"{source} returned an array of shape {arr.shape} for {n} texts")
    if not np.isfinite(arr).all():
        raise EmbedderError(f"{source} returned non-finite values")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbedderError(f"{source} returned a zero vector (row {int(np.argmin(norms[:, 0]))})")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


class Embedder(ConfigurableResource, ABC):
    """Embeddings of texts (movie overviews): float32, L2-normalised, one row per text.

    ``model_id()`` names the vector space: vectors of two embedders are comparable only when their
    ids are equal (the vector collection records it; it may name the endpoint too).

    ``cache_space(dimension)`` is what the embedding cache keys vectors by, with the text: the model
    name, the vector dimension and ``namespace`` (``RCMD_EMBEDDING_NAMESPACE``), never the endpoint,
    so the same model behind another gateway reuses every vector already paid for. Two servers that
    serve different weights under the same model name and dimension must be told apart with
    ``namespace``.
    """

    namespace: str | None = Field(
        default=None,
        description="Embedding cache namespace (RCMD_EMBEDDING_NAMESPACE): vectors are reused across endpoints "
                    "serving the same model name and dimension unless their namespaces differ.",
    )

    _calls: int = PrivateAttr(default=0)
    _texts_sent: int = PrivateAttr(default=0)
    _counter_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @abstractmethod
    def model_id(self) -> str:
        """Stable identifier of the model and of every setting that changes the vectors."""

    @abstractmethod
    def dimension(self) -> int:
        """Length of each vector."""

    def known_dimension(self) -> int | None:
        """:meth:`dimension` when it is known without a request to the backend; else None."""
        return self.dimension()

    def _space_name(self) -> str:
        """The model's name in :meth:`cache_space` (without dimension or namespace)."""
        return self.model_id()

    def cache_space(self, dimension: int) -> str:
        """The cache key space of this embedder's vectors of ``dimension``: namespace, model name, dimension."""
        prefix = f"{self.namespace.strip()}/" if self.namespace and self.namespace.strip() else ""
        return f"{prefix}{self._space_name()}@{int(dimension)}"

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for non-empty, newline-free texts, in order (normalised by :meth:`embed`)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, in order: shape ``(len(texts), dimension())``.

        Raises ``ValueError`` on an empty or blank text (filter those first). An empty list gives a
        ``(0, dimension())`` array without a backend request (for an OpenAI-compatible server of an
        unknown model, ``dimension()`` itself may cost one request, once).
        """
        prepared = _checked_texts(texts)
        if not prepared:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        return _l2_normalised(self._embed(prepared), len(prepared), type(self).__name__)

    @property
    def calls(self) -> int:
        """Requests made to the backend by this instance (retries included)."""
        return self._calls

    @property
    def texts_sent(self) -> int:
        """Texts sent to the backend by this instance (a retried request counts again)."""
        return self._texts_sent

    def _count(self, texts: int) -> None:
        with self._counter_lock:
            self._calls += 1
            self._texts_sent += texts
