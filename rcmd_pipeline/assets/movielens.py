"""MovieLens source assets: the ratings, links and movies files of ``RCMD_DATASET_PATH``.

Each asset reads and validates one file and stores it in compact, typed form under
``RCMD_DATA_DIR``; downstream assets never parse the CSV files again. A malformed file fails here,
before anything downstream is touched, with a message naming the file, column and rows.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""


import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, asset

from rcmd_pipeline.resources.movielens import MovieLensFiles

GROUP = "movielens"


@asset(group_name=GROUP, kinds={"pandas", "parquet"})
def movielens_ratings(context: AssetExecutionContext, movielens: MovieLensFiles) -> pd.DataFrame:
    """Every MovieLens rating (userId, movieId, rating, timestamp in epoch seconds).

    Read from ``ratings.parquet`` (or ``ratings.csv``) in ``RCMD_DATASET_PATH``; ids are checked to
    be positive whole numbers and timestamps whole seconds, then stored as int32/float32/int64.
    """
    ratings = movielens.read_ratings()
    times = ratings["timestamp"]
    context.add_output_metadata({
        "source": MetadataValue.path(str(movielens.ratings_file())),
        "dagster/row_count": len(ratings),
        "rating_count": len(ratings),
        "user_count": int(ratings["userId"].nunique()),
        "movie_count": int(ratings["movieId"].nunique()),
        "first_time": MetadataValue.timestamp(float(times.min())) if len(ratings) else MetadataValue.null(),
        "last_time": MetadataValue.timestamp(float(times.max())) if len(ratings) else MetadataValue.null(),
    })
    return ratings


@asset(group_name=GROUP, kinds={"pandas", "parquet"})
def movielens_links(context: AssetExecutionContext, movielens: MovieLensFiles) -> pd.DataFrame:
    """MovieLens movieId → imdbId and tmdbId (``links.csv``); tmdbId is empty for a few movies."""
    links = movielens.read_links()
    context.add_output_metadata({
        "source": MetadataValue.path(str(movielens.folder / "links.csv")),
        "dagster/row_count": len(links),
        "with_tmdb_id": int(links["tmdbId"].notna().sum()),
        "without_tmdb_id": int(links["tmdbId"].isna().sum()),
    })
    return links


@asset(group_name=GROUP, kinds={"pandas", "parquet"})
def movielens_movies(context: AssetExecutionContext, movielens: MovieLensFiles) -> pd.DataFrame:
    """MovieLens movieId → title ("Toy Story (1995)") and pipe-separated genres (``movies.csv``)."""
    movies = movielens.read_movies()
    context.add_output_metadata({
        "source": MetadataValue.path(str(movielens.folder / "movies.csv")),
        "dagster/row_count": len(movies),
    })
    return movies
