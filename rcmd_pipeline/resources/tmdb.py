"""TMDB movie details (``/3/movie/{id}``, Korean by default): a live HTTP client and a snapshot reader.

Both implement :class:`TmdbClient`, whose one method ``fetch_details(items, cache_dir, log)`` turns
``(movieId, tmdbId)`` pairs into flat records (:func:`parse_movie_details`) plus a
:class:`FetchReport`. Which one runs is decided by :func:`tmdb_client_from_environment`: the HTTP
client when ``TMDB_READ_ACCESS_TOKEN`` or ``TMDB_API_KEY`` is set, else the JSON snapshot files
committed with the demo data, so the pipeline works without keys or network.

Why the HTTP client looks the way it does (MovieLens 32M links about 87,000 TMDB ids, i.e. about
40 minutes at TMDB's rate limit, so a run must survive being killed and must be polite):

* **Cache and resume.** Every body that parses is written to ``<cache_dir>/<tmdbId>.json`` the
  moment it arrives, byte for byte as TMDB sent it, via :func:`atomic_write` (temp file +
  ``os.replace``): a killed run leaves only complete files, and the next run serves them
  (``from_cache``) and asks TMDB only for the rest. The **fetch time is the file's mtime** (set by
  that write; no sidecar that could disagree with the body). Copy a cache with ``cp -p``/``rsync
  -a`` to keep it. Because the files are plain TMDB bodies, a cache folder is also a valid
  :class:`SnapshotTmdbClient` folder. One cache folder holds one language: pass a folder per
  language. ``cache_dir`` may be an object-store prefix (``s3://...``, ``rcmd_pipeline.storage``):
  each body is then one object written in one PUT, and the fetch time is its LastModified.
* **Refresh.** ``max_age_days`` re-fetches cached bodies older than that (the nightly refresh); if
  the refresh fails for a transient reason the old body is still served (counted in ``from_cache``
  and ``stale``), so a TMDB hiccup never drops a movie from the catalogue.
* **404 means gone.** It is never retried; it is remembered as an empty marker file
  ``<cache_dir>/not_found/<tmdbId>`` (mtime = when) so later runs do not ask again until
  ``retry_not_found_after_days`` have passed. A 404 on refresh deletes the cached body.
* **Rate.** All worker threads (``max_concurrency``) draw from ONE token bucket (GCRA: smooth,
  ``requests_per_second`` on average, a burst of at most a tenth of a second's worth). Retries draw
  tokens too. A 429 holds the whole bucket (not just the one thread) for ``Retry-After`` seconds.
* **Retries.** 429, 5xx, timeouts and connection errors (including a server that drops the
  connection without answering) are retried up to ``max_retries`` times with exponential backoff
  and full jitter (``uniform(0, min(backoff_max, backoff_base * 2**attempt))``; a ``Retry-After``
  is honoured instead, capped by ``backoff_max_seconds``). Then the movie is recorded as failed and
  the next run tries again. A 200 whose body is not JSON or not a valid movie is failed at once
  (asking again would get the same answer); it is not cached.
* **Wrong credential** (401, or 403 with TMDB's invalid-key body) stops everything at once: pending
  work is cancelled and :class:`TmdbAuthError` names the environment variable to check.
* **Secrets.** The read access token goes in an ``Authorization: Bearer`` header. TMDB v3 accepts a
  bare API key only as the ``api_key`` query parameter, so with only a key it must be in the URL;
  it is therefore kept out of everything this module emits: log lines show paths without query
  strings, exception texts from ``requests`` (which quote the URL) are redacted before they are
  recorded or raised, urllib3's debug log line is redacted by a filter, and both secret fields
  are excluded from ``repr``. Build the client with ``EnvVar`` (as
  :func:`tmdb_client_from_environment` does) so Dagster stores and displays the variable's name,
  not its value.
"""

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from dagster import ConfigurableResource
from pydantic import Field

from rcmd_pipeline import storage
from rcmd_pipeline.resources.secrets import env_value, redact, secret_value
from rcmd_pipeline.storage import atomic_write

API_KEY_ENV = "TMDB_API_KEY"
READ_ACCESS_TOKEN_ENV = "TMDB_READ_ACCESS_TOKEN"
BASE_URL_ENV = "TMDB_BASE_URL"
REQUESTS_PER_SECOND_ENV = "TMDB_REQUESTS_PER_SECOND"
MAX_AGE_DAYS_ENV = "TMDB_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 30.0

NOT_FOUND_DIR = "not_found"
REJECTED_DIR = "rejected"

# TMDB's error body codes that mean "this credential is not accepted" (3: authentication failed,
# 7: invalid API key, 10: suspended API key, 14: authentication failed).
_TMDB_AUTH_STATUS_CODES = {3, 7, 10, 14}
_PROGRESS_EVERY_SECONDS = 10.0
_LOGGED_FAILURES = 10
_STALE_TEMP_SECONDS = 3600.0
_API_KEY_IN_TEXT = re.compile(r"(api_key=)[^&\s'\"<>]+", re.IGNORECASE)
_DAY = 86400.0


class TmdbError(Exception):
    """A TMDB problem the caller should see (bad setting, unreadable snapshot folder, ...)."""


class TmdbAuthError(TmdbError):
    """TMDB rejected the credential; the message names the variable to check, never its value.

    ``report`` holds the partial :class:`FetchReport` of the stopped fetch (what was cached
    before the rejection stays cached).
    """

    def __init__(self, message: str, report: "FetchReport | None" = None):
        super().__init__(message)
        self.report = report


class TmdbRecordError(TmdbError):
    """A TMDB movie body lacks a required field or has a field of the wrong type.

    ``problem`` is the message without the movie prefix, ``field`` the offending key.
    """

    def __init__(self, movie_id: int, tmdb_id: int | None, field_name: str, problem: str):
        where = f"movieId {movie_id}" + (f" (tmdbId {tmdb_id})" if tmdb_id is not None else "")
        super().__init__(f"TMDB details for {where}: {problem}")
        self.movie_id = movie_id
        self.tmdb_id = tmdb_id
        self.field = field_name
        self.problem = problem


# --------------------------------------------------------------------------- parsing


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_movie_details(movie_id: int, body) -> dict:
    """Validate one TMDB ``/3/movie/{id}`` body and flatten it into a catalogue record.

    Required: ``id`` (positive integer) and ``title`` (non-empty string). Every other field is
    optional: missing or ``null`` strings become ``''``, ``release_date``/``runtime`` become
    ``None`` (TMDB writes ``""`` and ``0`` for "unknown", which map to ``None`` too), a missing or
    ``null`` ``belongs_to_collection`` means "no series" (``collection_id`` 0, name ``''``).
    A present field of the wrong type raises :class:`TmdbRecordError` naming the movie and field,
    because a body that contradicts TMDB's schema is more likely an error page than a movie.
    """
    if not isinstance(body, dict):
        raise TmdbRecordError(movie_id, None, "(body)", f"expected a JSON object, got {type(body).__name__}")
    tmdb_id = body.get("id")
    if "id" not in body or tmdb_id is None:
        raise TmdbRecordError(movie_id, None, "id", "required field 'id' is missing")
    if isinstance(tmdb_id, bool) or not isinstance(tmdb_id, int) or tmdb_id < 1:
        raise TmdbRecordError(movie_id, None, "id", f"field 'id' must be a positive integer, got {_show(tmdb_id)}")

    def fail(name: str, problem: str):
        raise TmdbRecordError(movie_id, tmdb_id, name, problem)

    def text(name: str, required: bool = False) -> str:
        value = body.get(name)
        if value is None:
            if required:
                fail(name, f"required field {name!r} is missing")
            return ""
        if not isinstance(value, str):
            fail(name, f"field {name!r} must be a string, got {type(value).__name__} {_show(value)}")
        if required and not value.strip():
            fail(name, f"required field {name!r} is empty")
        return value

    title = text("title", required=True)

    release_date = text("release_date").strip() or None
    if release_date is not None:
        try:
            date.fromisoformat(release_date)
        except ValueError:
            fail("release_date", f"field 'release_date' must be 'YYYY-MM-DD' or empty, got {_show(release_date)}")
        if len(release_date) != 10:
            fail("release_date", f"field 'release_date' must be 'YYYY-MM-DD' or empty, got {_show(release_date)}")

    runtime = body.get("runtime")
    if runtime is not None:
        if isinstance(runtime, float) and runtime.is_integer():
            runtime = int(runtime)
        if isinstance(runtime, bool) or not isinstance(runtime, int) or runtime < 0:
            fail("runtime", f"field 'runtime' must be a whole number of minutes, got {_show(runtime)}")
        runtime = runtime or None

    adult = body.get("adult")
    if adult is None:
        adult = False
    elif not isinstance(adult, bool):
        fail("adult", f"field 'adult' must be true or false, got {_show(adult)}")

    collection = body.get("belongs_to_collection")
    collection_id, collection_name = 0, ""
    if collection is not None:
        if not isinstance(collection, dict):
            fail("belongs_to_collection",
                 f"field 'belongs_to_collection' must be null or an object, got {_show(collection)}")
        cid = collection.get("id")
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
            fail("belongs_to_collection.id",
                 f"field 'belongs_to_collection.id' must be a positive integer, got {_show(cid)}")
        cname = collection.get("name")
        if cname is not None and not isinstance(cname, str):
            fail("belongs_to_collection.name",
                 f"field 'belongs_to_collection.name' must be a string, got {_show(cname)}")
        collection_id, collection_name = cid, cname or ""

    genres = body.get("genres")
    names: list[str] = []
    if genres is not None:
        if not isinstance(genres, list):
            fail("genres", f"field 'genres' must be a list of {{id, name}} objects, got {_show(genres)}")
        for genre in genres:
            name = genre.get("name") if isinstance(genre, dict) else None
            if not isinstance(name, str):
                fail("genres", f"field 'genres' must hold {{id, name}} objects with a string name, "
                               f"got {_show(genre)}")
            names.append(name)

    return {
        "movieId": int(movie_id),
        "tmdbId": tmdb_id,
        "title": title,
        "original_title": text("original_title"),
        "original_language": text("original_language"),
        "overview": text("overview"),
        "tagline": text("tagline"),
        "release_date": release_date,
        "runtime": runtime,
        "imdb_id": text("imdb_id"),
        "adult": adult,
        "poster_path": text("poster_path"),
        "collection_id": collection_id,
        "collection_name": collection_name,
        "genres": "|".join(names),
    }


# --------------------------------------------------------------------------- report and interface


@dataclass
class FetchReport:
    """What one ``fetch_details`` call did.

    ``requested == from_cache + fetched + not_found + len(failed)`` (counted per distinct
    movieId). ``not_found`` includes 404s remembered from earlier runs; ``stale`` counts cached
    records served because their refresh failed (they are part of ``from_cache``).
    ``requests_sent`` counts every HTTP request actually sent, retries included; ``seconds`` is the
    wall time of the whole call.
    """

    requested: int = 0
    from_cache: int = 0
    fetched: int = 0
    not_found: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    requests_sent: int = 0
    retries: int = 0
    stale: int = 0

    @property
    def requests_per_second(self) -> float:
        return self.requests_sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.requested} requested: {self.from_cache} from cache"
            + (f" ({self.stale} stale)" if self.stale else "")
            + f", {self.fetched} fetched, {self.not_found} not found, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s ({self.requests_sent} requests, {self.retries} retries, "
            f"{self.requests_per_second:.1f} req/s)"
        )


class TmdbClient(ConfigurableResource, ABC):
    """Movie details from TMDB (``/3/movie/{id}``), one flat record per MovieLens movie."""

    @abstractmethod
    def fetch_details(
        self, items: list[tuple[int, int]], cache_dir: str | Path, log=None
    ) -> tuple[dict[int, dict], FetchReport]:
        """Details for ``(movieId, tmdbId)`` pairs: ``{movieId: parse_movie_details record}``.

        Movies TMDB does not know, and movies that failed, are absent from the dict and counted in
        the report (failed ones with a reason). ``log`` (a ``logging.Logger``-like object, e.g.
        ``context.log``) receives progress lines.
        """


def _group_items(items) -> tuple[dict[int, int], dict[int, list[int]]]:
    """movieId -> tmdbId and tmdbId -> [movieId] (MovieLens links a few TMDB ids twice)."""
    by_movie: dict[int, int] = {}
    for n, item in enumerate(items):
        try:
            movie_id, tmdb_id = item
            movie_i, tmdb_i = int(movie_id), int(tmdb_id)
            ok = movie_i == movie_id and tmdb_i == tmdb_id and tmdb_i > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"items[{n}] = {_show(item)}: expected a (movieId, tmdbId) pair of integers, "
                             "tmdbId positive (drop movies without a tmdbId before fetching)")
        if by_movie.get(movie_i, tmdb_i) != tmdb_i:
            raise ValueError(f"movieId {movie_i} is listed with two tmdbIds ({by_movie[movie_i]} and {tmdb_i})")
        by_movie[movie_i] = tmdb_i
    by_tmdb: dict[int, list[int]] = {}
    for movie_i, tmdb_i in by_movie.items():
        by_tmdb.setdefault(tmdb_i, []).append(movie_i)
    return by_movie, by_tmdb


def _failure(movie_id: int, tmdb_id: int, reason: str) -> tuple[int, str]:
    return movie_id, f"movieId {movie_id} (tmdbId {tmdb_id}): {reason}"


def _checked_record(movie_id: int, tmdb_id: int, body) -> dict:
    """:func:`parse_movie_details`, plus: the body must be the movie that was asked for."""
    record = parse_movie_details(movie_id, body)
    if record["tmdbId"] != tmdb_id:
        raise TmdbRecordError(movie_id, tmdb_id, "id", f"body has id {record['tmdbId']}, expected {tmdb_id}")
    return record


def _records_from_body(body, tmdb_id: int, movie_ids: list[int], records: dict, report: FetchReport,
                       counter: str) -> bool:
    """Parse ``body`` for each movie; count successes in ``report.<counter>``, failures in ``failed``."""
    ok = True
    for movie_id in movie_ids:
        try:
            records[movie_id] = _checked_record(movie_id, tmdb_id, body)
        except TmdbRecordError as exc:
            report.failed.append((movie_id, str(exc)))
            ok = False
            continue
        setattr(report, counter, getattr(report, counter) + 1)
    return ok


# --------------------------------------------------------------------------- snapshot


class SnapshotTmdbClient(TmdbClient):
    """TMDB bodies read from ``<snapshot_dir>/<tmdbId>.json`` (the demo data, or a copied cache).

    A missing file means the movie is not on TMDB (``not_found``); an unreadable or invalid file is
    ``failed`` with the movie id. ``cache_dir`` is not used: the files are the cache.
    """

    snapshot_dir: str = Field(description="Folder of TMDB-shaped JSON bodies named <tmdbId>.json.")

    def fingerprint(self) -> str:
        """A hash of the snapshot folder's listing (each file's name, size and modification time):
        it changes when any file is added, removed or rewritten. About 0.3 s for 84,000 files."""
        digest = hashlib.sha256()
        with os.scandir(self.snapshot_dir) as entries:
            listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                             if e.name.endswith(".json") and e.is_file())
        for name, size, mtime in listing:
            digest.update(f"{name}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()[:24]

    def fetch_details(
        self, items: list[tuple[int, int]], cache_dir: str | Path, log=None
    ) -> tuple[dict[int, dict], FetchReport]:
        started = time.monotonic()
        folder = Path(self.snapshot_dir)
        if not folder.is_dir():
            raise TmdbError(
                f"TMDB snapshot folder {folder} does not exist; expected <tmdbId>.json files (TMDB "
                f"/3/movie bodies). Set {READ_ACCESS_TOKEN_ENV} or {API_KEY_ENV} to fetch from TMDB instead."
            )
        by_movie, by_tmdb = _group_items(items)
        report = FetchReport(requested=len(by_movie))
        records: dict[int, dict] = {}
        for tmdb_id, movie_ids in by_tmdb.items():
            path = folder / f"{tmdb_id}.json"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                report.not_found += len(movie_ids)
                continue
            except OSError as exc:
                report.failed.extend(_failure(m, tmdb_id, f"cannot read {path}: {exc}") for m in movie_ids)
                continue
            try:
                body = json.loads(raw)
            except ValueError as exc:
                report.failed.extend(_failure(m, tmdb_id, f"{path} is not valid JSON ({exc})") for m in movie_ids)
                continue
            _records_from_body(body, tmdb_id, movie_ids, records, report, "fetched")
        report.seconds = time.monotonic() - started
        if log is not None:
            log.info(f"TMDB snapshot {folder}: {report.summary()}")
            for _, reason in report.failed[:_LOGGED_FAILURES]:
                log.warning(f"TMDB snapshot: {reason}")
        return records, report


# --------------------------------------------------------------------------- HTTP machinery


class _TokenBucket:
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


def _install_log_redaction() -> None:
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    return _API_KEY_IN_TEXT.sub(r"\1***", redact(text, secrets))


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _tmdb_error_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class _AuthRejected(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


@dataclass
class _Outcome:
    tmdb_id: int
    kind: str  # "fetched" | "not_found" | "failed" | "cancelled"
    body: Any = None
    reason: str = ""


class _Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.retries = 0


def _age_seconds(path: Path, now: float) -> float | None:
    written = storage.mtime(path)
    return None if written is None else now - written


def _remove_stale_temp_files(cache_dir: Path, now: float) -> None:
    """Temp files of a run killed mid-write (another live run's recent ones are left alone). An
    object store has none: an object appears whole or not at all."""
    if storage.is_remote(cache_dir):
        return
    for folder in (cache_dir, cache_dir / NOT_FOUND_DIR):
        for tmp in folder.glob(".*.tmp"):
            age = _age_seconds(tmp, now)
            if age is not None and age > _STALE_TEMP_SECONDS:
                tmp.unlink(missing_ok=True)


class HttpTmdbClient(TmdbClient):
    """TMDB's HTTP API (``GET {base_url}/3/movie/{id}?language=...``): rate-limited, retried, resumable.

    See the module docstring for the cache layout and the retry, rate and secret rules.
    """

    base_url: str = Field(default="https://api.themoviedb.org", description="TMDB API root (TMDB_BASE_URL).")
    api_key: str | None = Field(
        default=None, repr=False,
        description="TMDB v3 API key (TMDB_API_KEY), sent as the api_key query parameter when no "
                    "read access token is set. Pass EnvVar('TMDB_API_KEY').",
    )
    read_access_token: str | None = Field(
        default=None, repr=False,
        description="TMDB API read access token (TMDB_READ_ACCESS_TOKEN), sent as a Bearer token; "
                    "preferred over api_key. Pass EnvVar('TMDB_READ_ACCESS_TOKEN').",
    )
    language: str = Field(default="ko-KR", description="TMDB language of titles and overviews.")
    requests_per_second: float = Field(default=40.0, description="Average request rate over all threads.")
    max_concurrency: int = Field(default=16, description="Requests in flight at once.")
    max_retries: int = Field(default=6, description="Retries per movie on 429/5xx/timeouts/connection errors.")
    timeout_seconds: float = Field(default=10.0, description="Connect and read timeout per request.")
    backoff_base_seconds: float = Field(default=0.5, description="First retry waits up to this long.")
    backoff_max_seconds: float = Field(default=30.0, description="Longest wait before a retry (Retry-After too).")
    max_age_days: float | None = Field(
        default=None, description="Re-fetch cached bodies older than this (the nightly refresh); null: never."
    )
    retry_not_found_after_days: float = Field(
        default=30.0, description="Ask again about movies TMDB answered 404 for after this many days."
    )
    max_not_found_share: float = Field(
        default=0.5, description="When more than this share of the ids asked in one run (and more than 3) "
                                 "are answered 404, the 404s are not believed: nothing is forgotten, they count "
                                 "as failed (a wrong TMDB_BASE_URL or a proxy's error page, not TMDB)."
    )

    # ---- settings

    def _check_settings(self) -> None:
        problems = []
        if not self.requests_per_second > 0:
            problems.append(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            problems.append(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.timeout_seconds > 0:
            problems.append(f"timeout_seconds must be > 0, got {self.timeout_seconds}")
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < 0:
            problems.append("backoff_base_seconds and backoff_max_seconds must be >= 0")
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"base_url must start with http:// or https://, got {_redact(self.base_url, ())!r}")
        elif re.search(r"/3/*$", self.base_url):
            problems.append(f"base_url is the API root without the version (e.g. https://api.themoviedb.org; "
                            f"requests go to <base_url>/3/movie/<id>), got {_redact(self.base_url, ())!r}")
        if problems:
            raise TmdbError("HttpTmdbClient settings: " + "; ".join(problems) + ".")

    def _credential(self) -> tuple[dict[str, str], dict[str, str], str, tuple[str, ...]]:
        """(headers, query params, name of the env var in use, secrets to redact)."""
        token, key = secret_value(self.read_access_token) or None, secret_value(self.api_key) or None
        secrets = tuple(s for s in (token, key) if s)
        if token:
            return {"Authorization": f"Bearer {token}"}, {}, READ_ACCESS_TOKEN_ENV, secrets
        if key:
            _install_log_redaction()
            return {}, {"api_key": key}, API_KEY_ENV, secrets
        raise TmdbAuthError(
            f"HttpTmdbClient has no credential: set {READ_ACCESS_TOKEN_ENV} (preferred) or {API_KEY_ENV}, "
            "or leave both unset to read the JSON snapshot instead."
        )

    # ---- the fetch

    def fetch_details(
        self, items: list[tuple[int, int]], cache_dir: str | Path, log=None
    ) -> tuple[dict[int, dict], FetchReport]:
        started = time.monotonic()
        self._check_settings()
        headers, params, env_name, secrets = self._credential()
        by_movie, by_tmdb = _group_items(items)
        cache = storage.state_path(cache_dir)  # a local Path or an object-store UPath
        storage.folder(cache / NOT_FOUND_DIR)
        now = time.time()
        _remove_stale_temp_files(cache, now)
        report = FetchReport(requested=len(by_movie))
        records: dict[int, dict] = {}

        # 1. What the cache already answers.
        to_fetch: list[int] = []
        stale: set[int] = set()  # cached but too old: refreshed, and served again if the refresh fails
        known_not_found: set[int] = set()
        max_age = None if self.max_age_days is None else self.max_age_days * _DAY
        # on an object store: one listing for the write times, bodies fetched concurrently (storage.FolderReader)
        cached_bodies = storage.FolderReader(cache, [f"{tmdb_id}.json" for tmdb_id in by_tmdb])
        markers = storage.FolderReader(cache / NOT_FOUND_DIR)
        for tmdb_id, movie_ids in by_tmdb.items():
            body_path = cache / f"{tmdb_id}.json"
            written = cached_bodies.mtime(body_path.name)
            age = None if written is None else now - written
            if age is not None:
                try:
                    body = json.loads(cached_bodies.read(body_path.name))
                    for movie_id in movie_ids:  # validate before trusting the cache
                        _checked_record(movie_id, tmdb_id, body)
                except (OSError, ValueError, TmdbError) as exc:
                    if log is not None:
                        log.warning(f"TMDB cache: {body_path} is unusable ({_redact(str(exc), secrets)}); "
                                    "fetching it again")
                else:
                    if max_age is None or age <= max_age:
                        _records_from_body(body, tmdb_id, movie_ids, records, report, "from_cache")
                        continue
                    stale.add(tmdb_id)
            else:
                marked = markers.mtime(str(tmdb_id))
                marker_age = None if marked is None else now - marked
                if marker_age is not None:
                    known_not_found.add(tmdb_id)
                    if marker_age <= self.retry_not_found_after_days * _DAY:
                        report.not_found += len(movie_ids)
                        continue
            to_fetch.append(tmdb_id)

        url_root = self.base_url.rstrip("/")
        if log is not None:
            log.info(
                f"TMDB: {report.requested} movies, {report.from_cache} from cache, {report.not_found} known "
                f"not found; fetching {len(to_fetch)} TMDB ids from {_redact(url_root, secrets)}/3/movie/<id> "
                f"(language {self.language}) at <= {self.requests_per_second:g} req/s, "
                f"{self.max_concurrency} at a time"
            )

        # 2. The network part.
        burst = max(1, min(10, int(self.requests_per_second / 10)))
        bucket = _TokenBucket(self.requests_per_second, burst)
        cancel = threading.Event()
        counters = _Counters()
        local = threading.local()
        sessions: list[requests.Session] = []
        sessions_lock = threading.Lock()
        rng = random.Random()

        def session() -> requests.Session:
            s = getattr(local, "session", None)
            if s is None:
                s = requests.Session()
                s.headers.update({"Accept": "application/json", "User-Agent": "rcmd_pipeline", **headers})
                local.session = s
                with sessions_lock:
                    sessions.append(s)
            return s

        def work(tmdb_id: int) -> _Outcome:
            return self._fetch_one(tmdb_id, url_root, params, session, bucket, cancel, counters, rng, cache,
                                   secrets, by_tmdb[tmdb_id][0])

        logged_failures = 0
        answered_404: list[int] = []
        last_progress = time.monotonic()
        done = 0
        executor = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="tmdb")
        try:
            # A bounded window of submitted work: wait() costs O(len(pending)) per call, which with
            # all 87,000 ids submitted at once would make the loop quadratic.
            queue = iter(to_fetch)

            def refill(pending: set) -> set:
                for tmdb_id in queue:
                    pending.add(executor.submit(work, tmdb_id))
                    if len(pending) >= 4 * self.max_concurrency:
                        break
                return pending

            pending = refill(set())
            while pending:
                finished, pending = wait(pending, timeout=_PROGRESS_EVERY_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        outcome = future.result()
                    except _AuthRejected as exc:
                        cancel.set()
                        for other in pending:
                            other.cancel()
                        report.requests_sent, report.retries = counters.sent, counters.retries
                        report.seconds = time.monotonic() - started
                        how = ("sent as a Bearer token" if env_name == READ_ACCESS_TOKEN_ENV
                               else "sent as the api_key query parameter")
                        raise TmdbAuthError(
                            f"TMDB rejected the credential (HTTP {exc.status}"
                            + (f": {exc.detail}" if exc.detail else "")
                            + f"). Check {env_name} ({how}); "
                            f"{READ_ACCESS_TOKEN_ENV} is used when set, else {API_KEY_ENV}. "
                            "The fetch was stopped; everything fetched before is cached.",
                            report,
                        ) from None
                    done += 1
                    logged_failures += self._account(outcome, by_tmdb[outcome.tmdb_id], records, report,
                                                     cache, stale, known_not_found, log, logged_failures,
                                                     answered_404)
                pending = refill(pending)
                if log is not None and time.monotonic() - last_progress >= _PROGRESS_EVERY_SECONDS:
                    last_progress = time.monotonic()
                    elapsed = last_progress - started
                    log.info(f"TMDB: {done}/{len(to_fetch)} TMDB ids done, {counters.sent} requests "
                             f"({counters.retries} retries), {counters.sent / elapsed:.1f} req/s")
        finally:
            cancel.set()
            executor.shutdown(wait=True, cancel_futures=True)
            for s in sessions:
                s.close()

        believable = len(answered_404) <= max(3, self.max_not_found_share * len(to_fetch))
        for tmdb_id in answered_404:
            movie_ids = by_tmdb[tmdb_id]
            if believable:
                atomic_write(cache / NOT_FOUND_DIR / str(tmdb_id), lambda p: p.write_bytes(b""))
                storage.remove(cache / f"{tmdb_id}.json")
                report.not_found += len(movie_ids)
            elif (body := self._stale_body(cache, tmdb_id, stale)) is not None:
                if _records_from_body(body, tmdb_id, movie_ids, records, report, "from_cache"):
                    report.stale += len(movie_ids)
            elif tmdb_id in known_not_found:
                report.not_found += len(movie_ids)  # last known answer stands
            else:
                report.failed.extend(_failure(m, tmdb_id, f"HTTP 404, not believed: {len(answered_404)} of "
                                              f"{len(to_fetch)} ids asked were answered 404 (check "
                                              f"{BASE_URL_ENV})") for m in movie_ids)
        if answered_404 and not believable and log is not None:
            log.warning(f"TMDB: {len(answered_404)} of {len(to_fetch)} ids asked were answered 404: not believed, "
                        f"nothing was forgotten (is {BASE_URL_ENV} the API root, {_redact(url_root, secrets)}?)")
        report.requests_sent, report.retries = counters.sent, counters.retries
        report.seconds = time.monotonic() - started
        if log is not None:
            if len(report.failed) > logged_failures:
                log.warning(f"TMDB: {len(report.failed) - logged_failures} more failures not logged one by one "
                            "(see FetchReport.failed); the next run retries them")
            log.info(f"TMDB: {report.summary()}")
        return records, report

    def _account(self, outcome: _Outcome, movie_ids: list[int], records: dict, report: FetchReport,
                 cache: Path, stale: set, known_not_found: set, log, logged: int, answered_404: list) -> int:
        """Fold one worker outcome into records and report; returns failures logged now."""
        tmdb_id = outcome.tmdb_id
        before = len(report.failed)
        if outcome.kind == "fetched":
            _records_from_body(outcome.body, tmdb_id, movie_ids, records, report, "fetched")
        elif outcome.kind == "not_found":
            answered_404.append(tmdb_id)
        elif outcome.kind == "failed" and (body := self._stale_body(cache, tmdb_id, stale)) is not None:
            if _records_from_body(body, tmdb_id, movie_ids, records, report, "from_cache"):
                report.stale += len(movie_ids)
            if log is not None:
                log.warning(f"TMDB: refreshing tmdbId {tmdb_id} failed ({outcome.reason}); serving the cached body")
        elif outcome.kind == "failed" and tmdb_id in known_not_found:
            report.not_found += len(movie_ids)  # last known answer stands
        else:  # failed, or cancelled (only reachable on interruption)
            report.failed.extend(_failure(m, tmdb_id, outcome.reason or "cancelled") for m in movie_ids)
        new = report.failed[before:]
        shown = 0
        if log is not None:
            for _, reason in new:
                if logged + shown < _LOGGED_FAILURES:
                    log.warning(f"TMDB: {reason}")
                    shown += 1
        return shown

    @staticmethod
    def _stale_body(cache: Path, tmdb_id: int, stale: set):
        """The old body of a movie whose refresh failed. Re-read rather than kept in memory (a full
        refresh would otherwise hold every body); the file was neither replaced nor removed."""
        if tmdb_id not in stale:
            return None
        try:
            return json.loads((cache / f"{tmdb_id}.json").read_bytes())
        except (OSError, ValueError):
            return None

    def _fetch_one(self, tmdb_id: int, url_root: str, params: dict, session, bucket: _TokenBucket,
                   cancel: threading.Event, counters: _Counters, rng: random.Random, cache: Path,
                   secrets: tuple[str, ...], first_movie_id: int) -> _Outcome:
        """One movie, retried as the rules say. Runs in a worker thread; never raises except _AuthRejected."""
        url = f"{url_root}/3/movie/{tmdb_id}"
        query = {"language": self.language, **params}
        last = ""
        for attempt in range(self.max_retries + 1):
            if not bucket.acquire(cancel):
                return _Outcome(tmdb_id, "cancelled", reason=f"cancelled ({last or 'not sent'})")
            with counters.lock:
                counters.sent += 1
                if attempt:
                    counters.retries += 1
            retry_after = None
            try:
                response = session().get(url, params=query, timeout=(self.timeout_seconds, self.timeout_seconds))
                content = response.content
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                last = f"{type(exc).__name__}: {_redact(str(exc), secrets)}"
            except requests.RequestException as exc:
                return _Outcome(tmdb_id, "failed", reason=f"request error {type(exc).__name__}: "
                                                          f"{_redact(str(exc), secrets)}")
            else:
                status = response.status_code
                if status == 200:
                    return self._accept_body(tmdb_id, content, cache, first_movie_id, secrets)
                if status == 404:  # remembered (or not) by fetch_details once every answer is in
                    return _Outcome(tmdb_id, "not_found")
                error = _tmdb_error_body(response)
                detail = _redact(str(error.get("status_message") or "")[:200], secrets)
                if status == 401 or (status == 403 and (error.get("status_code") in _TMDB_AUTH_STATUS_CODES
                                                        or "api key" in detail.lower())):
                    cancel.set()
                    raise _AuthRejected(status, detail)
                last = f"HTTP {status}" + (f" ({detail})" if detail else "")
                if status == 429 or status >= 500:
                    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    return _Outcome(tmdb_id, "failed", reason=f"{last}, not retried")
            if attempt == self.max_retries:
                break
            if retry_after is not None:
                delay = min(self.backoff_max_seconds, retry_after)
            else:
                delay = rng.uniform(0.0, min(self.backoff_max_seconds, self.backoff_base_seconds * 2**attempt))
            if last.startswith("HTTP 429"):
                bucket.hold(delay)
            if delay > 0 and cancel.wait(delay):
                return _Outcome(tmdb_id, "cancelled", reason=f"cancelled ({last})")
        return _Outcome(tmdb_id, "failed", reason=f"gave up after {self.max_retries + 1} attempts; last: {last}")

    def _accept_body(self, tmdb_id: int, content: bytes, cache: Path, first_movie_id: int,
                     secrets: tuple[str, ...]) -> _Outcome:
        """Validate a 200 body; cache it (as received) only when it is a usable movie."""
        problem = None
        try:
            body = json.loads(content)
        except ValueError as exc:
            body, problem = None, f"HTTP 200 body is not JSON ({exc}; starts {content[:40]!r})"
        else:
            try:
                _checked_record(first_movie_id, tmdb_id, body)
            except TmdbRecordError as exc:
                problem = f"HTTP 200 body rejected: {exc.problem}"
        if problem is not None:
            # Kept for diagnosis only; never served. The next run asks TMDB again.
            atomic_write(cache / REJECTED_DIR / f"{tmdb_id}.body", lambda p: p.write_bytes(content))
            return _Outcome(tmdb_id, "failed", reason=_redact(problem, secrets) + ", not retried")
        atomic_write(cache / f"{tmdb_id}.json", lambda p: p.write_bytes(content))
        storage.remove(cache / NOT_FOUND_DIR / str(tmdb_id))
        storage.remove(cache / REJECTED_DIR / f"{tmdb_id}.body")
        return _Outcome(tmdb_id, "fetched", body=body)


# --------------------------------------------------------------------------- choosing from the environment


def _positive_number(environ: Mapping[str, str], name: str, expected: str,
                     default: float | None = None) -> float | None:
    """The variable as a number > 0, ``default`` when unset or blank, a clear error otherwise."""
    text = (environ.get(name) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise TmdbError(f"{name}={text!r}: expected {expected}") from None
    if not value > 0:
        raise TmdbError(f"{name}={text!r}: must be greater than 0")
    return value


def tmdb_client_from_environment(environ: Mapping[str, str], snapshot_dir: str | Path) -> TmdbClient:
    """The HTTP client when ``TMDB_READ_ACCESS_TOKEN`` or ``TMDB_API_KEY`` is set, else the snapshot.

    ``TMDB_BASE_URL`` overrides the API root, ``TMDB_REQUESTS_PER_SECOND`` the rate,
    ``TMDB_MAX_AGE_DAYS`` (default 30) how old a cached record may get before a run re-fetches it:
    the nightly run thus refreshes about a thirtieth of the catalogue each night. A variable that
    is set but blank counts as unset (Dagster's ``EnvVar`` would fail a run on an unset variable,
    so it is only used for variables that are set).
    """
    token = (environ.get(READ_ACCESS_TOKEN_ENV) or "").strip()
    key = (environ.get(API_KEY_ENV) or "").strip()
    if not token and not key:
        return SnapshotTmdbClient(snapshot_dir=str(snapshot_dir))
    kwargs: dict[str, Any] = {}
    if token:
        kwargs["read_access_token"] = env_value(environ, READ_ACCESS_TOKEN_ENV)
    if key:
        kwargs["api_key"] = env_value(environ, API_KEY_ENV)
    base_url = (environ.get(BASE_URL_ENV) or "").strip()
    if base_url:
        kwargs["base_url"] = base_url
    kwargs["max_age_days"] = _positive_number(environ, MAX_AGE_DAYS_ENV, "a number of days (e.g. 30)",
                                              DEFAULT_MAX_AGE_DAYS)
    rate = _positive_number(environ, REQUESTS_PER_SECOND_ENV, "a number of requests per second (e.g. 40)")
    if rate is not None:
        kwargs["requests_per_second"] = rate
    return HttpTmdbClient(**kwargs)
