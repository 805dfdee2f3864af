"""MovieLens source assets: the ratings, links and movies files of ``RCMD_DATASET_PATH``.

Each asset reads and validates one file and stores it in compact, typed form under
``RCMD_DATA_DIR``; downstream assets never parse the CSV files again. A malformed file fails here,
before anything downstream is touched, with a message naming the file, column and rows.

A file that did not change since the last materialization (same name, size and modification time:
:func:`~rcmd_pipeline.resources.movielens.source_fingerprint`) is not read again: the asset keeps
its stored value and says so in its metadata (``kept_from_run``), with the same data version, so
nothing downstream turns stale. On MovieLens 32M that saves re-reading 32 M ratings every night.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from rcmd_pipeline.assets.versioning import computed, inputs_version, kept, unchanged_since, value_is_stored
from rcmd_pipeline.resources.local_state import LocalStateDir
from rcmd_pipeline.resources.movielens import MovieLensFiles

GROUP = "movielens"
# Bump when what an asset stores from the same file changes (columns, dtypes, validation), so that
# an unchanged file is read again once.
CODE_VERSION = "2"


def _read_unless_unchanged(context: AssetExecutionContext, movielens: MovieLensFiles, file_name: str,
                           read: Callable[[], tuple[pd.DataFrame, dict]]) -> Output:
    """``read()`` the file, or keep the stored value when the file's fingerprint is the one it was read with."""
    fingerprint = movielens.source_fingerprint([file_name])
    version = inputs_version(context, extra={"source_fingerprint": fingerprint})
    previous = unchanged_since(context, version, still_there=value_is_stored(context))
    if previous is not None:
        return kept(context, version, previous)
    frame, metadata = read()
    return computed(frame, version, {
        **metadata,
        "source": MetadataValue.path(str(movielens.folder / file_name)),
        "source_fingerprint": MetadataValue.text(fingerprint),
    })


def _distinct(ids: np.ndarray) -> int:
    """How many distinct positive ids: a bit table when the ids are MovieLens-sized, else a hash."""
    if len(ids) == 0:
        return 0
    if int(ids.max()) < 1 << 26:
        seen = np.zeros(int(ids.max()) + 1, dtype=bool)
        seen[ids] = True
        return int(np.count_nonzero(seen))
    return int(pd.unique(ids).size)


@asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version=CODE_VERSION)
def movielens_ratings(context: AssetExecutionContext, movielens: MovieLensFiles,
                      local_state: LocalStateDir):  # local_state: to tell whether the value is still stored
    """Every MovieLens rating (userId, movieId, rating, timestamp in epoch seconds).

    Read from ``ratings.parquet`` (or ``ratings.csv``) in ``RCMD_DATASET_PATH`` block by block;
    ids are checked to be positive whole numbers and timestamps whole seconds, then stored as
    int32/int32/float32/int64. Kept without reading when the file is unchanged.
    """

    def read() -> tuple[pd.DataFrame, dict]:
        ratings = movielens.read_ratings()
        times = ratings["timestamp"]
        return ratings, {
            "dagster/row_count": len(ratings),
            "rating_count": len(ratings),
            "user_count": _distinct(ratings["userId"].to_numpy()),
            "movie_count": _distinct(ratings["movieId"].to_numpy()),
            "first_time": MetadataValue.timestamp(float(times.min())) if len(ratings) else MetadataValue.null(),
            "last_time": MetadataValue.timestamp(float(times.max())) if len(ratings) else MetadataValue.null(),
        }

    return _read_unless_unchanged(context, movielens, movielens.ratings_file().name, read)


@asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version=CODE_VERSION)
def movielens_links(context: AssetExecutionContext, movielens: MovieLensFiles,
                    local_state: LocalStateDir):  # local_state: to tell whether the value is still stored
    """MovieLens movieId → imdbId and tmdbId (``links.csv``); tmdbId is empty for a few movies."""

    def read() -> tuple[pd.DataFrame, dict]:
        links = movielens.read_links()
        return links, {
            "dagster/row_count": len(links),
            "with_tmdb_id": int(links["tmdbId"].notna().sum()),
            "without_tmdb_id": int(links["tmdbId"].isna().sum()),
        }

    return _read_unless_unchanged(context, movielens, "links.csv", read)


@asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version=CODE_VERSION)
def movielens_movies(context: AssetExecutionContext, movielens: MovieLensFiles,
                     local_state: LocalStateDir):  # local_state: to tell whether the value is still stored
    """MovieLens movieId → title ("Toy Story (1995)") and pipe-separated genres (``movies.csv``)."""

    def read() -> tuple[pd.DataFrame, dict]:
        movies = movielens.read_movies()
        return movies, {"dagster/row_count": len(movies)}

    return _read_unless_unchanged(context, movielens, "movies.csv", read)
