"""Pieces of the HTTP client that know nothing of a fetch: the shared rate limit, key redaction,
TMDB's error body, a worker's outcome, and the clean-up of a killed run's temp files."""

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from rcmd_pipeline import storage
from rcmd_pipeline.lib.secrets import redact

NOT_FOUND_DIR = "not_found"
REJECTED_DIR = "rejected"

# TMDB's error body codes that mean "this credential is not accepted" (3: authentication failed,
# 7: invalid API key, 10: suspended API key, 14: authentication failed).
TMDB_AUTH_STATUS_CODES = {3, 7, 10, 14}
_STALE_TEMP_SECONDS = 3600.0
_API_KEY_IN_TEXT = re.compile(r"(api_key=)[^&\s'\"<>]+", re.IGNORECASE)


class TokenBucket:
    """One rate limit shared by every worker thread (GCRA, the smooth form of a token bucket).

    Request k may start no earlier than ``(k - burst) / rate`` after the first, so over any window
    of ``t`` seconds at most ``burst + rate * t`` requests start. Callers reserve a slot under the
    lock and sleep outside it, so waiting threads are served in arrival order without a stampede.
    """

    def __init__(self, rate: float, burst: int):
        self._interval = 1.0 / rate
        self._tau = (burst - 1) * self._interval
        self._tat = time.monotonic()  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    def acquire(self, cancel: threading.Event) -> bool:
        """Wait for a slot; ``False`` when ``cancel`` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now)
            start = max(now, tat - self._tau)
            self._tat = tat + self._interval
        delay = start - now
        if delay > 0 and cancel.wait(delay):
            return False
        return not cancel.is_set()

    def hold(self, seconds: float) -> None:
        """No request starts for ``seconds`` (a 429 concerns the whole client, not one movie)."""
        with self._lock:
            self._tat = max(self._tat, time.monotonic() + seconds + self._tau)


class _RedactApiKeyFilter(logging.Filter):
    """Redacts ``api_key=...`` in urllib3's debug line ``"GET /3/movie/1?...&api_key=... HTTP/1.1"``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        if "api_key=" in message.lower():
            record.msg, record.args = _API_KEY_IN_TEXT.sub(r"\1***", message), ()
        return True


_REDACT_FILTER = _RedactApiKeyFilter()


def install_log_redaction() -> None:
    """Keep the ``api_key`` query parameter out of urllib3's and requests' debug log lines."""
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


def redact_key(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without the secrets and without any ``api_key=...`` value."""
    return _API_KEY_IN_TEXT.sub(r"\1***", redact(text, secrets))


def tmdb_error_body(response: requests.Response) -> dict:
    """TMDB's ``{status_code, status_message}`` error body, ``{}`` when there is none."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class AuthRejected(Exception):
    """Raised in a worker when TMDB rejects the credential; the fetch turns it into TmdbAuthError."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


@dataclass
class Outcome:
    """What a worker learned about one TMDB id."""

    tmdb_id: int
    kind: str  # "fetched" | "not_found" | "failed" | "cancelled"
    body: Any = None
    reason: str = ""


class Counters:
    """Requests sent and retries, counted across worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.retries = 0

    def count(self, retry: bool) -> None:
        with self.lock:
            self.sent += 1
            if retry:
                self.retries += 1


def age_seconds(path: Path, now: float) -> float | None:
    written = storage.mtime(path)
    return None if written is None else now - written


def remove_stale_temp_files(cache_dir: Path, now: float) -> None:
    """Temp files of a run killed mid-write (another live run's recent ones are left alone). An
    object store has none: an object appears whole or not at all."""
    if storage.is_remote(cache_dir):
        return
    for folder in (cache_dir, cache_dir / NOT_FOUND_DIR):
        for tmp in folder.glob(".*.tmp"):
            age = age_seconds(tmp, now)
            if age is not None and age > _STALE_TEMP_SECONDS:
                tmp.unlink(missing_ok=True)
