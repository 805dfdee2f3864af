"""TMDB movie details (``/3/movie/{id}``, Korean by default): a live HTTP client and a snapshot reader.

Both implement :class:`TmdbClient`, whose one method ``fetch_details(items, cache_dir, log)`` turns
``(movieId, tmdbId)`` pairs into flat records (:func:`parse_movie_details`) plus a
:class:`FetchReport`. :func:`tmdb_client_from_environment` picks the HTTP client when
``TMDB_READ_ACCESS_TOKEN`` or ``TMDB_API_KEY`` is set, else the JSON snapshot committed with the
demo data, so the pipeline works without keys or network. The HTTP client's rules (cache and
resume, refresh, 404s, rate, retries, secrets) are in ``docs/tmdb_client.md``.

Modules: ``client`` (interface, report), ``parsing`` (body -> record), ``snapshot``,
``http_client`` (settings, credential), ``fetch`` (one fetch's state), ``http_support`` (rate
limit, redaction), ``environment`` (which client runs), ``errors``.
"""

from rcmd_pipeline.resources.tmdb.client import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_MAX_AGE_DAYS,
    MAX_AGE_DAYS_ENV,
    READ_ACCESS_TOKEN_ENV,
    REQUESTS_PER_SECOND_ENV,
    FetchReport,
    TmdbClient,
)
from rcmd_pipeline.resources.tmdb.environment import tmdb_client_from_environment
from rcmd_pipeline.resources.tmdb.errors import TmdbAuthError, TmdbError, TmdbRecordError
from rcmd_pipeline.resources.tmdb.http_client import HttpTmdbClient
from rcmd_pipeline.resources.tmdb.http_support import NOT_FOUND_DIR, REJECTED_DIR
from rcmd_pipeline.resources.tmdb.parsing import RECORD_COLUMNS, parse_movie_details
from rcmd_pipeline.resources.tmdb.snapshot import SnapshotTmdbClient

__all__ = [
    "API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_MAX_AGE_DAYS", "MAX_AGE_DAYS_ENV", "NOT_FOUND_DIR",
    "READ_ACCESS_TOKEN_ENV", "RECORD_COLUMNS", "REJECTED_DIR", "REQUESTS_PER_SECOND_ENV", "FetchReport",
    "HttpTmdbClient",
    "SnapshotTmdbClient", "TmdbAuthError", "TmdbClient", "TmdbError", "TmdbRecordError",
    "parse_movie_details", "tmdb_client_from_environment",
]
