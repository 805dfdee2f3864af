"""The interface every TMDB client implements, its :class:`FetchReport`, and what both clients share."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from dagster import ConfigurableResource

from rcmd_pipeline.resources.tmdb.errors import TmdbRecordError
from rcmd_pipeline.resources.tmdb.parsing import checked_record, show

API_KEY_ENV = "TMDB_API_KEY"
READ_ACCESS_TOKEN_ENV = "TMDB_READ_ACCESS_TOKEN"
BASE_URL_ENV = "TMDB_BASE_URL"
REQUESTS_PER_SECOND_ENV = "TMDB_REQUESTS_PER_SECOND"
MAX_AGE_DAYS_ENV = "TMDB_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 30.0

LOGGED_FAILURES = 10  # failures logged one by one; the rest are counted


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


def group_items(items) -> tuple[dict[int, int], dict[int, list[int]]]:
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
            raise ValueError(f"items[{n}] = {show(item)}: expected a (movieId, tmdbId) pair of integers, "
                             "tmdbId positive (drop movies without a tmdbId before fetching)")
        if by_movie.get(movie_i, tmdb_i) != tmdb_i:
            raise ValueError(f"movieId {movie_i} is listed with two tmdbIds ({by_movie[movie_i]} and {tmdb_i})")
        by_movie[movie_i] = tmdb_i
    by_tmdb: dict[int, list[int]] = {}
    for movie_i, tmdb_i in by_movie.items():
        by_tmdb.setdefault(tmdb_i, []).append(movie_i)
    return by_movie, by_tmdb


def failure(movie_id: int, tmdb_id: int, reason: str) -> tuple[int, str]:
    """A ``FetchReport.failed`` entry."""
    return movie_id, f"movieId {movie_id} (tmdbId {tmdb_id}): {reason}"


def records_from_body(body, tmdb_id: int, movie_ids: list[int], records: dict, report: FetchReport,
                      counter: str) -> bool:
    """Parse ``body`` for each movie; count successes in ``report.<counter>``, failures in ``failed``."""
    ok = True
    for movie_id in movie_ids:
        try:
            records[movie_id] = checked_record(movie_id, tmdb_id, body)
        except TmdbRecordError as exc:
            report.failed.append((movie_id, str(exc)))
            ok = False
            continue
        setattr(report, counter, getattr(report, counter) + 1)
    return ok
