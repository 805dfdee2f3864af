"""The errors a TMDB client raises: a bad setting or folder, a rejected credential, a bad movie body."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcmd_pipeline.resources.tmdb.client import FetchReport


class TmdbError(Exception):
    """A TMDB problem the caller should see (bad setting, unreadable snapshot folder, ...)."""


class TmdbAuthError(TmdbError):
    """TMDB rejected the credential; the message names the variable to check, never its value.

    ``report`` holds the partial :class:`FetchReport` of the stopped fetch (what was cached
    before the rejection stays cached).
    """

    def __init__(self, message: str, report: FetchReport | None = None):
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
