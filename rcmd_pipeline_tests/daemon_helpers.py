"""Helpers for the operations tests: a throw-away Dagster instance, the project's CLIs, a real
``dagster-daemon run``, an embeddings server whose answers a test holds back, and a webhook receiver.

Everything runs as separate processes against real files and sockets on 127.0.0.1, the way an
operator runs the project: nothing of the project is imported into the processes under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rcmd_pipeline_tests.faulty_embeddings_server import FaultyEmbeddingsServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Variables a developer's shell may carry that would change what the processes under test do.
PROJECT_PREFIXES = ("RCMD_", "TMDB_", "OPENAI_", "QDRANT_", "DAGSTER_")
# In-process steps: the same code without one Python start-up per step (the machine has 2 cores).
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
SMALL_EVAL = {"eval_transitions": {"config": {"min_movie_ratings": 5, "eval_size": 50}}}


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5,
               on_timeout: Callable[[], str] | None = None):
    """Poll ``condition`` until it returns something truthy; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval)


def make_home(folder: Path, yaml_source: Path = ROOT / ".dagster_home" / "dagster.yaml") -> Path:
    """A fresh ``DAGSTER_HOME`` holding a copy of one of the project's ``dagster.yaml`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(yaml_source, folder / "dagster.yaml")
    return folder


def project_env(home: Path, dataset: Path, data_dir: Path, **extra: str) -> dict:
    """The current environment without the project's settings or any credential, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROJECT_PREFIXES)}
    env.update(DAGSTER_HOME=str(home), RCMD_DATASET_PATH=str(dataset), RCMD_DATA_DIR=str(data_dir),
               VIRTUAL_ENV=str(BIN.parent), PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """One of the project's commands (``dagster``, ``dg``, ``dagster-daemon``) from the project root."""
    done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args[:4])} … exited {done.returncode}\n{done.stderr[-4000:]}"
    return done


def materialize(env: dict, select: str, config: dict | None = None, timeout: float = 400):
    """``dagster asset materialize -m rcmd_pipeline.definitions`` with in-process steps (and ``config``)."""
    run_config = {**IN_PROCESS, **(config or {})}
    return cli(["dagster", "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", select,
                "--config-json", json.dumps(run_config)], env, timeout=timeout)


class Daemon:
    """``dagster-daemon run`` from the project root (``[tool.dagster]`` of pyproject.toml), in its own process group,
    which is killed whole on exit (the daemon's code server and run workers included)."""

    def __init__(self, env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run"], cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # whatever the group still holds (run workers outlive the daemon after SIGTERM)
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Answered:
    inputs: tuple[str, ...]
    started: float
    ended: float


class GatedEmbeddingsServer(FaultyEmbeddingsServer):
    """The fake OpenAI-compatible embeddings server, whose answers the test lets through one by one.

    ``allow(n)`` lets ``n`` more requests be answered; later ones wait (up to ``hold_limit`` seconds)
    until ``allow`` or ``open`` is called. ``answered`` lists the requests answered, with their times,
    and ``max_in_flight`` how many were ever being served at once."""

    def __init__(self, *, hold_limit: float = 180.0, **kwargs):
        super().__init__(**kwargs)
        self.hold_limit = hold_limit
        self.answered: list[Answered] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._waiting = 0
        self._budget: float = float("inf")
        self._cond = threading.Condition()
        default_handle_error = self._server.handle_error

        def handle_error(request, client_address):  # a held request whose client was killed: expected
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                default_handle_error(request, client_address)
        self._server.handle_error = handle_error

    def allow(self, n: int) -> None:
        with self._cond:
            self._budget = n
            self._cond.notify_all()

    def open(self) -> None:
        self.allow(float("inf"))

    def waiting(self) -> int:
        """Requests held back right now."""
        with self._cond:
            return self._waiting

    def _answer(self, path, body):
        started = time.time()
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: self._budget >= 1, timeout=self.hold_limit)
            self._waiting -= 1
            self._budget -= 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            status, payload, headers = super()._answer(path, body)
        finally:
            with self._cond:
                self._in_flight -= 1
        if status == 200:
            inputs = body.get("input")
            inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs or ())
            with self._cond:
                self.answered.append(Answered(inputs, started, time.time()))
        return status, payload, headers

    def answered_inputs(self, after: float = 0.0) -> list[str]:
        with self._cond:
            return [t for a in self.answered if a.started >= after for t in a.inputs]


class WebhookReceiver:
    """A Slack-style incoming webhook on 127.0.0.1: records each POSTed JSON body, answers ``status``
    (200 "ok" like Slack)."""

    def __init__(self, path: str = "/services/T000/B000/webhook-token-xyz", status: int = 200):
        self.path = path
        self.status = status
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.paths.append(self.path)
                owner.bodies.append(json.loads(raw or b"{}"))
                self.send_response(owner.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
