"""The TMDB and catalogue assets end to end: live client through Dagster, idempotent tables, failures."""

import json

import pandas as pd
import pytest
from dagster import Failure

from rcmd_pipeline.resources.movie_db import MovieDatabase
from rcmd_pipeline.resources.tmdb import HttpTmdbClient
from rcmd_pipeline.table_rows import carry_regtime, movie_rows, series_rows
from rcmd_pipeline_tests.fake_tmdb_server import FakeTmdbServer, movie_body, server_error
from rcmd_pipeline_tests.helpers import (
    embedded_resources,
    materialize_all,
    small_run_config,
    synthetic_ratings,
    write_dataset,
)

CATALOG = ["movielens_links", "tmdb_movie_info_kr", "movie_table", "series_table"]


def _tables(data_dir):
    db = MovieDatabase(url=f"sqlite:///{data_dir / 'rcmd.sqlite'}")
    return db.read_table("movie").sort_values("movie_id"), db.read_table("series").sort_values("series_id")


def test_tables_hold_the_study_columns_and_a_rerun_leaves_exactly_the_same_rows(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, small_run_config())
    movies, series = _tables(data_dir)
    assert list(movies.columns) == ["movie_id", "movie_title", "original_language", "original_title",
                                    "poster_path", "overview", "series_id", "release_date", "runtime", "tagline",
                                    "imdb_id", "adult", "useyn", "regtime"]
    assert list(series.columns) == ["series_id", "series_title", "useyn", "regtime"]
    assert movies.set_index("movie_id").loc[2, ["movie_title", "series_id"]].tolist() == ["영화 2", 500]
    assert movies.set_index("movie_id").loc[11, "series_id"] == 0
    assert series.series_id.tolist() == [500, 501, 502]
    materialize_all(small_dataset, data_dir, None, selection=CATALOG)
    again_movies, again_series = _tables(data_dir)
    pd.testing.assert_frame_equal(movies.reset_index(drop=True), again_movies.reset_index(drop=True))
    pd.testing.assert_frame_equal(series.reset_index(drop=True), again_series.reset_index(drop=True))


def test_a_changed_overview_changes_only_that_row(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, None, selection=CATALOG)
    before, _ = _tables(data_dir)
    path = small_dataset / "tmdb" / "ko-KR" / "1003.json"
    body = json.loads(path.read_text())
    body["overview"] = "새 줄거리"
    path.write_text(json.dumps(body, ensure_ascii=False))
    materialize_all(small_dataset, data_dir, None, selection=CATALOG)
    after, _ = _tables(data_dir)
    changed = before.set_index("movie_id").compare(after.set_index("movie_id"))
    assert changed.index.tolist() == [3]
    assert after.set_index("movie_id").loc[3, "overview"] == "새 줄거리"


def test_too_many_tmdb_failures_fail_the_asset_and_leave_the_tables_as_they_were(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, None, selection=CATALOG)
    before, _ = _tables(data_dir)
    for m in (1, 2, 3):
        (small_dataset / "tmdb" / "ko-KR" / f"{1000 + m}.json").write_text("<html>502 Bad Gateway</html>")
    with pytest.raises(Failure, match=r"3 of 12 TMDB requests failed.*next run fetches only the rest"):
        materialize_all(small_dataset, data_dir, None, selection=CATALOG)
    after, _ = _tables(data_dir)
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    # tolerated when the share allows it: the failed movies are counted, the rest is loaded
    config = {"ops": {"tmdb_movie_info_kr": {"config": {"max_failed_share": 0.5}}}}
    result = materialize_all(small_dataset, data_dir, config, selection=CATALOG)
    meta = result.asset_materializations_for_node("tmdb_movie_info_kr")[0].metadata
    assert meta["failed"].value == 3 and "| 1 |" in meta["failures"].value
    assert len(_tables(data_dir)[0]) == 9


def test_live_tmdb_client_through_the_asset_counts_cache_fetches_and_not_found(tmp_path):
    dataset = write_dataset(tmp_path / "d", synthetic_ratings(users=5, movies=6, per_user=6))
    bodies = {1000 + m: movie_body(1000 + m) for m in range(1, 6)}  # movie 6 is not on TMDB
    with FakeTmdbServer(bodies, faults={1002: [server_error()]}, bearer="token-123") as server:
        resources = embedded_resources(dataset, tmp_path / "state")
        resources["tmdb"] = HttpTmdbClient(base_url=server.url, read_access_token="token-123",
                                           backoff_base_seconds=0.01)
        from dagster import materialize

        from rcmd_pipeline.definitions import all_assets

        first = materialize(all_assets, selection=["movielens_links", "tmdb_movie_info_kr"], resources=resources)
        meta = first.asset_materializations_for_node("tmdb_movie_info_kr")[0].metadata
        assert (meta["requested"].value, meta["fetched"].value, meta["not_found"].value,
                meta["failed"].value, meta["served_from_cache"].value) == (6, 5, 1, 0, 0)
        assert server.counts()[1002] == 2  # the 500, then the movie
        second = materialize(all_assets, selection=["tmdb_movie_info_kr"], resources=resources)
        meta = second.asset_materializations_for_node("tmdb_movie_info_kr")[0].metadata
        assert (meta["served_from_cache"].value, meta["fetched"].value, meta["not_found"].value) == (5, 0, 1)
        assert server.total() == 7  # nothing asked twice


def test_row_builders_on_hand_made_details():
    from datetime import datetime

    details = pd.DataFrame([
        {"movieId": 2, "tmdbId": 20, "title": "B", "original_title": "B", "original_language": "en",
         "overview": "", "tagline": "", "release_date": None, "runtime": None, "imdb_id": "", "adult": True,
         "poster_path": "", "collection_id": 7, "collection_name": "시리즈 칠", "genres": ""},
        {"movieId": 1, "tmdbId": 10, "title": "A", "original_title": "A", "original_language": "ko",
         "overview": "줄거리", "tagline": "t", "release_date": "1995-10-30", "runtime": 81, "imdb_id": "tt1",
         "adult": False, "poster_path": "/p.jpg", "collection_id": 7, "collection_name": "시리즈 칠",
         "genres": "드라마"},
    ])
    t0, t1 = datetime(2025, 1, 1), datetime(2025, 2, 1)
    rows = movie_rows(details, t0)
    assert rows.movie_id.tolist() == [1, 2]
    assert rows.adult.tolist() == ["N", "Y"] and rows.useyn.tolist() == ["Y", "Y"]
    assert rows.overview.tolist() == ["줄거리", None] and rows.release_date.iloc[1] is None
    assert series_rows(details, t0).to_dict("records") == [
        {"series_id": 7, "series_title": "시리즈 칠", "useyn": "Y", "regtime": t0}]
    later = movie_rows(details.assign(overview=["", "새 줄거리"]), t1)
    carried = carry_regtime(later, rows, "movie_id")
    assert carried.regtime.tolist() == [t1, t0]  # movie 1 changed, movie 2 did not
