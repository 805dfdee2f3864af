"""A reciprocal-rank blend of query recommenders (the sequence models and ``next_movie``), weights tuned
on validation."""

from __future__ import annotations

import numpy as np

from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.hybrid import blend_ranked
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
    """Reciprocal-rank blend (:func:`~rcmd_pipeline.recommenders.hybrid.blend_ranked`) of the parts with a
    weight above 0: the previous movie, PAD and (with ``exclude_seen``) history movies are never picked."""
    names = [name for name in lists if weights.get(name, 0.0) > 0]
    return blend_ranked([lists[name] for name in names], [weights[name] for name in names], len(q), k, c0,
                        lambda rows, ids: _excluded(q, rows, ids, exclude_seen))


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
