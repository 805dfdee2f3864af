"""Fake OpenAI-compatible ``POST /v1/embeddings`` servers on 127.0.0.1 for end-to-end tests.

:class:`JsonPostServer` is the HTTP plumbing both fakes share: a threaded server whose POSTs are
answered by ``post(path, headers, body)``. :class:`FakeOpenAIServer` enforces the API's limits and
key (its 401 body quotes the key presented, as a careless proxy might, so a test can prove the
client never passes a server's message on unredacted) and records every request in ``requests``
(path, headers, status, inputs) and ``log``; ``FaultyEmbeddingsServer`` (``faulty_embeddings_server``)
scripts faults by request number.

    with FakeOpenAIServer(key="sk-test") as server:
        OpenAIEmbedder(api_key="sk-test", base_url=server.url).embed(["하나"])
        server.requests[0]["headers"]["authorization"]  # "Bearer sk-test"
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

SERVER_KEY = "sk-test-SERVERKEY-0123456789abcdef"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JsonPostServer:
    """A threaded HTTP server on 127.0.0.1 answering JSON POSTs with :meth:`post`; ``url`` is its
    API root including ``/v1`` (what ``OpenAIEmbedder.base_url`` wants). ``port`` lets a test restart
    a server on the address of a stopped one."""

    def __init__(self, *, port: int = 0, name: str = "fake-http"):
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
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["x-test-peer"] = f"{self.client_address[0]}:{self.client_address[1]}"  # the connection
                status, payload, extra = owner.post(self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for header, value in extra:
                    self.send_header(header, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)

    def post(self, path: str, headers: dict[str, str], body: dict) -> tuple[int, dict, list[tuple[str, str]]]:
        """(status, JSON payload, extra headers) for one request; ``headers`` have lower-case names."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def realistic_tokens(text: str) -> int:
    """A stand-in for OpenAI's tokenizer on Korean: a token per non-ASCII character, four ASCII characters a token."""
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return non_ascii + -(-(len(text) - non_ascii) // 4)


def worst_case_tokens(text: str) -> int:
    """A byte-level BPE's worst case: a token per UTF-8 byte (more than the client's estimate)."""
    return len(text.encode("utf-8"))


class FakeOpenAIServer(JsonPostServer):
    """``POST /v1/embeddings`` on 127.0.0.1 with the API's limits, error bodies and injected failures.

    Refuses (HTTP 400, OpenAI-style body) more than 2,048 inputs, an empty input, an input over
    8,192 tokens and more than 300,000 tokens per request, counting tokens with ``tokens``. Answers
    the first ``rate_limited`` requests 429 with ``Retry-After``, then ``fail_500`` requests 500,
    401 for a wrong key (echoing the key, as a careless proxy might), and 429 ``insufficient_quota``
    to every request once ``quota_exhausted`` is set. Vectors are deterministic,
    unnormalised, ``dim`` long (or ``dimensions`` when the request asks), and listed in reverse
    order (the client must sort by ``index``), as base64 float32 when asked unless ``floats_only``.
``log`` holds one entry per request, ``requests`` its headers, encoding and connection (``peer``).
    """

    def __init__(self, *, tokens=realistic_tokens, rate_limited: int = 0, retry_after: str = "1",
                 fail_500: int = 0, dim: int = 8, key: str = SERVER_KEY, floats_only: bool = False):
        super().__init__(name="fake-openai")
        self.tokens, self.rate_limited, self.retry_after = tokens, rate_limited, retry_after
        self.fail_500, self.dim, self.key = fail_500, dim, key
        self.floats_only = floats_only  # answer lists of floats even when base64 is asked (some servers do)
        self.quota_exhausted = False
        self.log: list[dict] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def post(self, path: str, headers: dict[str, str], body: dict):
        status, payload, extra = self.answer(path, headers.get("authorization", ""), body)
        with self.lock:
            self.requests.append({"path": path, "headers": headers, "status": status, "inputs": body.get("input"),
                                  "encoding_format": body.get("encoding_format"), "peer": headers.get("x-test-peer")})
        return status, payload, list(extra.items())

    def vector(self, text: str, dim: int | None = None) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)[: dim or self.dim] * 3.0

    @staticmethod
    def error(status: int, message: str, code=None, headers=None):
        return status, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                  "code": code}}, headers or {}

    def answer(self, path: str, auth: str, body: dict):
        inputs = body.get("input")
        entry = {"inputs": len(inputs) if isinstance(inputs, list) else 1, "tokens": None, "status": None,
                 "dimensions": body.get("dimensions", "absent"), "texts": inputs}
        with self.lock:
            self.log.append(entry)
            result = self._answer(path, auth, body, entry)
        entry["status"] = result[0]
        return result

    def _answer(self, path, auth, body, entry):
        if path != "/v1/embeddings":
            return self.error(404, "unknown route")
        if auth != f"Bearer {self.key}":
            presented = auth.removeprefix("Bearer ")
            return self.error(401, f"Incorrect API key provided: {presented}. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys.", "invalid_api_key")
        if self.quota_exhausted:
            return self.error(429, "You exceeded your current quota, please check your plan and billing details.",
                              "insufficient_quota")
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return self.error(429, "Rate limit reached for requests", "rate_limit_exceeded",
                              {"Retry-After": self.retry_after})
        if self.fail_500 > 0:
            self.fail_500 -= 1
            return 500, {"error": {"message": "The server had an error", "type": "server_error"}}, {}
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if len(texts) > 2048:
            return self.error(400, f"'$.input' is invalid: {len(texts)} inputs, at most 2048 are allowed")
        if any(not isinstance(t, str) or t == "" for t in texts):
            return self.error(400, "'$.input' is invalid. Please check the API reference")
        counts = [self.tokens(t) for t in texts]
        entry["tokens"] = sum(counts)
        if max(counts) > 8192:
            return self.error(400, f"This model's maximum context length is 8192 tokens, however you requested "
                                   f"{max(counts)} tokens (input {counts.index(max(counts))}). Please reduce your "
                                   "prompt.")
        if sum(counts) > 300_000:
            return self.error(400, f"Requested {sum(counts)} tokens, max 300000 tokens per request",
                              "max_tokens_per_request")
        dim = body.get("dimensions")
        data = []
        for i, text in enumerate(texts):
            vec = self.vector(text, dim)
            emb = (base64.b64encode(vec.tobytes()).decode()
                   if body.get("encoding_format") == "base64" and not self.floats_only else vec.tolist())
            data.append({"object": "embedding", "index": i, "embedding": emb})
        data.reverse()
        return 200, {"object": "list", "data": data, "model": body.get("model"),
                     "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}, {}
