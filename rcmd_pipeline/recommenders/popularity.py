"""The most rated movies of the training window, the same list for every previous movie."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcmd_pipeline.lib.arguments import check_k
from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.ratings import _dense, _popular_order


class PopularityRecommender:
    """The k most-rated movies of the training window, the same list for every previous movie.

    The previous movie itself is never recommended (the list's first k + 1 are taken and it is
    dropped). Ties in rating count are broken by movie id (smaller first); movies rated fewer than
    ``min_count`` times are left out. Rows are padded with :data:`PAD` only when the window holds
    too few movies. ``movies_in_window`` is the movie column of :func:`training_window`'s result.
    """

    name = "popularity"

    def __init__(self, movies_in_window: np.ndarray, min_count: int = 1) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        movies = np.asarray(movies_in_window, dtype=np.int64).ravel()
        dense, ids = _dense(movies)
        counts = np.bincount(dense, minlength=len(ids))
        order = _popular_order(counts)  # most rated first, ties by movie id
        order = order[counts[order] >= min_count]
        self.ranked_ids = ids[order]
        self.ranked_counts = counts[order]
        self.min_count = min_count

    def state(self) -> dict[str, np.ndarray]:
        """The learned state as plain arrays (what the ``popularity_model`` asset stores)."""
        return {"ranked_ids": self.ranked_ids.astype(np.int64), "ranked_counts": self.ranked_counts.astype(np.int64),
                "min_count": np.array(self.min_count, dtype=np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PopularityRecommender:
        """The recommender :meth:`state` describes, without the ratings it was counted from."""
        rec = cls.__new__(cls)
        rec.ranked_ids = np.asarray(state["ranked_ids"], dtype=np.int64)
        rec.ranked_counts = np.asarray(state["ranked_counts"], dtype=np.int64)
        rec.min_count = int(state["min_count"])
        return rec

    @property
    def popularity(self) -> pd.Series:
        """Movie id -> rating count in the window (the ranked movies), most rated first."""
        return pd.Series(self.ranked_counts, index=pd.Index(self.ranked_ids, name="movieId"), name="ratings")

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
        k = check_k(k, minimum=0)  # a strategy may be asked for no movies at all
        out = np.full((len(prev), k), PAD, dtype=np.int64)
        top = self.ranked_ids[: k + 1]
        if len(prev) == 0 or k == 0 or len(top) == 0:
            return out
        rows = np.broadcast_to(top, (len(prev), len(top)))
        ok = rows != prev[:, None]
        picked = np.take_along_axis(rows, np.argsort(~ok, axis=1, kind="stable"), axis=1)
        picked = np.where(np.arange(len(top)) < ok.sum(axis=1)[:, None], picked, PAD)
        width = min(k, len(top))
        out[:, :width] = picked[:, :width]
        return out
