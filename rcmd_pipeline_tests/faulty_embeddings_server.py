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
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unit_vector(text: str, dim: int) -> np.ndarray:
    """The server's vector for ``text``: deterministic, float32, unit length."""
    raw = b"".join(hashlib.sha256(f"{i}\x00{text}".encode()).digest() for i in range(dim // 32 + 1))
    vector = np.frombuffer(raw[:dim], dtype=np.uint8).astype(np.float64) - 127.5
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingRequest:
    status: int
    inputs: tuple[str, ...]


class FaultyEmbeddingsServer:
    """``url`` is the API root including ``/v1`` (what ``OpenAIEmbedder.base_url`` wants)."""

    def __init__(self, *, port: int = 0, dim: int = 8, rate_limited_first: int = 0, retry_after: str = "0",
                 fail_after_ok: int | None = None, fail_status: int = 500):
        self.dim = dim
        self.rate_limited_first = rate_limited_first
        self.retry_after = retry_after
        self.fail_after_ok = fail_after_ok
        self.fail_status = fail_status
        self.records: list[EmbeddingRequest] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                status, payload, headers = owner._answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faulty-embeddings", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

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

    # ---- life cycle

    def start(self) -> FaultyEmbeddingsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultyEmbeddingsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
