"""Sequential rules (Ludewig & Jannach 2018): a -> b weighted 1/gap within a user's sequence."""

from __future__ import annotations

import math

import numpy as np

from rcmd_pipeline.recommenders.pair_table import _NeighbourModel, _pair_table


class SequentialRules(_NeighbourModel):
    """Sequential rules: W[a, b] = sum over users of 1/g for each time b follows a by g <= max_gap.

    Ludewig & Jannach's SR with its 1/gap weighting, on whole user sequences (MovieLens has no
    sessions; the gap is counted in ratings, not time). Each movie keeps its ``top_k`` rules.
    """

    name = "seq_rules"

    @staticmethod
    def fit(users, movies, times, max_gap: int = 10, top_k: int = 200, **kwargs) -> dict[str, np.ndarray]:
        if not 1 <= max_gap <= 20:
            raise ValueError(f"max_gap must be between 1 and 20, got {max_gap}")
        scale = math.lcm(*range(1, max_gap + 1))
        gap_weights = np.array([scale // g for g in range(1, max_gap + 1)], dtype=np.int64)
        return _pair_table(users, movies, times, gap_weights, scale, symmetric=False, top_k=top_k, **kwargs)
