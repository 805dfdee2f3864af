"""The study's ``movie`` and ``series`` tables in the RDBMS (Oracle in production, SQLite by default).

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

from datetime import datetime, timezone

from dagster import AssetExecutionContext, AssetIn, MaterializeResult, MetadataValue, asset

from rcmd_pipeline.assets import versioning
from rcmd_pipeline.resources.lazy_input import LAZY, LazyValue
from rcmd_pipeline.resources.movie_db import MovieDatabase
from rcmd_pipeline.table_rows import carry_regtime, movie_rows, series_rows

GROUP = "catalog"
LAZY_DETAILS = AssetIn(input_manager_key=LAZY)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


@asset(group_name=GROUP, kinds={"sql", "oracle", "sqlite"}, ins={"tmdb_movie_info_kr": LAZY_DETAILS})
def movie_table(
    context: AssetExecutionContext, movie_db: MovieDatabase, tmdb_movie_info_kr: LazyValue
) -> MaterializeResult:
    """The study's ``movie`` table: one row per MovieLens movie with Korean TMDB details.

    ``movie_id`` is the MovieLens id, ``series_id`` TMDB's collection id (0 = no series). Replaced
    in one transaction, so readers see the previous contents until the new ones are complete, and a
    re-run on the same details leaves exactly the same rows (``regtime`` changes only for rows
    whose content changed). Not rewritten when the details did not change (and the table is there).
    """
    version = versioning.inputs_version(context, upstream=["tmdb_movie_info_kr"], extra=movie_db.masked_url)
    previous = versioning.unchanged_since(context, version, movie_db.count_rows("movie") > 0)
    if previous is not None:
        return versioning.kept_result(context, version, previous)
    tmdb_movie_info_kr = tmdb_movie_info_kr.load()
    movie_db.create_tables()
    rows = carry_regtime(movie_rows(tmdb_movie_info_kr, _now()), movie_db.read_table("movie"), "movie_id")
    loaded = movie_db.replace_movies(rows)
    return versioning.computed_result(version, {
        "dagster/row_count": loaded,
        "with_series": int((rows["series_id"] > 0).sum()),
        "with_overview": int(rows["overview"].notna().sum()),
        "database": MetadataValue.text(movie_db.masked_url),
    })


@asset(group_name=GROUP, kinds={"sql", "oracle", "sqlite"}, ins={"tmdb_movie_info_kr": LAZY_DETAILS})
def series_table(
    context: AssetExecutionContext, movie_db: MovieDatabase, tmdb_movie_info_kr: LazyValue
) -> MaterializeResult:
    """The study's ``series`` table: one row per TMDB collection (series) some movie belongs to."""
    version = versioning.inputs_version(context, upstream=["tmdb_movie_info_kr"], extra=movie_db.masked_url)
    previous = versioning.unchanged_since(context, version, movie_db.count_rows("series") >= 0)
    if previous is not None:
        return versioning.kept_result(context, version, previous)
    tmdb_movie_info_kr = tmdb_movie_info_kr.load()
    movie_db.create_tables()
    rows = carry_regtime(series_rows(tmdb_movie_info_kr, _now()), movie_db.read_table("series"), "series_id")
    loaded = movie_db.replace_series(rows)
    sizes = tmdb_movie_info_kr.loc[tmdb_movie_info_kr["collection_id"] > 0, "collection_id"].value_counts()
    return versioning.computed_result(version, {
        "dagster/row_count": loaded,
        "largest_series": int(sizes.max()) if len(sizes) else 0,
        "database": MetadataValue.text(movie_db.masked_url),
    })
