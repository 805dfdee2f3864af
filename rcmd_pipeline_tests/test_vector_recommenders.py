"""The vector and series+vector strategies on hand-made neighbours and series."""

import numpy as np
import pandas as pd

from rcmd_pipeline.recommenders import PAD, Recommender, SeriesRecommender, SeriesVectorRecommender, VectorRecommender

# Toy Story 1-4 are a series; 106022 and 274197 are near Toy Story 1 by overview but in no series.
CATALOG = pd.DataFrame({
    "movie_id": [1, 3114, 78499, 201588, 106022, 274197, 50],
    "series_id": [10194, 10194, 10194, 10194, 0, 0, 0],
    "release_date": pd.to_datetime(["1995-10-30", "1999-10-30", "2010-06-16", "2019-06-19", "2013-10-16",
                                    "2022-06-15", "1995-08-16"]),
})
NEAR = {  # nearest first, itself excluded, as a vector store answers
    1: [78499, 201588, 3114, 274197, 106022],
    50: [106022],
}
FILL = np.arange(1000, 1100)


def neighbours(ids, k):
    calls.append(len(ids))
    out = np.full((len(ids), k), PAD, dtype=np.int64)
    for i, movie in enumerate(ids):
        near = NEAR.get(int(movie), [])[:k]
        out[i, : len(near)] = near
    return out, np.zeros(out.shape, dtype=np.float32)


calls: list[int] = []


def test_vector_recommends_neighbours_then_random_fill_and_random_without_a_vector():
    calls.clear()
    rec = VectorRecommender(neighbours, FILL, seed=1)
    assert isinstance(rec, Recommender)
    rows = rec.recommend(np.array([1, 50, 999]), 10)
    assert calls == [3], "one batched neighbours call for the whole batch"
    assert rows[0, :5].tolist() == NEAR[1]
    assert rows[1, 0] == 106022
    assert set(rows[0, 5:]) <= set(FILL) and set(rows[2]) <= set(FILL)  # 999 has no vector: random
    assert all(len(set(r)) == 10 for r in rows.tolist()) and (rows != PAD).all()
    np.testing.assert_array_equal(rows, VectorRecommender(neighbours, FILL, seed=1).recommend(
        np.array([1, 50, 999]), 10))


def test_series_vector_puts_series_first_then_neighbours_not_already_listed():
    calls.clear()
    series = SeriesRecommender(CATALOG, FILL)
    rec = SeriesVectorRecommender(series, neighbours, FILL, seed=2)
    rows = rec.recommend(np.array([1, 50, 999]), 10)
    assert calls == [3]
    # the study's series order (newest first), then 274197 and 106022 from the vectors, then random
    assert rows[0, :5].tolist() == [201588, 78499, 3114, 274197, 106022]
    assert set(rows[0, 5:]) <= set(FILL)
    assert rows[1, 0] == 106022 and set(rows[1, 1:]) <= set(FILL)  # no series: vectors, then random
    assert set(rows[2]) <= set(FILL)  # neither: random, as in the study
    assert all(len(set(r)) == 10 for r in rows.tolist())


def test_series_longer_than_k_leaves_no_room_for_vectors():
    calls.clear()
    rec = SeriesVectorRecommender(SeriesRecommender(CATALOG, FILL), neighbours, FILL)
    assert rec.recommend(np.array([1]), 2).tolist() == [[201588, 78499]]
