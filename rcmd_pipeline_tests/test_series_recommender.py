"""The series strategy: the study's series_rcmd, batched."""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pandas as pd
import pytest

from rcmd_pipeline.recommenders import PAD, Recommender, SeriesRecommender

TOY_STORY = {1: date(1995, 10, 30), 3114: date(1999, 10, 30), 78499: date(2010, 6, 16), 201588: date(2019, 6, 19)}
POOL = np.arange(1_000, 6_000)  # the fill pool: every movie id "seen in the ratings"


def catalog(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["movie_id", "series_id", "release_date"])


def toy_catalog() -> pd.DataFrame:
    rows = [(m, 1, d) for m, d in TOY_STORY.items()]
    rows += [(2, 0, date(1995, 12, 15)),            # Jumanji: no series
             (10, 7, date(2000, 1, 1)),             # a two-film series
             (11, 7, None)]                         # ... whose sequel has no release date
    return catalog(rows)


def study_series_list(cat: pd.DataFrame, movie_id: int) -> list[int]:
    """The study's query, in pandas: same series, itself excluded, newest first (ties by id, NULL last)."""
    row = cat.loc[cat["movie_id"] == movie_id]
    if row.empty or int(row["series_id"].iloc[0]) == 0:
        return []
    same = cat.loc[(cat["series_id"] == row["series_id"].iloc[0]) & (cat["movie_id"] != movie_id)].copy()
    same["release_date"] = pd.to_datetime(same["release_date"])
    same = same.sort_values(["release_date", "movie_id"], ascending=[False, True], na_position="last")
    return same["movie_id"].tolist()


def test_study_example_toy_story():
    rec = SeriesRecommender(toy_catalog(), POOL, seed=0)
    assert isinstance(rec, Recommender) and rec.name == "series"
    (row,) = rec.recommend(np.array([1]), 10).tolist()
    assert row[:3] == [201588, 78499, 3114]  # Toy Story 4, 3, 2: newest first, itself excluded
    fill = row[3:]
    assert len(fill) == 7 and len(set(row)) == 10 and set(fill) <= set(POOL.tolist())


def test_every_member_gets_the_rest_of_its_series_in_order():
    cat = toy_catalog()
    rec = SeriesRecommender(cat, POOL, seed=3)
    prev = np.array([1, 3114, 78499, 201588, 10, 11])
    out = rec.recommend(prev, 10)
    for movie_id, row in zip(prev.tolist(), out.tolist(), strict=True):
        expected = study_series_list(cat, movie_id)
        assert row[:len(expected)] == expected
        assert len(set(row)) == 10 and PAD not in row
    assert out[4, 0] == 11 and out[5, 0] == 10  # a film without a release date still counts


def test_release_date_ties_break_by_movie_id_and_missing_dates_go_last():
    cat = catalog([(50, 5, date(2001, 1, 1)), (40, 5, date(2001, 1, 1)), (30, 5, None), (20, 5, None),
                   (60, 5, date(1990, 1, 1)), (70, 5, date(2005, 5, 5))])
    out = SeriesRecommender(cat, POOL).recommend(np.array([60, 70]), 6)
    assert out[0, :5].tolist() == [70, 40, 50, 20, 30]
    assert out[1, :5].tolist() == [40, 50, 60, 20, 30]


def test_no_series_and_unknown_movies_get_k_random_ids():
    rec = SeriesRecommender(toy_catalog(), POOL, seed=1)
    out = rec.recommend(np.array([2, 987654]), 10)
    for row in out.tolist():
        assert len(set(row)) == 10 and set(row) <= set(POOL.tolist())


def test_series_longer_than_k_is_cut_at_k():
    cat = catalog([(100 + i, 9, date(1960 + i, 1, 1)) for i in range(25)])
    out = SeriesRecommender(cat, POOL).recommend(np.array([100, 124]), 10)
    assert out[0].tolist() == list(range(124, 114, -1))
    assert out[1].tolist() == list(range(123, 113, -1))


def test_fill_never_repeats_a_series_film_or_an_earlier_draw():
    # The series films are themselves in the small pool: the fill must skip them.
    cat = catalog([(1, 1, date(2000, 1, 1)), (2, 1, date(2001, 1, 1)), (3, 1, date(2002, 1, 1))])
    pool = np.arange(1, 15)  # 14 ids, 2 of them already in the row for prev 1
    out = SeriesRecommender(cat, pool, seed=5).recommend(np.full(500, 1), 10)
    assert (out[:, :2] == [3, 2]).all()
    assert all(len(set(row)) == 10 for row in out.tolist())
    assert PAD not in out


def test_pad_only_when_the_pool_runs_out():
    cat = catalog([(1, 1, date(2000, 1, 1)), (2, 1, date(2001, 1, 1))])
    out = SeriesRecommender(cat, np.array([2, 3, 4]), seed=0).recommend(np.array([1, 9]), 6)
    assert out[0, 0] == 2 and sorted(out[0, 1:3].tolist()) == [3, 4] and (out[0, 3:] == PAD).all()
    assert sorted(out[1, :3].tolist()) == [2, 3, 4] and (out[1, 3:] == PAD).all()
    empty_pool = SeriesRecommender(cat, np.array([], dtype=np.int64)).recommend(np.array([1, 9]), 3)
    assert empty_pool.tolist() == [[2, PAD, PAD], [PAD, PAD, PAD]]


def test_large_pool_never_pads():
    rng = np.random.default_rng(0)
    ids = np.arange(1, 20_001)
    series_ids = np.where(rng.random(len(ids)) < 0.3, rng.integers(1, 2_000, len(ids)), 0)
    cat = catalog(list(zip(ids, series_ids, pd.to_datetime(rng.integers(0, 10**9, len(ids)), unit="s"), strict=True)))
    prev = rng.choice(ids, 3_000)
    out = SeriesRecommender(cat, ids).recommend(prev, 10)
    assert out.shape == (3_000, 10) and out.dtype == np.int64 and PAD not in out
    assert all(len(set(row)) == 10 for row in out.tolist())
    for i in range(0, 3_000, 15):  # the series part equals the study's query, movie by movie
        expected = study_series_list(cat, int(prev[i]))[:10]
        assert out[i, :len(expected)].tolist() == expected


def test_seeded_and_reproducible():
    cat = toy_catalog()
    prev = np.array([1, 2, 987654, 10, 1])
    a = SeriesRecommender(cat, POOL, seed=11).recommend(prev, 10)
    np.testing.assert_array_equal(a, SeriesRecommender(cat, POOL, seed=11).recommend(prev, 10))
    rec = SeriesRecommender(cat, POOL, seed=11)
    np.testing.assert_array_equal(rec.recommend(prev, 10), rec.recommend(prev, 10))  # same on every call
    b = SeriesRecommender(cat, POOL, seed=12).recommend(prev, 10)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a[:, :3][0], b[:, :3][0])  # the series part does not depend on the seed


def test_edge_cases_and_bad_input():
    rec = SeriesRecommender(toy_catalog(), POOL)
    assert rec.recommend(np.array([], dtype=np.int64), 10).shape == (0, 10)
    assert rec.recommend(np.array([1]), 0).shape == (1, 0)
    assert rec.recommend([1, 3114], 2).tolist() == [[201588, 78499], [201588, 78499]]
    empty = SeriesRecommender(catalog([]), POOL).recommend(np.array([1, 2]), 4)
    assert all(len(set(row)) == 4 for row in empty.tolist())
    with pytest.raises(ValueError, match="repeated movie_id"):
        SeriesRecommender(catalog([(1, 1, None), (1, 2, None)]), POOL)
    with pytest.raises(ValueError, match="release_date"):
        SeriesRecommender(pd.DataFrame({"movie_id": [1], "series_id": [1]}), POOL)


def test_series_catalog_from_the_database_feeds_the_recommender(tmp_path):
    from rcmd_pipeline.resources.movie_db import MovieDatabase

    db = MovieDatabase(url=f"sqlite:///{tmp_path / 'rcmd.sqlite'}")
    cat = toy_catalog()
    db.replace_movies(cat)
    out = SeriesRecommender(db.series_catalog(), POOL).recommend(np.array([1, 10, 11]), 10)
    assert out[0, :3].tolist() == [201588, 78499, 3114]
    assert out[1, 0] == 11 and out[2, 0] == 10


def test_fast_on_a_full_size_catalogue():
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(np.arange(1, 300_000), 87_000, replace=False))
    series_ids = np.where(rng.random(len(ids)) < 0.3, rng.integers(1, 6_000, len(ids)), 0)
    cat = pd.DataFrame({"movie_id": ids, "series_id": series_ids,
                        "release_date": pd.to_datetime(rng.integers(-10**9, 1.7 * 10**9, len(ids)), unit="s")})
    prev = rng.choice(ids, 3_000)
    started = time.perf_counter()
    out = SeriesRecommender(cat, ids).recommend(prev, 10)
    elapsed = time.perf_counter() - started
    assert PAD not in out
    assert elapsed < 1.0, f"building + recommending for 3,000 took {elapsed:.2f}s"
