"""Which TMDB client runs, chosen from environment variables."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import env_value
from rcmd_pipeline.resources.tmdb.client import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_MAX_AGE_DAYS,
    MAX_AGE_DAYS_ENV,
    READ_ACCESS_TOKEN_ENV,
    REQUESTS_PER_SECOND_ENV,
    TmdbClient,
)
from rcmd_pipeline.resources.tmdb.errors import TmdbError
from rcmd_pipeline.resources.tmdb.http_client import HttpTmdbClient
from rcmd_pipeline.resources.tmdb.snapshot import SnapshotTmdbClient


def _positive_number(environ: Mapping[str, str], name: str, expected: str,
                     default: float | None = None) -> float | None:
    """The variable as a number > 0, ``default`` when unset or blank, a clear error otherwise."""
    text = env_text(name, environ)
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
    token = env_text(READ_ACCESS_TOKEN_ENV, environ)
    key = env_text(API_KEY_ENV, environ)
    if not token and not key:
        return SnapshotTmdbClient(snapshot_dir=str(snapshot_dir))
    kwargs: dict[str, Any] = {}
    if token:
        kwargs["read_access_token"] = env_value(environ, READ_ACCESS_TOKEN_ENV)
    if key:
        kwargs["api_key"] = env_value(environ, API_KEY_ENV)
    base_url = env_text(BASE_URL_ENV, environ)
    if base_url:
        kwargs["base_url"] = base_url
    kwargs["max_age_days"] = _positive_number(environ, MAX_AGE_DAYS_ENV, "a number of days (e.g. 30)",
                                              DEFAULT_MAX_AGE_DAYS)
    rate = _positive_number(environ, REQUESTS_PER_SECOND_ENV, "a number of requests per second (e.g. 40)")
    if rate is not None:
        kwargs["requests_per_second"] = rate
    return HttpTmdbClient(**kwargs)
