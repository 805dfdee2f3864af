"""The strategy interface: one batch call per evaluation, never one network round trip per query."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

PAD = -1
"""Filler id in a recommendation row that has fewer than k movies."""


@runtime_checkable
class Recommender(Protocol):
    """Recommends, for each previous movie, the k movies a user should watch next.

    ``recommend`` takes the previous movie ids (1-D) and returns an int64 array of shape
    ``(len(prev_movie_ids), k)``: row i holds the picks for ``prev_movie_ids[i]``, best first,
    padded with :data:`PAD` when a strategy has fewer than k to offer.
    """

    name: str

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray: ...


def sample_distinct(rng: np.random.Generator, pool: np.ndarray, rows: int, k: int) -> np.ndarray:
    """``rows`` rows of ``k`` distinct ids drawn uniformly from ``pool`` (itself distinct ids).

    Equivalent to calling ``rng.choice(pool, k, replace=False)`` per row, but vectorised: rows that
    drew a duplicate are redrawn, which with k << len(pool) touches almost nothing.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if k > len(pool):
        raise ValueError(f"cannot draw {k} distinct ids from a pool of {len(pool)}")
    out = np.empty((rows, k), dtype=np.int64)
    todo = np.arange(rows)
    while len(todo):
        draw = pool[rng.integers(0, len(pool), size=(len(todo), k))]
        out[todo] = draw
        ordered = np.sort(draw, axis=1)
        dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1) if k > 1 else np.zeros(len(todo), bool)
        todo = todo[dup]
    return out
