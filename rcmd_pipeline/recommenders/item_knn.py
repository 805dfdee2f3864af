"""Item-kNN: cosine similarity of movies rated close together in users' sequences."""

from __future__ import annotations

import numpy as np

from rcmd_pipeline.recommenders.pair_table import _NeighbourModel, _pair_tables


class ItemKNN(_NeighbourModel):
    """Item-kNN: cosine of co-occurrence within ``window`` ratings of each other in a user's sequence.

    C(a, b) counts the pairs of positions at most ``window`` apart (either order) holding a and b;
    sim(a, b) = C(a, b) / (sqrt(n_a * n_b) + shrink), n = ratings in the training window. A window
    instead of whole user sets keeps the count linear in the ratings (a heavy MovieLens user has
    tens of thousands) and makes "seen close together" mean something. ``top_k`` neighbours each.
    """

    name = "item_knn"

    @staticmethod
    def fit(users, movies, times, window: int = 10, shrink: float = 10.0, top_k: int = 200,
            **kwargs) -> dict[str, np.ndarray]:
        return ItemKNN.fit_shrinks(users, movies, times, [shrink], window=window, top_k=top_k, **kwargs)[0]

    @staticmethod
    def fit_shrinks(users, movies, times, shrinks, window: int = 10, top_k: int = 200,
                    **kwargs) -> list[dict[str, np.ndarray]]:
        """:meth:`fit` for each of ``shrinks`` (the same states), the co-occurrences counted once."""
        if not 1 <= window <= 50:
            raise ValueError(f"window must be between 1 and 50, got {window}")
        for shrink in shrinks:
            if shrink < 0:
                raise ValueError(f"shrink must be >= 0, got {shrink}")
        return _pair_tables(users, movies, times, np.ones(window, dtype=np.int64), 1, symmetric=True, top_k=top_k,
                            shrinks=[float(s) for s in shrinks], **kwargs)
