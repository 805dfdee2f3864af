"""A reciprocal-rank blend of several strategies' candidate lists (the previous movie only)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from rcmd_pipeline.lib.arguments import check_k
from rcmd_pipeline.recommenders.base import PAD, Recommender


class HybridRecommender:
    """RRF-style blend (reciprocal-rank fusion) of several strategies' candidate lists.

    Each component recommends ``max(depth, k)`` movies per query, in one batch call per component.
    A movie at rank r (1-based) of component c scores ``weight_c / (r + c0)``; a movie's score is
    the sum over the components that list it, and the k best scores are recommended. Equal scores
    (compared to 12 decimals) go to the movie listed first, components taken in the given order
    and ranks within a component. The previous movie itself and :data:`PAD` are never candidates;
    a movie listed by several components appears once. Rows are padded with :data:`PAD` only when
    the components together offer fewer than k movies.

    Classic RRF uses c0 = 60 and equal weights; a small ``c0`` (default 10) lets the top of each
    list count for more. Components with weight 0 are not called (a blend can switch one off);
    the weights and ``c0`` are meant to become configuration.
    """

    name = "hybrid"

    def __init__(self, components: list[tuple[Recommender, float]], depth: int = 20, c0: float = 10.0) -> None:
        components = [(rec, float(weight)) for rec, weight in components]
        if not components:
            raise ValueError("a hybrid needs at least one component")
        for rec, weight in components:
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"component {getattr(rec, 'name', rec)!r}: weight must be finite and >= 0, "
                                 f"got {weight}")
        if not any(weight > 0 for _, weight in components):
            raise ValueError("every component has weight 0: nothing to blend")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if not (math.isfinite(c0) and c0 >= 0):
            raise ValueError(f"c0 must be finite and >= 0, got {c0}")
        self.components = components
        self.depth = depth
        self.c0 = float(c0)

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
        k = check_k(k, minimum=0)  # a strategy may be asked for no movies at all
        n = len(prev)
        if n == 0 or k == 0:
            return np.full((n, k), PAD, dtype=np.int64)
        depth = max(self.depth, k)
        lists, weights = [], []
        for rec, weight in self.components:
            if weight == 0:
                continue
            rows = np.asarray(rec.recommend(prev, depth), dtype=np.int64)
            if rows.ndim != 2 or rows.shape[0] != n:
                raise ValueError(f"component {getattr(rec, 'name', rec)!r} returned shape {rows.shape}, "
                                 f"expected ({n}, {depth})")
            lists.append(rows)
            weights.append(weight)
        return blend_ranked(lists, weights, n, k, self.c0, lambda rows, ids: ids == prev[rows])


def blend_ranked(lists: Sequence[np.ndarray], weights: Sequence[float], n: int, k: int, c0: float,
                 excluded: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Reciprocal-rank fusion of ranked id lists, one ``(n, width)`` array per part: a movie at rank r
    (1-based) of a part of weight w scores ``w / (r + c0)``, scores add over the parts that list it,
    and the k best per row win. Equal scores (to 12 decimals) go to the movie listed first, parts in
    the given order. :data:`PAD` and the (row, id) pairs ``excluded(rows, ids)`` marks are never picked."""
    out = np.full((n, k), PAD, dtype=np.int64)
    if n == 0 or k == 0 or not lists:
        return out
    cand = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in lists], axis=1)
    score = np.concatenate([np.broadcast_to(w / (np.arange(1, ids.shape[1] + 1) + c0), ids.shape)
                            for ids, w in zip(lists, weights, strict=True)], axis=1)
    width = cand.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    flat, score, first = cand.ravel(), score.ravel(), np.tile(np.arange(width), n)
    ok = flat != PAD
    ok[ok] = ~excluded(rows[ok], flat[ok])
    rows, flat, score, first = rows[ok], flat[ok], score[ok], first[ok]
    # each movie of a row once: its scores summed in listing order, its first listing kept for ties
    order = np.lexsort((first, flat, rows))
    rows, flat, score, first = rows[order], flat[order], score[order], first[order]
    if len(rows) == 0:
        return out
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (flat[1:] != flat[:-1])])
    total = np.add.reduceat(score, start)
    rows, flat, first = rows[start], flat[start], first[start]
    ranked = np.lexsort((first, -np.round(total, 12), rows))
    rows, flat = rows[ranked], flat[ranked]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    take = place < k
    out[rows[take], place[take]] = flat[take]
    return out
