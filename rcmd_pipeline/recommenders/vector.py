"""The study's vector strategies: nearest overview embeddings, alone or after the series films."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rcmd_pipeline.recommenders.base import PAD, fill_with_random
from rcmd_pipeline.recommenders.series import SeriesRecommender

Neighbours = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``neighbours(movie_ids, k) -> (ids, scores)``: for each movie, the k nearest OTHER movies by
overview embedding, in one batched call; rows of movies without a vector are all :data:`PAD`.
A vector store session's ``neighbours`` bound to a collection fits."""


class VectorRecommender:
    """The k nearest overview embeddings of the previous movie (itself excluded).

    As in the study, a previous movie without a vector (no overview, or unknown) gets k random ids
    from ``fill_ids`` (every movie id seen in the ratings); a movie with fewer than k neighbours is
    filled the same way. One batched ``neighbours`` call serves the whole evaluation.
    """

    name = "vector"

    def __init__(self, neighbours: Neighbours, fill_ids: np.ndarray, seed: int = 0) -> None:
        self.neighbours = neighbours
        self.fill_ids = np.unique(np.asarray(fill_ids, dtype=np.int64))
        self.seed = seed

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64)
        ids, _ = self.neighbours(prev, k)
        rows = np.array(ids, dtype=np.int64, copy=True)
        counts = (rows != PAD).sum(axis=1)  # neighbours come first, PAD after them
        return fill_with_random(rows, counts, self.fill_ids, np.random.default_rng(self.seed))


class SeriesVectorRecommender:
    """The study's series + vector: the series films first (newest first), nearest vectors after.

    For each previous movie: its other series films as :class:`SeriesRecommender` orders them,
    then its nearest overview embeddings not already listed, then random ids if both together
    have fewer than k (a movie with neither series nor vector gets k random ids, as in the study).
    """

    name = "series_vector"

    def __init__(self, series: SeriesRecommender, neighbours: Neighbours, fill_ids: np.ndarray,
                 seed: int = 0) -> None:
        self.series = series
        self.neighbours = neighbours
        self.fill_ids = np.unique(np.asarray(fill_ids, dtype=np.int64))
        self.seed = seed

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64)
        series_rows, counts = self.series.series_rows(prev, k)
        # Ask for k + k neighbours: up to k of them may already be series films.
        near, _ = self.neighbours(prev, 2 * k)
        near = np.asarray(near, dtype=np.int64)
        rows, counts = series_rows, counts.copy()
        for i in np.flatnonzero(counts < k):
            have = rows[i, : counts[i]]
            extra = near[i][(near[i] != PAD) & ~np.isin(near[i], have)][: k - counts[i]]
            rows[i, counts[i]: counts[i] + len(extra)] = extra
            counts[i] += len(extra)
        return fill_with_random(rows, counts, self.fill_ids, np.random.default_rng(self.seed))
