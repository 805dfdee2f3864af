"""An OpenAI-compatible ``POST /v1/embeddings`` server on 127.0.0.1 that misbehaves on purpose.

Used by ``test_faults.py``. Vectors are deterministic unit vectors (a hash of the text), ``dim``
long, so a re-run against a restarted server gets the same vectors. Faults are scripted by request
number: the first ``rate_limited_first`` requests get OpenAI's 429 body with ``Retry-After``; after
``fail_after_ok`` successful answers every request gets ``fail_status`` (500: the service broke).
``port`` lets a test restart the server on the address of a stopped one: the embedder's
``model_id()`` contains host and port, so a restarted service must come back where it was.

    with FaultyEmbeddingsServer(rate_limited_first=2) as server:
        OpenAIEmbedder(api_key="k", base_url=server.url, model="fake").embed(["하나"])
        [r.status for r in server.records]  # [429, 429, 200]
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from rcmd_pipeline_tests.fake_openai_server import JsonPostServer


def unit_vector(text: str, dim: int) -> np.ndarray:
    """The server's vector for ``text``: deterministic, float32, unit length."""
    raw = b"".join(hashlib.sha256(f"{i}\x00{text}".encode()).digest() for i in range(dim // 32 + 1))
    vector = np.frombuffer(raw[:dim], dtype=np.uint8).astype(np.float64) - 127.5
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingRequest:
    status: int
    inputs: tuple[str, ...]


class FaultyEmbeddingsServer(JsonPostServer):
    """Scripted faults by request number; ``url`` is the API root including ``/v1``."""

    def __init__(self, *, port: int = 0, dim: int = 8, rate_limited_first: int = 0, retry_after: str = "0",
                 fail_after_ok: int | None = None, fail_status: int = 500):
        super().__init__(port=port, name="faulty-embeddings")
        self.dim = dim
        self.rate_limited_first = rate_limited_first
        self.retry_after = retry_after
        self.fail_after_ok = fail_after_ok
        self.fail_status = fail_status
        self.records: list[EmbeddingRequest] = []
        self._lock = threading.Lock()

    def post(self, path: str, headers: dict[str, str], body: dict):
        return self._answer(path, body)

    def _answer(self, path: str, body: dict) -> tuple[int, dict, list[tuple[str, str]]]:
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        with self._lock:
            n = len(self.records)
            ok_so_far = sum(1 for r in self.records if r.status == 200)
            if path.rstrip("/") != "/v1/embeddings":
                status = 404
            elif n < self.rate_limited_first:
                status = 429
            elif self.fail_after_ok is not None and ok_so_far >= self.fail_after_ok:
                status = self.fail_status
            else:
                status = 200
            self.records.append(EmbeddingRequest(status, tuple(inputs)))
        if status == 429:
            return 429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                   "param": None, "code": "rate_limit_exceeded"}}, [("Retry-After", self.retry_after)]
        if status != 200:
            return status, {"error": {"message": f"injected HTTP {status}", "type": "server_error",
                                      "param": None, "code": None}}, []
        data = []
        for i, text in enumerate(inputs):
            vector = unit_vector(text, self.dim)
            embedding = (base64.b64encode(vector.tobytes()).decode() if body.get("encoding_format") == "base64"
                         else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(t) for t in inputs)
        return 200, {"object": "list", "data": data, "model": body.get("model", ""),
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, []

    # ---- what was asked

    def inputs(self, status: int | None = 200) -> list[str]:
        """Every input of the requests answered with ``status`` (None: of every request), in order."""
        with self._lock:
            return [t for r in self.records if status is None or r.status == status for t in r.inputs]

    def statuses(self) -> list[int]:
        with self._lock:
            return [r.status for r in self.records]
