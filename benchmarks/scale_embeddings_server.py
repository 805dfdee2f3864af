"""A local OpenAI-compatible embeddings server with deterministic vectors, for the scale benchmark.

    python benchmarks/scale_embeddings_server.py [--port 0] [--dimension 1536] [--port-file PATH]

``POST /v1/embeddings`` answers what the ``openai`` client expects (``data[i].embedding`` as a float
list, or as base64 little-endian float32 when ``encoding_format`` is ``base64``, the client's
default; ``model``; ``usage``), for any ``Authorization: Bearer`` key that is not empty. The vector
of a text is a unit vector fixed by a hash of the text: 0.6 × one of 400 fixed centres (chosen by
the hash) + Gaussian noise seeded by the hash, normalised, like the clustered data of
``bench_vector_store.py``, so the HNSW build costs what it costs there (uniform random vectors in
1536-d would be an unrealistically hard index). ``dimensions`` in the request overrides the
default size. ``GET /stats`` returns ``{"requests", "inputs"}`` so far, which the benchmark reads to
report how many texts each run actually sent.

Binds 127.0.0.1 (``--port 0``: a free port, written to ``--port-file`` once listening). It is an
offline stand-in for OpenAI: it costs about 30 µs per 1536-d vector, so the pipeline's own work,
not the network, is what the benchmark measures.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

CENTRES = 400
CENTRE_WEIGHT = 0.6
CENTRE_SEED = 20240401
MAX_INPUTS = 2048


class VectorMaker:
    """Deterministic unit vectors of one dimension; the centres are drawn once per dimension."""

    def __init__(self) -> None:
        self._centres: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def centres(self, dim: int) -> np.ndarray:
        with self._lock:
            if dim not in self._centres:
                c = np.random.default_rng([CENTRE_SEED, dim]).standard_normal((CENTRES, dim))
                self._centres[dim] = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
            return self._centres[dim]

    def vectors(self, texts: list[str], dim: int) -> np.ndarray:
        centres = self.centres(dim)
        out = np.empty((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
            noise = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32) / np.sqrt(dim)
            out[i] = CENTRE_WEIGHT * centres[seed % CENTRES] + noise
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


class EmbeddingsServer:
    """``ThreadingHTTPServer`` on 127.0.0.1; ``url`` is the API root including ``/v1``."""

    def __init__(self, port: int = 0, dimension: int = 1536):
        self.dimension = dimension
        self.maker = VectorMaker()
        self.requests = 0
        self.inputs = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # no per-request line on stderr
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload, separators=(",", ":")).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path == "/stats":
                    with server.lock:
                        self._send(200, {"requests": server.requests, "inputs": server.inputs})
                else:
                    self._send(404, _error(f"unknown route {self.path}"))

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/embeddings":
                    return self._send(404, _error(f"unknown route {self.path}"))
                if not (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip():
                    return self._send(401, _error("missing API key", code="invalid_api_key"))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._send(400, _error("body is not JSON"))
                status, payload = server.answer(body)
                self._send(status, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def answer(self, body: dict) -> tuple[int, dict]:
        texts = body.get("input")
        texts = texts if isinstance(texts, list) else [texts]
        if not texts or len(texts) > MAX_INPUTS:
            return 400, _error(f"'input' must hold 1..{MAX_INPUTS} texts, got {len(texts)}")
        if any(not isinstance(t, str) or not t for t in texts):
            return 400, _error("'$.input' is invalid: every input must be a non-empty string")
        dim = body.get("dimensions") or self.dimension
        if not isinstance(dim, int) or dim < 1:
            return 400, _error(f"'dimensions' must be a positive integer, got {dim!r}")
        vectors = self.maker.vectors(texts, dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if as_base64
                               else v.tolist())}
                for i, v in enumerate(vectors)]
        tokens = sum(len(t) for t in texts)  # Korean: about a token per character
        with self.lock:
            self.requests += 1
            self.inputs += len(texts)
        return 200, {"object": "list", "data": data, "model": body.get("model") or "unknown",
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _error(message: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--dimension", type=int, default=1536, help="vector size when a request names none")
    ap.add_argument("--port-file", type=Path, help="write the port here once listening")
    args = ap.parse_args(argv)
    server = EmbeddingsServer(args.port, args.dimension)
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(str(server.port))
        os.replace(tmp, args.port_file)
    print(f"embeddings server on {server.url} ({args.dimension}-d), pid {os.getpid()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.close, daemon=True).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
