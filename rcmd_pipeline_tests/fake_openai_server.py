"""A small OpenAI-compatible ``POST /v1/embeddings`` server on 127.0.0.1 for end-to-end tests.

It accepts one API key (``Authorization: Bearer <key>``) and answers any other with OpenAI's 401
body, which (as a careless proxy might) quotes the key that was presented, so a test can prove the
client never passes a server's message on unredacted. Vectors are deterministic (a hash of the
text), ``dim`` long. Every request is recorded in ``requests`` (path, headers, status, inputs).

    with FakeOpenAIServer(key="sk-test") as server:
        OpenAIEmbedder(api_key="sk-test", base_url=server.url).embed(["하나"])
        server.requests[0]["headers"]["authorization"]  # "Bearer sk-test"
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class FakeOpenAIServer:
    """``POST /v1/embeddings`` with a key check; ``url`` is the API root including ``/v1``."""

    def __init__(self, *, key: str, dim: int = 8):
        self.key, self.dim = key, dim
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # silence the default stderr log
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = server.answer(self.path, headers.get("authorization", ""), body)
                with server.lock:
                    server.requests.append({"path": self.path, "headers": headers, "status": status,
                                            "inputs": body.get("input")})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fake-openai", daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def vector(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return (np.random.default_rng(seed).normal(size=self.dim) * 3.0).tolist()

    def answer(self, path: str, auth: str, body: dict) -> tuple[int, dict]:
        if path != "/v1/embeddings":
            return 404, {"error": {"message": f"unknown route {path}", "type": "invalid_request_error"}}
        if auth != f"Bearer {self.key}":
            presented = auth.removeprefix("Bearer ")
            return 401, {"error": {"message": f"Incorrect API key provided: {presented}. You can find your API key "
                                              "at https://platform.openai.com/account/api-keys.",
                                   "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        texts = body.get("input")
        texts = texts if isinstance(texts, list) else [texts]
        if any(not isinstance(t, str) or not t for t in texts):
            return 400, {"error": {"message": "'$.input' is invalid", "type": "invalid_request_error"}}
        data = [{"object": "embedding", "index": i, "embedding": self.vector(t)} for i, t in enumerate(texts)]
        return 200, {"object": "list", "data": data, "model": body.get("model"),
                     "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}}
