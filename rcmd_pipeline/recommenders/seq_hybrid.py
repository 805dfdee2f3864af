"""A reciprocal-rank blend of query recommenders (the sequence models and ``next_movie``), weights tuned
on validation."""

from __future__ import annotations

import numpy as np

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.ratings import _EMPTY
from rcmd_pipeline.recommenders.sequence_scoring import _excluded, _single_item_queries


class PrevOnly:
    """Adapter: a study-style recommender (``recommend(prev, k)``) as a query recommender."""

    def __init__(self, recommender, name: str | None = None) -> None:
        self.recommender = recommender
        self.name = name or recommender.name

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        return np.asarray(self.recommender.recommend(q.prev, k), dtype=np.int64)


def blend_lists(q: Queries, lists: dict[str, np.ndarray], weights: dict[str, float], k: int, c0: float = 10.0,
                exclude_seen: bool = True) -> np.ndarray:
    """Reciprocal-rank blend: a movie at rank r (1-based) of part c scores weight_c / (r + c0).

    Scores add over parts; the k best per row win (ties: listed first, parts in the given order).
    The previous movie, PAD and (with ``exclude_seen``) history movies are never picked.
    """
    n = len(q)
    out = np.full((n, k), PAD, dtype=np.int64)
    names = [name for name in lists if weights.get(name, 0.0) > 0]
    if n == 0 or k == 0 or not names:
        return out
    cand = np.concatenate([np.asarray(lists[name], dtype=np.int64) for name in names], axis=1)
    score = np.concatenate([np.broadcast_to(weights[name] / (np.arange(1, lists[name].shape[1] + 1) + c0),
                                            lists[name].shape) for name in names], axis=1)
    width = cand.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    flat, score, first = cand.ravel(), score.ravel(), np.tile(np.arange(width), n)
    ok = flat != PAD
    ok[ok] = ~_excluded(q, rows[ok], flat[ok], exclude_seen)
    rows, flat, score, first = rows[ok], flat[ok], score[ok], first[ok]
    order = np.lexsort((first, flat, rows))
    rows, flat, score, first = rows[order], flat[order], score[order], first[order]
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (flat[1:] != flat[:-1])]) if len(rows) else _EMPTY
    if len(start) == 0:
        return out
    total = np.add.reduceat(score, start)
    rows, flat, first = rows[start], flat[start], first[start]
    ranked = np.lexsort((first, -np.round(total, 12), rows))
    rows, flat = rows[ranked], flat[ranked]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    take = place < k
    out[rows[take], place[take]] = flat[take]
    return out


class SequenceHybrid:
    """The blend of parts (query recommenders) with weights chosen on validation (``tune_blend``)."""

    name = "seq_hybrid"

    def __init__(self, parts: dict, weights: dict[str, float], depth: int = 50, c0: float = 10.0,
                 exclude_seen: bool = True) -> None:
        if not any(w > 0 for w in weights.values()):
            raise ValueError("every weight is 0: nothing to blend")
        unknown = set(weights) - set(parts)
        if unknown:
            raise ValueError(f"weights for unknown parts {sorted(unknown)}")
        self.parts, self.weights = parts, {n: float(w) for n, w in weights.items()}
        self.depth, self.c0, self.exclude_seen = int(depth), float(c0), bool(exclude_seen)

    def state(self) -> dict[str, np.ndarray]:
        names = list(self.weights)
        return {"part_names": np.array(names, dtype=str),
                "weights": np.array([self.weights[n] for n in names], dtype=np.float64),
                "depth": np.array(self.depth), "c0": np.array(self.c0), "exclude_seen": np.array(self.exclude_seen)}

    @classmethod
    def from_state(cls, state: dict, parts: dict) -> SequenceHybrid:
        weights = {str(n): float(w) for n, w in zip(state["part_names"], state["weights"], strict=True)}
        return cls(parts, weights, depth=int(state["depth"]), c0=float(state["c0"]),
                   exclude_seen=bool(state["exclude_seen"]))

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        depth = max(self.depth, int(k))
        lists = {name: part.recommend_queries(q, depth) for name, part in self.parts.items()
                 if self.weights.get(name, 0.0) > 0}
        return blend_lists(q, lists, self.weights, int(k), self.c0, self.exclude_seen)

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie."""
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)
