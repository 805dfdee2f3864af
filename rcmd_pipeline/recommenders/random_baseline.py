"""The study's baseline: k random movie ids, whatever the previous movie was."""

from __future__ import annotations

import numpy as np

from rcmd_pipeline.recommenders.base import sample_distinct


class RandomRecommender:
    """k distinct ids drawn uniformly from every movie id seen in the ratings (seeded).

    The study drew from all ~84,000 movie ids of MovieLens 32M, not only the popular ones the
    evaluation keeps, which is why it scores 0.0000: that is the floor every strategy must beat.
    """

    name = "random"

    def __init__(self, catalog_ids: np.ndarray, seed: int = 0) -> None:
        self.catalog_ids = np.unique(np.asarray(catalog_ids, dtype=np.int64))
        self.seed = seed

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return sample_distinct(rng, self.catalog_ids, len(prev_movie_ids), k)
