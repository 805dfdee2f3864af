"""A real HTTP server on 127.0.0.1 that answers like TMDB's ``/3/movie/{id}``, with injectable faults.

Used by the TMDB client tests and ``benchmarks/bench_tmdb_fetch.py``: the client talks to it over
real sockets, so timeouts, dropped connections and keep-alive behave as they do against TMDB.

    with FakeTmdbServer({862: movie_body(862)}, faults={862: [too_many_requests(1)]}) as server:
        client = HttpTmdbClient(base_url=server.url, read_access_token="t")
        ...
        server.counts()[862]  # 2: the 429, then the movie

Faults are scripted per TMDB id: the n-th request (0-based) for an id gets ``faults[id][n]`` when
there is one, else ``default_fault`` when set (e.g. ``slow(0.05)`` for every request in a benchmark),
else the normal answer (the body, or TMDB's 404 body for an unknown id). ``faults`` may be
changed while the server runs (``server.faults[id] = [...]``). When ``api_key`` or ``bearer`` is set,
requests without that credential get TMDB's 401 body. Every request is logged (id, query, headers,
time, what was answered).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NOT_FOUND_BODY = {"success": False, "status_code": 34,
                  "status_message": "The resource you requested could not be found."}
INVALID_KEY_BODY = {"success": False, "status_code": 7,
                    "status_message": "Invalid API key: You must be granted a valid key."}


@dataclass(frozen=True)
class Fault:
    """What to answer instead of the movie: ``kind`` is status, drop, slow, not_json or ok."""

    kind: str
    status: int = 200
    seconds: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = "application/json;charset=utf-8"


def ok() -> Fault:
    return Fault("ok")


def too_many_requests(retry_after: float | None = 1) -> Fault:
    headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
    body = json.dumps({"success": False, "status_code": 25,
                       "status_message": "Your request count (41) is over the allowed limit of 40."}).encode()
    return Fault("status", status=429, headers=headers, body=body)


def server_error(status: int = 500) -> Fault:
    body = json.dumps({"success": False, "status_code": 11, "status_message": "Internal error."}).encode()
    return Fault("status", status=status, body=body)


def html_error(status: int = 502) -> Fault:
    body = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
    return Fault("status", status=status, body=body, content_type="text/html")


def slow(seconds: float) -> Fault:
    """Wait ``seconds`` before answering normally."""
    return Fault("slow", seconds=seconds)


def drop() -> Fault:
    """Close the connection without sending a response."""
    return Fault("drop")


def not_found() -> Fault:
    return Fault("status", status=404, body=json.dumps(NOT_FOUND_BODY).encode())


def unauthorized(status: int = 401) -> Fault:
    return Fault("status", status=status, body=json.dumps(INVALID_KEY_BODY).encode())


def not_json(status: int = 200) -> Fault:
    return Fault("status", status=status, body=b"this is not json {", content_type="text/plain")


def movie_body(tmdb_id: int, **overrides) -> dict:
    """A TMDB-shaped ``/3/movie/{id}`` body (ko-KR), with any field overridden or removed (``None``
    values are kept as JSON null; pass ``_drop=("title",)`` to remove keys)."""
    body = {
        "adult": False,
        "backdrop_path": None,
        "belongs_to_collection": None,
        "budget": 0,
        "genres": [{"id": 18, "name": "드라마"}],
        "homepage": "",
        "id": tmdb_id,
        "imdb_id": f"tt{tmdb_id:07d}",
        "original_language": "en",
        "original_title": f"Movie {tmdb_id}",
        "overview": f"영화 {tmdb_id}의 줄거리.",
        "popularity": 1.0,
        "poster_path": f"/p{tmdb_id}.jpg",
        "release_date": "2001-02-03",
        "revenue": 0,
        "runtime": 100 + tmdb_id % 50,
        "status": "Released",
        "tagline": "",
        "title": f"영화 {tmdb_id}",
        "video": False,
        "vote_average": 7.0,
        "vote_count": 10,
    }
    for key in overrides.pop("_drop", ()):
        body.pop(key, None)
    body.update(overrides)
    return body


@dataclass
class RequestRecord:
    tmdb_id: int | None
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    answer: str  # "200", "404", "drop", ...


@dataclass
class _State:
    bodies: dict[int, object]
    faults: dict[int, list[Fault]]
    default_fault: Fault | None
    api_key: str | None
    bearer: str | None
    log: list[RequestRecord] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TMDB (every answer carries Content-Length)
    server_version = "FakeTMDB/1.0"
    # Headers and body are separate writes; with Nagle's algorithm on, the body then waits for the
    # client's delayed ACK (~40 ms per keep-alive request), a latency TMDB does not have.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        state: _State = self.server.state  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        segments = parts.path.strip("/").split("/")
        tmdb_id = int(segments[2]) if len(segments) == 3 and segments[:2] == ["3", "movie"] \
            and segments[2].isdigit() else None
        with state.lock:
            n = state.seen[tmdb_id]
            state.seen[tmdb_id] += 1
            script = state.faults.get(tmdb_id, [])
            fault = script[n] if n < len(script) else state.default_fault
            record = RequestRecord(tmdb_id, parts.path, query, headers, time.monotonic(), "")
            state.log.append(record)

        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "drop":
            record.answer = "drop"
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            record.answer = str(fault.status)
            self._send(fault.status, fault.body, fault.content_type, fault.headers)
            return

        authorized = True
        if state.bearer is not None and headers.get("authorization") != f"Bearer {state.bearer}":
            authorized = state.api_key is not None and query.get("api_key") == state.api_key
        elif state.api_key is not None and state.bearer is None:
            authorized = query.get("api_key") == state.api_key
        if not authorized:
            record.answer = "401"
            self._send(401, json.dumps(INVALID_KEY_BODY).encode(), "application/json;charset=utf-8")
            return
        body = state.bodies.get(tmdb_id) if tmdb_id is not None else None
        if body is None:
            record.answer = "404"
            self._send(404, json.dumps(NOT_FOUND_BODY).encode(), "application/json;charset=utf-8")
            return
        payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        record.answer = "200"
        self._send(200, payload, "application/json;charset=utf-8")


class FakeTmdbServer:
    """Serves ``bodies`` (tmdbId -> dict, or raw bytes) on ``http://127.0.0.1:<free port>``."""

    def __init__(self, bodies: dict[int, object], *, faults: dict[int, list[Fault]] | None = None,
                 default_fault: Fault | None = None, api_key: str | None = None, bearer: str | None = None):
        self.state = _State(dict(bodies), dict(faults or {}), default_fault, api_key, bearer)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.state = self.state  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-tmdb", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults(self) -> dict[int, list[Fault]]:
        return self.state.faults

    def start(self) -> FakeTmdbServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTmdbServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the request log

    def requests(self, tmdb_id: int | None = None) -> list[RequestRecord]:
        with self.state.lock:
            log = list(self.state.log)
        return log if tmdb_id is None else [r for r in log if r.tmdb_id == tmdb_id]

    def counts(self) -> Counter:
        """Requests received per TMDB id."""
        return Counter(r.tmdb_id for r in self.requests())

    def total(self) -> int:
        with self.state.lock:
            return len(self.state.log)

    def reset_log(self) -> None:
        """Forget the log and the per-id request counts (scripted faults start over)."""
        with self.state.lock:
            self.state.log.clear()
            self.state.seen.clear()
