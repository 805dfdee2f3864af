"""A reciprocal-rank blend of several strategies' candidate lists (the previous movie only)."""

from __future__ import annotations

import math

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
        out = np.full((n, k), PAD, dtype=np.int64)
        if n == 0 or k == 0:
            return out
        depth = max(self.depth, k)
        ids, scores = [], []
        for rec, weight in self.components:
            if weight == 0:
                continue
            rows = np.asarray(rec.recommend(prev, depth), dtype=np.int64)
            if rows.ndim != 2 or rows.shape[0] != n:
                raise ValueError(f"component {getattr(rec, 'name', rec)!r} returned shape {rows.shape}, "
                                 f"expected ({n}, {depth})")
            ids.append(rows)
            scores.append(np.broadcast_to(weight / (np.arange(1, rows.shape[1] + 1) + self.c0), rows.shape))
        cand = np.concatenate(ids, axis=1)
        score = np.concatenate(scores, axis=1)
        width = cand.shape[1]
        if width == 0:
            return out
        invalid = (cand == PAD) | (cand == prev[:, None])
        sentinel = np.iinfo(np.int64).max
        cand = np.where(invalid, sentinel, cand)

        # Group equal movies of a row: sort each row by id (stable, so a run starts at the movie's
        # first listing), then sum the scores of each run.
        order = np.argsort(cand, axis=1, kind="stable")
        item = np.take_along_axis(cand, order, axis=1).ravel()
        score = np.take_along_axis(score, order, axis=1).ravel()
        first = order.ravel()
        row = np.repeat(np.arange(n), width)
        new_run = np.ones((n, width), dtype=bool)
        new_run[:, 1:] = item.reshape(n, width)[:, 1:] != item.reshape(n, width)[:, :-1]
        starts = np.flatnonzero(new_run.ravel())
        total = np.add.reduceat(score, starts)
        item, first, row = item[starts], first[starts], row[starts]
        ok = item != sentinel
        item, first, row, total = item[ok], first[ok], row[ok], total[ok]

        ranked = np.lexsort((first, -np.round(total, 12), row))
        item, row = item[ranked], row[ranked]
        place = np.arange(len(row)) - np.searchsorted(row, row)  # position within its row
        take = place < k
        out[row[take], place[take]] = item[take]
        return out
