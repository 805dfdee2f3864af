"""The validation protocol: choose hyperparameters on a validation window, score once on evaluation.

::

    ratings ──────────────────────────────────────────────────────────────────────────► time
    [ tuning training: t < tuning_cutoff ][ validation pairs ][ evaluation pairs ]
    [ final training:  t < final_cutoff                     ][ evaluation pairs ]

- evaluation pairs: the study's set (``build_eval_transitions`` over all ratings);
- validation pairs: the same procedure applied to the ratings strictly before the earliest
  evaluation pair (``final_cutoff``), so its min-count filter and recency cut see nothing of the
  evaluation window: the ``eval_size`` most recent pairs before it;
- models for choosing are trained strictly before the earliest validation pair
  (``tuning_cutoff``), the chosen ones are retrained strictly before ``final_cutoff``.

Nothing here reads the evaluation window's ratings when choosing: :func:`tune` and
:func:`tune_blend` see only validation queries, their answers and models trained before them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rcmd_pipeline.evaluation.metrics import hits_at_k
from rcmd_pipeline.evaluation.transitions import TransitionSettings, build_eval_transitions
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.learned import leakage_cutoff
from rcmd_pipeline.recommenders.sequence import blend_lists


@dataclass(frozen=True)
class ValidationSplit:
    evaluation: pd.DataFrame
    validation: pd.DataFrame
    tuning_cutoff: int
    final_cutoff: int


def validation_split(users, movies, times, min_movie_ratings: int = 1000, eval_size: int = 3000) -> ValidationSplit:
    """The evaluation pairs, the validation pairs before them, and the two training cutoffs."""
    users = np.asarray(users, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    settings = TransitionSettings(min_movie_ratings=min_movie_ratings, eval_size=eval_size)
    evaluation = build_eval_transitions(users, movies, times, settings)
    final_cutoff = leakage_cutoff(evaluation)
    before = times < final_cutoff
    validation = build_eval_transitions(users[before], movies[before], times[before], settings)
    return ValidationSplit(evaluation, validation, leakage_cutoff(validation), final_cutoff)


def expand_grid(grid) -> list[dict]:
    """``{"a": [1, 2], "b": ["x"]}`` -> ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]``; a list passes through."""
    if isinstance(grid, dict):
        keys = list(grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    return [dict(p) for p in grid]


@dataclass(frozen=True)
class TuningResult:
    params: dict
    hit_ratio: float
    table: pd.DataFrame


def tune(strategy_factory: Callable[..., object], grid, queries: Queries, actual, k: int = 10) -> TuningResult:
    """Score every parameter set of ``grid`` on the validation queries, keep the best HitRatio@k.

    ``strategy_factory(**params)`` returns a recommender with ``recommend_queries`` trained on the
    tuning window (it may cache fits shared by several parameter sets). Ties go to the earlier
    parameter set of the grid. The table has one row per parameter set: params, hit_ratio, n.
    """
    actual = np.asarray(actual, dtype=np.int64)
    rows, best, best_hr = [], None, -1.0
    for params in expand_grid(grid):
        recs = strategy_factory(**params).recommend_queries(queries, k)
        hr = float(hits_at_k(recs, actual, k).mean()) if len(actual) else float("nan")
        rows.append({**params, "hit_ratio": hr, "n": int(len(actual))})
        if hr > best_hr:
            best, best_hr = params, hr
    if best is None:
        raise ValueError("empty grid: nothing to tune")
    return TuningResult(best, best_hr, pd.DataFrame(rows))


def tune_blend(lists: dict[str, np.ndarray], queries: Queries, actual, k: int = 10,
               weight_grid=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0), c0: float = 10.0, rounds: int = 3,
               exclude_seen: bool = True) -> TuningResult:
    """Blend weights by coordinate ascent on validation HitRatio@k.

    ``lists`` holds each part's recommendations (n x depth) on the validation queries. Start: the
    best single part at weight 1 (so the blend scores at least as well as its best part on
    validation); then, for ``rounds`` passes, each part's weight in turn takes the grid value that
    raises the hit ratio (strictly; ties keep the current weights). The table lists every tried set.
    """
    actual = np.asarray(actual, dtype=np.int64)
    names = list(lists)
    tried: dict[tuple, float] = {}
    rows = []

    def score(weights: dict) -> float:
        key = tuple(weights[n] for n in names)
        if key not in tried:
            if not any(w > 0 for w in key):
                tried[key] = -1.0
            else:
                recs = blend_lists(queries, lists, weights, k, c0, exclude_seen)
                tried[key] = float(hits_at_k(recs, actual, k).mean())
                rows.append({**{f"w_{n}": weights[n] for n in names}, "hit_ratio": tried[key], "n": len(actual)})
        return tried[key]

    singles = [{n: (1.0 if n == name else 0.0) for n in names} for name in names]
    current = max(singles, key=score)  # max keeps the first of equal scores
    best = score(current)
    for _ in range(rounds):
        improved = False
        for name in names:
            for w in weight_grid:
                candidate = {**current, name: float(w)}
                s = score(candidate)
                if s > best:
                    current, best, improved = candidate, s, True
        if not improved:
            break
    return TuningResult(current, best, pd.DataFrame(rows))
