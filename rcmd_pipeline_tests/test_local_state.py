"""Reading stored tables as arrays (what the model assets and the leaderboard do at 32 M ratings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rcmd_pipeline.assets.evaluation import window_popularity
from rcmd_pipeline.resources.local_state import read_arrays


@pytest.fixture
def ratings(tmp_path):
    rng = np.random.default_rng(3)
    n = 10_000
    frame = pd.DataFrame({"userId": rng.integers(1, 500, n).astype(np.int32),
                          "movieId": rng.integers(1, 900, n).astype(np.int32),
                          "rating": rng.random(n).astype(np.float32),
                          "timestamp": rng.integers(0, 1_000, n)})
    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=777)
    return path, frame


def test_read_arrays_gives_the_columns_in_file_order_and_types(ratings):
    path, frame = ratings
    got = read_arrays(path, ["movieId", "timestamp"])
    assert list(got) == ["movieId", "timestamp"]
    assert got["movieId"].dtype == np.int32 and got["timestamp"].dtype == np.int64
    assert (got["movieId"] == frame["movieId"].to_numpy()).all()
    assert (got["timestamp"] == frame["timestamp"].to_numpy()).all()


def test_read_arrays_below_keeps_exactly_the_earlier_rows_in_order(ratings):
    path, frame = ratings
    got = read_arrays(path, ["userId", "movieId"], below=("timestamp", 400))
    early = frame[frame["timestamp"] < 400]
    assert len(got["userId"]) == len(early) > 0
    assert (got["userId"] == early["userId"].to_numpy()).all()
    assert (got["movieId"] == early["movieId"].to_numpy()).all()
    assert len(read_arrays(path, ["userId"], below=("timestamp", 0))["userId"]) == 0


def test_read_arrays_names_a_missing_column_and_refuses_missing_values(tmp_path, ratings):
    path, _ = ratings
    with pytest.raises(KeyError, match="no column.*'movie_id'"):
        read_arrays(path, ["movie_id"])
    holes = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"movieId": pa.array([1, None, 3], type=pa.int32())}), holes)
    with pytest.raises(ValueError, match="'movieId' has 1 missing"):
        read_arrays(holes, ["movieId"])


@pytest.mark.parametrize("shift", [0, 1 << 30])  # MovieLens-sized ids (a table) and huge ones (pandas)
def test_window_popularity_counts_like_pandas(ratings, shift):
    _, frame = ratings
    movies = frame["movieId"].to_numpy().astype(np.int64) + shift
    times = frame["timestamp"].to_numpy()
    popularity, catalog = window_popularity({"movieId": movies, "timestamp": times}, 500)
    expected = pd.Series(movies[times < 500]).value_counts()
    assert popularity.sort_index().to_dict() == expected.sort_index().to_dict()
    assert catalog == len(np.unique(movies))
