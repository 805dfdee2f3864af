"""Offline metrics of a strategy on the evaluation pairs: plain Python, no Dagster imports."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rcmd_pipeline.recommenders.base import Recommender


def hits_at_k(recommendations: np.ndarray, actual: np.ndarray, k: int) -> np.ndarray:
    """Per pair: is the movie actually watched next among the first k recommendations?"""
    recommendations = np.asarray(recommendations)
    actual = np.asarray(actual)
    if recommendations.ndim != 2 or recommendations.shape[0] != len(actual):
        raise ValueError(
            f"expected recommendations of shape ({len(actual)}, k), got {recommendations.shape}"
        )
    return (recommendations[:, :k] == actual[:, None]).any(axis=1)


def hit_ratio(recommendations: np.ndarray, actual: np.ndarray, k: int = 10) -> float:
    """HitRatio@k: the share of pairs whose next movie is among the k recommendations."""
    if len(actual) == 0:
        raise ValueError("hit ratio of an empty evaluation set is undefined")
    return float(hits_at_k(recommendations, actual, k).mean())


@dataclass(frozen=True)
class Evaluation:
    strategy: str
    k: int
    n: int
    hit_ratio: float
    seconds: float
    hits: np.ndarray
    recommendations: np.ndarray

    @property
    def queries_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def evaluate(recommender: Recommender, prev_movie_ids, next_movie_ids, k: int = 10,
             setup_seconds: float = 0.0, queries=None) -> Evaluation:
    """Run the strategy once over all pairs (one batch call) and score HitRatio@k.

    With ``queries`` (the pairs with their histories, ``history.Queries``) the strategy answers
    ``recommend_queries(queries, k)`` instead of ``recommend(prev, k)``.

    The time counted is the strategy's ``recommend`` call plus ``setup_seconds`` (what building
    the strategy cost: its database query, its index), so queries/s compares what serving the
    pairs costs each strategy, not the cost of loading the evaluation set.
    """
    prev = np.asarray(prev_movie_ids, dtype=np.int64)
    actual = np.asarray(next_movie_ids, dtype=np.int64)
    started = time.perf_counter()
    recs = np.asarray(recommender.recommend(prev, k) if queries is None else recommender.recommend_queries(queries, k))
    seconds = time.perf_counter() - started + setup_seconds
    if recs.shape != (len(prev), k):
        raise ValueError(
            f"strategy {recommender.name!r} returned shape {recs.shape}, expected ({len(prev)}, {k})"
        )
    hits = hits_at_k(recs, actual, k)
    return Evaluation(recommender.name, k, len(prev), float(hits.mean()) if len(hits) else 0.0,
                      seconds, hits, recs)
