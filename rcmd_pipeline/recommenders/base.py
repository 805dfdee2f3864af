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


def append_usable(out: np.ndarray, counts: np.ndarray, rows: np.ndarray, candidates: np.ndarray,
                  unusable: np.ndarray) -> None:
    """Append to each row ``rows[i]`` of ``out``, after its ``counts`` picks, the ``candidates[i]`` not
    marked ``unusable``, in order, while the row has room; ``out`` and ``counts`` are updated in place."""
    k = out.shape[1]
    ordered = np.take_along_axis(candidates, np.argsort(unusable, axis=1, kind="stable"), axis=1)
    put = np.minimum(k - counts[rows], (~unusable).sum(axis=1))
    for j in range(min(k, candidates.shape[1])):
        sel = j < put
        if not sel.any():
            break
        out[rows[sel], counts[rows[sel]] + j] = ordered[sel, j]
    counts[rows] += put


def fill_with_random(out: np.ndarray, counts: np.ndarray, fill_ids: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Fill each row's tail after its first ``counts[i]`` picks with random distinct ids.

    The study filled short recommendation lists with random movie ids; here the fill never repeats
    an id already in the row. ``out`` is modified in place and returned; rows stay padded with
    :data:`PAD` only when ``fill_ids`` runs out.
    """
    k = out.shape[1]
    rows = np.flatnonzero(counts < k)
    pool = np.asarray(fill_ids, dtype=np.int64)
    if len(rows) == 0 or len(pool) == 0:
        return out
    width = min(k, len(pool))
    exhaustive = width == len(pool)  # every draw holds the whole pool: nothing better to redraw
    todo = rows
    while len(todo):
        draws = _draw(rng, pool, len(todo), width)
        taken = out[todo]
        clash = (draws[:, :, None] == taken[:, None, :]).any(axis=2)
        need = k - counts[todo]
        usable = (~clash).sum(axis=1)
        done = exhaustive | (usable >= need)
        # usable draws first, in drawn order
        ordered = np.take_along_axis(draws, np.argsort(clash, axis=1, kind="stable"), axis=1)
        for j in range(width):
            put = done & (j < np.minimum(need, usable))
            out[todo[put], counts[todo[put]] + j] = ordered[put, j]
        todo = todo[~done]
    return out


def _draw(rng: np.random.Generator, pool: np.ndarray, rows: int, width: int) -> np.ndarray:
    """``rows`` rows of ``width`` distinct ids of ``pool``; permutations when the pool is small."""
    if len(pool) <= 4 * width:
        return rng.permuted(np.broadcast_to(pool, (rows, len(pool))), axis=1)[:, :width]
    return sample_distinct(rng, pool, rows, width)
