"""Bad input, tried systematically: a clear error or a documented fallback, never a bare crash."""

import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcmd_pipeline.embedding_cache import embedding_text
from rcmd_pipeline.evaluation import InsufficientDataError, TransitionSettings, build_eval_transitions
from rcmd_pipeline.recommenders import (
    PAD,
    HybridRecommender,
    NextMovieRecommender,
    PopularityRecommender,
    RandomRecommender,
    SeriesRecommender,
    SeriesVectorRecommender,
    VectorRecommender,
)
from rcmd_pipeline.resources.movielens import DatasetError, read_links, read_movies, read_ratings
from rcmd_pipeline.resources.tmdb import TmdbRecordError, parse_movie_details
from rcmd_pipeline_tests.helpers import write_dataset

HEADER = "userId,movieId,rating,timestamp\n"
cell = st.one_of(
    st.integers(-5, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(string.printable.replace(",", "").replace("\n", "").replace("\r", ""), max_size=12),
    st.just(""), st.just("NaN"), st.just("1e400"), st.just("한글"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell, cell, cell), min_size=1, max_size=20))
def test_any_ratings_csv_gives_a_frame_or_a_dataset_error(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("d")
    text = HEADER + "".join(",".join(r) + "\n" for r in rows)
    (folder / "ratings.csv").write_text(text, encoding="utf-8")
    try:
        frame = read_ratings(folder)
    except DatasetError as err:
        assert "ratings.csv" in str(err)
        return
    assert (frame["userId"] > 0).all() and (frame["movieId"] > 0).all() and (frame["timestamp"] >= 0).all()
    assert len(frame) == len(rows)  # nothing valid is dropped silently


@pytest.mark.parametrize("line", ["1,2,3.0\n", "1,2,3.0,4,5\n", '1,"2,3.0,4\n'])
def test_malformed_csv_rows_name_the_file(tmp_path, line):
    folder = write_dataset(tmp_path / "d", HEADER + "1,2,3.0,100\n" + line)
    with pytest.raises(DatasetError, match="ratings.csv"):
        read_ratings(folder)


def test_non_utf8_movies_file_is_a_clear_error(tmp_path):
    folder = write_dataset(tmp_path / "d", HEADER + "1,2,3.0,100\n")
    (folder / "movies.csv").write_bytes(b"movieId,title,genres\n2,\xff\xfe broken,Drama\n")
    with pytest.raises(DatasetError, match=r"movies\.csv.*UTF-8"):
        read_movies(folder)


def test_huge_strings_in_links_are_rejected_by_column(tmp_path):
    folder = write_dataset(tmp_path / "d", HEADER + "1,2,3.0,100\n",
                           links="movieId,imdbId,tmdbId\n2,0000002," + "9" * 5000 + "x\n")
    with pytest.raises(DatasetError, match=r"links\.csv: column 'tmdbId'"):
        read_links(folder)


def test_duplicate_and_unsorted_ratings_give_the_same_set_as_sorted_ones():
    rng = np.random.default_rng(3)
    n = 2000
    frame = pd.DataFrame({"u": rng.integers(1, 40, n), "m": rng.integers(1, 30, n), "t": rng.integers(0, 50, n)})
    frame = pd.concat([frame, frame.iloc[:100]])  # exact duplicate ratings, as a broken export would have
    settings_ = TransitionSettings(min_movie_ratings=10, eval_size=100)
    shuffled = frame.sample(frac=1.0, random_state=1)
    a = build_eval_transitions(frame.u.to_numpy(), frame.m.to_numpy(), frame.t.to_numpy(), settings_)
    b = build_eval_transitions(shuffled.u.to_numpy(), shuffled.m.to_numpy(), shuffled.t.to_numpy(), settings_)
    pd.testing.assert_frame_equal(a, b)
    # documented: duplicates are kept as ratings (the study did not deduplicate); equal times are
    # ordered by movie id, so a duplicate pair shows as prev == next
    assert (a.prev_movieId == a.movieId).any()


def test_all_ratings_at_one_second_still_pair_deterministically():
    users = np.repeat(np.arange(1, 11), 5)
    movies = np.tile(np.arange(1, 6), 10)
    times = np.zeros(50, dtype=np.int64)
    pairs = build_eval_transitions(users, movies, times, TransitionSettings(min_movie_ratings=1, eval_size=40))
    assert len(pairs) == 40 and (pairs.movieId == pairs.prev_movieId + 1).all()
    with pytest.raises(InsufficientDataError):
        build_eval_transitions(users, movies, times, TransitionSettings(min_movie_ratings=1, eval_size=41))


@pytest.mark.parametrize("body", [
    "<html><body>502 Bad Gateway</body></html>", '{"id": 862, "title": "토이', [], {"id": "862", "title": "x"},
    {"id": 862, "title": 5}, {"id": 862, "title": "x", "belongs_to_collection": "Toy Story"},
    {"id": 862, "title": "x", "genres": "Animation"}, {"id": 862, "title": "x", "runtime": "81분"},
])
def test_bad_tmdb_bodies_are_record_errors_naming_the_movie(body):
    with pytest.raises(TmdbRecordError, match="movieId 1"):
        parse_movie_details(1, body)


def test_missing_collection_means_no_series():
    record = parse_movie_details(1, {"id": 862, "title": "토이 스토리"})
    assert (record["collection_id"], record["collection_name"]) == (0, "")


def test_overviews_with_control_characters_are_cleaned_and_empty_ones_skipped():
    cleaned = embedding_text("토이\x00 스토리", "장난감\x07들이\n\n살아\t움직인다\x1b")
    assert cleaned == "토이 스토리. 장난감들이 살아 움직인다"
    assert embedding_text("제목", "\x00\x01 \n") == ""
    assert embedding_text(None, None) == ""


def _neighbours(ids, k):
    out = np.full((len(ids), k), PAD, dtype=np.int64)
    out[np.asarray(ids) == 1, :2] = [2, 3]
    return out, np.zeros(out.shape, dtype=np.float32)


def test_unknown_movie_ids_asked_of_every_strategy_get_well_formed_rows():
    catalog = pd.DataFrame({"movie_id": [1, 2, 3], "series_id": [7, 7, 0],
                            "release_date": pd.to_datetime(["2000-01-01", "2001-01-01", None])})
    fill = np.arange(1, 50)
    users, movies, times = np.array([1, 1, 2, 2]), np.array([1, 2, 1, 3]), np.array([1, 2, 3, 4])
    popularity = PopularityRecommender(movies)
    series = SeriesRecommender(catalog, fill)
    strategies = [
        RandomRecommender(fill), series, VectorRecommender(_neighbours, fill),
        SeriesVectorRecommender(series, _neighbours, fill), popularity,
        NextMovieRecommender(users, movies, times, fallback=popularity),
        HybridRecommender([(NextMovieRecommender(users, movies, times), 1.0), (popularity, 0.1)]),
    ]
    unknown = np.array([999_999, 0, 123_456_789, 1])
    for strategy in strategies:
        rows = strategy.recommend(unknown, 10)
        assert rows.shape == (4, 10) and rows.dtype == np.int64, strategy.name
        for row in rows:
            real = row[row != PAD]
            assert len(set(real.tolist())) == len(real), strategy.name  # no repeats
        if strategy.name in {"random", "series", "vector", "series_vector"}:  # the study's random fill
            assert (rows[:3] != PAD).all(), strategy.name
