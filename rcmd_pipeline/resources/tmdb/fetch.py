"""One ``HttpTmdbClient.fetch_details`` call: what the cache answers, the worker threads that ask
TMDB for the rest, and how their answers become records and a :class:`FetchReport`.

The rules (cache and resume, refresh, 404s, rate, retries, wrong credential, secrets) are in
``docs/tmdb_client.md``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, NamedTuple

import requests

from rcmd_pipeline import storage
from rcmd_pipeline.lib.http_retry import retry_after_seconds, retry_delay
from rcmd_pipeline.resources.tmdb.client import (
    API_KEY_ENV,
    BASE_URL_ENV,
    LOGGED_FAILURES,
    READ_ACCESS_TOKEN_ENV,
    FetchReport,
    failure,
    group_items,
    records_from_body,
)
from rcmd_pipeline.resources.tmdb.errors import TmdbAuthError, TmdbError, TmdbRecordError
from rcmd_pipeline.resources.tmdb.http_support import (
    NOT_FOUND_DIR,
    REJECTED_DIR,
    TMDB_AUTH_STATUS_CODES,
    AuthRejected,
    Counters,
    Outcome,
    TokenBucket,
    redact_key,
    remove_stale_temp_files,
    tmdb_error_body,
)
from rcmd_pipeline.resources.tmdb.parsing import checked_record
from rcmd_pipeline.storage import atomic_write

if TYPE_CHECKING:
    from rcmd_pipeline.resources.tmdb.http_client import HttpTmdbClient

_PROGRESS_EVERY_SECONDS = 10.0
_DAY = 86400.0
_RETRYABLE_ERRORS = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                     requests.exceptions.ContentDecodingError)


class _Retry(NamedTuple):
    """An attempt that may be repeated: what went wrong, and the server's ``Retry-After``."""

    reason: str
    retry_after: float | None = None


class Fetch:
    """The state of one fetch: settings, credential, cache, shared rate limit, records and report.

    Run in this order: :meth:`read_cache`, :meth:`ask_tmdb`, :meth:`settle_not_found`, :meth:`finish`.
    """

    def __init__(self, client: HttpTmdbClient, items, cache_dir, log):
        self.started = time.monotonic()
        client.check_settings()
        self.headers, self.params, self.env_name, self.secrets = client.credential()
        self.client, self.log = client, log
        by_movie, self.by_tmdb = group_items(items)
        self.cache = storage.state_path(cache_dir)  # a local Path or an object-store UPath
        storage.folder(self.cache / NOT_FOUND_DIR)
        self.now = time.time()
        remove_stale_temp_files(self.cache, self.now)
        self.report = FetchReport(requested=len(by_movie))
        self.records: dict[int, dict] = {}
        self.to_fetch: list[int] = []
        self.stale: set[int] = set()  # cached but too old: refreshed, and served again if the refresh fails
        self.known_not_found: set[int] = set()
        self.answered_404: list[int] = []
        self.logged_failures = 0
        self.url_root = client.base_url.rstrip("/")
        burst = max(1, min(10, int(client.requests_per_second / 10)))
        self.bucket = TokenBucket(client.requests_per_second, burst)
        self.cancel = threading.Event()
        self.counters = Counters()
        self.rng = random.Random()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def redact(self, text: str) -> str:
        return redact_key(text, self.secrets)

    # ---- 1. what the cache already answers

    def read_cache(self) -> None:
        """Serve fresh cached bodies and recent 404 markers; list the rest in ``to_fetch``."""
        max_age = None if self.client.max_age_days is None else self.client.max_age_days * _DAY
        # on an object store: one listing for the write times, bodies fetched concurrently (storage.FolderReader)
        bodies = storage.FolderReader(self.cache, [f"{tmdb_id}.json" for tmdb_id in self.by_tmdb])
        markers = storage.FolderReader(self.cache / NOT_FOUND_DIR)
        for tmdb_id, movie_ids in self.by_tmdb.items():
            if not self._answered_from_cache(tmdb_id, movie_ids, bodies, markers, max_age):
                self.to_fetch.append(tmdb_id)

    def _answered_from_cache(self, tmdb_id: int, movie_ids: list[int], bodies: storage.FolderReader,
                             markers: storage.FolderReader, max_age: float | None) -> bool:
        name = f"{tmdb_id}.json"
        written = bodies.mtime(name)
        if written is not None:
            try:
                body = json.loads(bodies.read(name))
                for movie_id in movie_ids:  # validate before trusting the cache
                    checked_record(movie_id, tmdb_id, body)
            except (OSError, ValueError, TmdbError) as exc:
                if self.log is not None:
                    self.log.warning(f"TMDB cache: {self.cache / name} is unusable ({self.redact(str(exc))}); "
                                     "fetching it again")
                return False
            if max_age is None or self.now - written <= max_age:
                records_from_body(body, tmdb_id, movie_ids, self.records, self.report, "from_cache")
                return True
            self.stale.add(tmdb_id)
            return False
        marked = markers.mtime(str(tmdb_id))
        if marked is None:
            return False
        self.known_not_found.add(tmdb_id)
        if self.now - marked <= self.client.retry_not_found_after_days * _DAY:
            self.report.not_found += len(movie_ids)
            return True
        return False

    # ---- 2. the network part

    def ask_tmdb(self) -> None:
        """Fetch ``to_fetch`` with ``max_concurrency`` worker threads; fold each outcome in as it arrives."""
        client, log = self.client, self.log
        if log is not None:
            log.info(
                f"TMDB: {self.report.requested} movies, {self.report.from_cache} from cache, "
                f"{self.report.not_found} known not found; fetching {len(self.to_fetch)} TMDB ids from "
                f"{self.redact(self.url_root)}/3/movie/<id> (language {client.language}) at "
                f"<= {client.requests_per_second:g} req/s, {client.max_concurrency} at a time"
            )
        last_progress = time.monotonic()
        done = 0
        executor = ThreadPoolExecutor(max_workers=client.max_concurrency, thread_name_prefix="tmdb")
        try:
            queue = iter(self.to_fetch)
            pending = self._refill(executor, queue, set())
            while pending:
                finished, pending = wait(pending, timeout=_PROGRESS_EVERY_SECONDS, return_when=FIRST_COMPLETED)
                rejected = None
                for future in finished:  # every finished fetch is counted, also one beside a 401
                    try:
                        outcome = future.result()
                    except AuthRejected as exc:
                        rejected = rejected or exc
                        continue
                    done += 1
                    self.account(outcome)
                if rejected is not None:
                    self._stop(pending)
                    raise self._auth_error(rejected) from None
                pending = self._refill(executor, queue, pending)
                if log is not None and time.monotonic() - last_progress >= _PROGRESS_EVERY_SECONDS:
                    last_progress = time.monotonic()
                    elapsed = last_progress - self.started
                    log.info(f"TMDB: {done}/{len(self.to_fetch)} TMDB ids done, {self.counters.sent} requests "
                             f"({self.counters.retries} retries), {self.counters.sent / elapsed:.1f} req/s")
        finally:
            self.cancel.set()
            executor.shutdown(wait=True, cancel_futures=True)
            for session in self._sessions:
                session.close()

    def _refill(self, executor: ThreadPoolExecutor, queue, pending: set[Future]) -> set[Future]:
        """A bounded window of submitted work: wait() costs O(len(pending)) per call, which with
        all 87,000 ids submitted at once would make the loop quadratic."""
        for tmdb_id in queue:
            pending.add(executor.submit(self.fetch_one, tmdb_id))
            if len(pending) >= 4 * self.client.max_concurrency:
                break
        return pending

    def _stop(self, pending: set[Future]) -> None:
        """Cancel what has not started; a fetch already running ends (the cancel flag stops its retries)
        and is counted when it cached a body, so the report matches the cache."""
        self.cancel.set()
        for other in pending:
            other.cancel()
        for other in wait(pending).done:
            if not other.cancelled() and other.exception() is None and other.result().kind == "fetched":
                self.account(other.result())
        self._close_report()

    def _auth_error(self, exc: AuthRejected) -> TmdbAuthError:
        how = ("sent as a Bearer token" if self.env_name == READ_ACCESS_TOKEN_ENV
               else "sent as the api_key query parameter")
        return TmdbAuthError(
            f"TMDB rejected the credential (HTTP {exc.status}"
            + (f": {exc.detail}" if exc.detail else "")
            + f"). Check {self.env_name} ({how}); "
            f"{READ_ACCESS_TOKEN_ENV} is used when set, else {API_KEY_ENV}. "
            "The fetch was stopped; everything fetched before is cached.",
            self.report,
        )

    # ---- in a worker thread

    def session(self) -> requests.Session:
        """This thread's HTTP session (connections are kept per thread)."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers.update({"Accept": "application/json", "User-Agent": "rcmd_pipeline", **self.headers})
            self._local.session = s
            with self._sessions_lock:
                self._sessions.append(s)
        return s

    def fetch_one(self, tmdb_id: int) -> Outcome:
        """One movie, retried as the rules say. Runs in a worker thread; never raises except AuthRejected."""
        url = f"{self.url_root}/3/movie/{tmdb_id}"
        query = {"language": self.client.language, **self.params}
        max_retries = self.client.max_retries
        last = ""
        for attempt in range(max_retries + 1):
            if not self.bucket.acquire(self.cancel):
                return Outcome(tmdb_id, "cancelled", reason=f"cancelled ({last or 'not sent'})")
            self.counters.count(retry=attempt > 0)
            result = self._attempt(tmdb_id, url, query)
            if isinstance(result, Outcome):
                return result
            last = result.reason
            if attempt == max_retries:
                break
            if not self._wait_before_retry(attempt, result):
                return Outcome(tmdb_id, "cancelled", reason=f"cancelled ({last})")
        return Outcome(tmdb_id, "failed", reason=f"gave up after {max_retries + 1} attempts; last: {last}")

    def _attempt(self, tmdb_id: int, url: str, query: dict) -> Outcome | _Retry:
        """One request: a final outcome, or what to retry."""
        timeout = self.client.timeout_seconds
        try:
            response = self.session().get(url, params=query, timeout=(timeout, timeout))
            content = response.content
        except _RETRYABLE_ERRORS as exc:
            return _Retry(f"{type(exc).__name__}: {self.redact(str(exc))}")
        except requests.RequestException as exc:
            return Outcome(tmdb_id, "failed", reason=f"request error {type(exc).__name__}: {self.redact(str(exc))}")
        status = response.status_code
        if status == 200:
            return self.accept_body(tmdb_id, content)
        if status == 404:  # remembered (or not) by settle_not_found once every answer is in
            return Outcome(tmdb_id, "not_found")
        error = tmdb_error_body(response)
        detail = self.redact(str(error.get("status_message") or "")[:200])
        if status == 401 or (status == 403 and (error.get("status_code") in TMDB_AUTH_STATUS_CODES
                                                or "api key" in detail.lower())):
            self.cancel.set()
            raise AuthRejected(status, detail)
        last = f"HTTP {status}" + (f" ({detail})" if detail else "")
        if status == 429 or status >= 500:
            return _Retry(last, retry_after_seconds(response.headers))
        return Outcome(tmdb_id, "failed", reason=f"{last}, not retried")

    def _wait_before_retry(self, attempt: int, retry: _Retry) -> bool:
        """Back off (``Retry-After`` if given, else full jitter); ``False`` when cancelled meanwhile."""
        client = self.client
        delay = retry_delay(attempt, retry.retry_after, client.backoff_base_seconds, client.backoff_max_seconds,
                            self.rng)
        if retry.reason.startswith("HTTP 429"):
            self.bucket.hold(delay)
        return not (delay > 0 and self.cancel.wait(delay))

    def accept_body(self, tmdb_id: int, content: bytes) -> Outcome:
        """Validate a 200 body; cache it (as received) only when it is a usable movie."""
        problem = None
        try:
            body = json.loads(content)
        except ValueError as exc:
            body, problem = None, f"HTTP 200 body is not JSON ({exc}; starts {content[:40]!r})"
        else:
            try:
                checked_record(self.by_tmdb[tmdb_id][0], tmdb_id, body)
            except TmdbRecordError as exc:
                problem = f"HTTP 200 body rejected: {exc.problem}"
        cache = self.cache
        if problem is not None:
            # Kept for diagnosis only; never served. The next run asks TMDB again.
            atomic_write(cache / REJECTED_DIR / f"{tmdb_id}.body", lambda p: p.write_bytes(content))
            return Outcome(tmdb_id, "failed", reason=self.redact(problem) + ", not retried")
        atomic_write(cache / f"{tmdb_id}.json", lambda p: p.write_bytes(content))
        storage.remove(cache / NOT_FOUND_DIR / str(tmdb_id))
        storage.remove(cache / REJECTED_DIR / f"{tmdb_id}.body")
        return Outcome(tmdb_id, "fetched", body=body)

    # ---- back in the calling thread

    def account(self, outcome: Outcome) -> None:
        """Fold one worker outcome into records and report; log the first failures one by one."""
        tmdb_id, report, log = outcome.tmdb_id, self.report, self.log
        movie_ids = self.by_tmdb[tmdb_id]
        before = len(report.failed)
        if outcome.kind == "fetched":
            records_from_body(outcome.body, tmdb_id, movie_ids, self.records, report, "fetched")
        elif outcome.kind == "not_found":
            self.answered_404.append(tmdb_id)
        elif outcome.kind == "failed" and (body := self._stale_body(tmdb_id)) is not None:
            if records_from_body(body, tmdb_id, movie_ids, self.records, report, "from_cache"):
                report.stale += len(movie_ids)
            if log is not None:
                log.warning(f"TMDB: refreshing tmdbId {tmdb_id} failed ({outcome.reason}); serving the cached body")
        elif outcome.kind == "failed" and tmdb_id in self.known_not_found:
            report.not_found += len(movie_ids)  # last known answer stands
        else:  # failed, or cancelled (only reachable on interruption)
            report.failed.extend(failure(m, tmdb_id, outcome.reason or "cancelled") for m in movie_ids)
        if log is not None:
            for _, reason in report.failed[before:]:
                if self.logged_failures < LOGGED_FAILURES:
                    log.warning(f"TMDB: {reason}")
                    self.logged_failures += 1

    def _stale_body(self, tmdb_id: int):
        """The old body of a movie whose refresh failed. Re-read rather than kept in memory (a full
        refresh would otherwise hold every body); the file was neither replaced nor removed."""
        if tmdb_id not in self.stale:
            return None
        try:
            return json.loads((self.cache / f"{tmdb_id}.json").read_bytes())
        except (OSError, ValueError):
            return None

    # ---- 3. the 404s, once every answer is in

    def settle_not_found(self) -> None:
        """Remember the 404s, unless too many ids were answered 404 to believe (a wrong base URL)."""
        answered, asked, report = self.answered_404, len(self.to_fetch), self.report
        believable = len(answered) <= max(3, self.client.max_not_found_share * asked)
        for tmdb_id in answered:
            movie_ids = self.by_tmdb[tmdb_id]
            if believable:
                atomic_write(self.cache / NOT_FOUND_DIR / str(tmdb_id), lambda p: p.write_bytes(b""))
                storage.remove(self.cache / f"{tmdb_id}.json")
                report.not_found += len(movie_ids)
            elif (body := self._stale_body(tmdb_id)) is not None:
                if records_from_body(body, tmdb_id, movie_ids, self.records, report, "from_cache"):
                    report.stale += len(movie_ids)
            elif tmdb_id in self.known_not_found:
                report.not_found += len(movie_ids)  # last known answer stands
            else:
                report.failed.extend(failure(m, tmdb_id, f"HTTP 404, not believed: {len(answered)} of "
                                             f"{asked} ids asked were answered 404 (check "
                                             f"{BASE_URL_ENV})") for m in movie_ids)
        if answered and not believable and self.log is not None:
            self.log.warning(f"TMDB: {len(answered)} of {asked} ids asked were answered 404: not believed, "
                             f"nothing was forgotten (is {BASE_URL_ENV} the API root, {self.redact(self.url_root)}?)")

    # ---- 4. the result

    def _close_report(self) -> None:
        self.report.requests_sent, self.report.retries = self.counters.sent, self.counters.retries
        self.report.seconds = time.monotonic() - self.started

    def finish(self) -> tuple[dict[int, dict], FetchReport]:
        self._close_report()
        report, log = self.report, self.log
        if log is not None:
            if len(report.failed) > self.logged_failures:
                log.warning(f"TMDB: {len(report.failed) - self.logged_failures} more failures not logged one "
                            "by one (see FetchReport.failed); the next run retries them")
            log.info(f"TMDB: {report.summary()}")
        return self.records, report
