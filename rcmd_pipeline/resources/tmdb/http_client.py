"""TMDB's HTTP API as a :class:`TmdbClient`: its settings, its credential, and the fetch.

The fetch itself (cache, worker threads, retries, accounting) is :class:`~.fetch.Fetch`; the rules
it follows are in ``docs/tmdb_client.md``.
"""

import re
from pathlib import Path

from pydantic import Field

from rcmd_pipeline.lib.http_retry import retry_setting_problems
from rcmd_pipeline.lib.secrets import secret_value
from rcmd_pipeline.resources.tmdb.client import API_KEY_ENV, READ_ACCESS_TOKEN_ENV, FetchReport, TmdbClient
from rcmd_pipeline.resources.tmdb.errors import TmdbAuthError, TmdbError
from rcmd_pipeline.resources.tmdb.fetch import Fetch
from rcmd_pipeline.resources.tmdb.http_support import install_log_redaction, redact_key


class HttpTmdbClient(TmdbClient):
    """TMDB's HTTP API (``GET {base_url}/3/movie/{id}?language=...``): rate-limited, retried, resumable.

    See ``docs/tmdb_client.md`` for the cache layout and the retry, rate and secret rules.
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

    def check_settings(self) -> None:
        """Every bad setting in one :class:`TmdbError`, before anything is sent."""
        problems = []
        if not self.requests_per_second > 0:
            problems.append(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        problems += retry_setting_problems(self.max_retries, self.timeout_seconds, self.backoff_base_seconds,
                                           self.backoff_max_seconds)
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"base_url must start with http:// or https://, got {redact_key(self.base_url, ())!r}")
        elif re.search(r"/3/*$", self.base_url):
            problems.append(f"base_url is the API root without the version (e.g. https://api.themoviedb.org; "
                            f"requests go to <base_url>/3/movie/<id>), got {redact_key(self.base_url, ())!r}")
        if problems:
            raise TmdbError("HttpTmdbClient settings: " + "; ".join(problems) + ".")

    def credential(self) -> tuple[dict[str, str], dict[str, str], str, tuple[str, ...]]:
        """(headers, query params, name of the env var in use, secrets to redact)."""
        token, key = secret_value(self.read_access_token) or None, secret_value(self.api_key) or None
        secrets = tuple(s for s in (token, key) if s)
        if token:
            return {"Authorization": f"Bearer {token}"}, {}, READ_ACCESS_TOKEN_ENV, secrets
        if key:
            install_log_redaction()
            return {}, {"api_key": key}, API_KEY_ENV, secrets
        raise TmdbAuthError(
            f"HttpTmdbClient has no credential: set {READ_ACCESS_TOKEN_ENV} (preferred) or {API_KEY_ENV}, "
            "or leave both unset to read the JSON snapshot instead."
        )

    def fetch_details(
        self, items: list[tuple[int, int]], cache_dir: str | Path, log=None
    ) -> tuple[dict[int, dict], FetchReport]:
        fetch = Fetch(self, items, cache_dir, log)
        fetch.read_cache()
        fetch.ask_tmdb()
        fetch.settle_not_found()
        return fetch.finish()
