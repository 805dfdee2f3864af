"""What users of the training window watched next after the previous movie, most often first.

Transitions are counted over encoded (prev, next) pair codes and ranked with one packed-key sort;
:func:`transition_pairs` lists the very pairs counted, so tests can check none is an evaluation
pair. The ratings' order and the sort behind it are in ``ratings.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rcmd_pipeline.lib.arguments import check_k
from rcmd_pipeline.recommenders.base import PAD, Recommender, append_usable
from rcmd_pipeline.recommenders.ratings import (
    _EMPTY,
    _I64_MAX,
    _chunks,
    _columns,
    _counts,
    _History,
    _popular_order,
    _sorted_history,
)

MAX_WINDOW = 10
"""Largest ``window`` of :class:`NextMovieRecommender`: weights 1/d are counted exactly as integers
scaled by lcm(1..window) (2,520 at 10)."""


@dataclass(frozen=True)
class TransitionPairs:
    """The (previous -> next) rating pairs :class:`NextMovieRecommender` counts, one per row.

    ``timestamp`` is the next rating's time, ``prev_timestamp`` the previous one's, ``distance``
    how many ratings apart they are in the user's sequence (1 = consecutive; weight 1/distance).
    """

    user_id: np.ndarray
    prev_movie_id: np.ndarray
    movie_id: np.ndarray
    prev_timestamp: np.ndarray
    timestamp: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.movie_id)

    def to_frame(self) -> pd.DataFrame:
        """Columns named like ``build_eval_transitions``' (userId, prev_movieId, movieId, timestamp) + 2."""
        return pd.DataFrame({
            "userId": self.user_id, "prev_movieId": self.prev_movie_id, "movieId": self.movie_id,
            "timestamp": self.timestamp, "prev_timestamp": self.prev_timestamp, "distance": self.distance,
        })


def transition_pairs(users, movies, times, window: int = 1) -> TransitionPairs:
    """Every (prev, next) pair :class:`NextMovieRecommender` counts on the same ratings and window.

    Each user's ratings are ordered by (time, movie id); a rating and each of the next ``window``
    ratings of the same user form a pair, unless both are the same movie. Pass the result of
    :func:`training_window`: this is what lets a test assert that no evaluation pair is counted.
    Built by the same code path as the recommender's counts, so the two cannot drift apart.
    """
    _check_window(window)
    history = _sorted_history(*_columns(users, movies, times))
    parts = [(d, _pair_starts(history.user, history.movie, d)) for d in range(1, window + 1)]
    first = np.concatenate([i for _, i in parts]) if parts else _EMPTY
    then = np.concatenate([i + d for d, i in parts]) if parts else _EMPTY
    return TransitionPairs(
        user_id=history.user_ids[history.user[first]],
        prev_movie_id=history.movie_ids[history.movie[first]],
        movie_id=history.movie_ids[history.movie[then]],
        prev_timestamp=history.time[first],
        timestamp=history.time[then],
        distance=np.concatenate([np.full(len(i), d, dtype=np.int64) for d, i in parts]),
    )


class NextMovieRecommender:
    """What users of the training window watched next after the previous movie, most often first.

    From each user's ratings ordered by (time, movie id) — the order ``build_eval_transitions``
    uses — every rating followed by another of the same user counts one transition prev -> next.
    With ``window`` > 1 the next ``window`` ratings each count, weighted 1/distance (1, 1/2, 1/3,
    ...), so "watched two films later" still says something, less. A movie never follows itself.
    Pairs observed fewer than ``min_support`` times (occurrences at any distance, unweighted) are
    ignored: the default 1 keeps every observed pair.

    For a previous movie: the next movies by weighted count, ties by popularity in the window (more
    ratings first) then movie id; then, while the row is short, picks of ``fallback`` (asked for
    k + 1 per short row) that are neither the previous movie nor already listed; then :data:`PAD`.

    Give it only :func:`training_window`'s arrays. ``last_time`` (the latest time it saw) lets a
    caller assert ``last_time < cutoff``.
    """

    name = "next_movie"

    def __init__(self, users, movies, times, fallback: Recommender | None = None, min_support: int = 1,
                 window: int = 1) -> None:
        _check_window(window)
        if int(min_support) != min_support or min_support < 1:
            raise ValueError(f"min_support must be a whole number of at least 1, got {min_support}")
        min_support = int(min_support)
        users, movies, times = _columns(users, movies, times)
        self.fallback = fallback
        self.min_support = min_support
        self.window = window
        self.rating_count = len(movies)
        self.last_time: int | None = int(times.max()) if len(times) else None

        history = _sorted_history(users, movies, times, compact=True)
        del users, movies, times
        m = len(history.movie_ids)
        by_rank = _popular_order(_counts(history.movie, m))  # most rated first, ties by movie id
        rank_of = np.empty(m, dtype=np.int64)
        rank_of[by_rank] = np.arange(m)
        self._movie_ids = history.movie_ids  # sorted, for lookups
        self._rank_of = rank_of  # dense index (movie id order) -> popularity rank
        self._ids_by_rank = history.movie_ids[by_rank]

        # Pair codes over popularity ranks, so "ties by popularity then id" is "ties by next code".
        # Each step takes its arrays out of `pairs` and puts its results back, so an array as long
        # as the pairs (32 M of them at MovieLens 32M) is freed as soon as the next one is made.
        pairs = {"code": _pair_codes(history, rank_of, window)}
        del history
        self.pair_count = len(pairs["code"])
        scale = math.lcm(*range(1, window + 1))  # weights 1/d as exact integers scale/d
        _count_codes(pairs)
        _weigh_pairs(pairs, window, scale, min_support)
        _rank_pairs(pairs, m)
        self._offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs["prev"], minlength=m), out=self._offsets[1:])
        self._next = self._ids_by_rank[pairs["next"]]
        self._support = pairs["weight"] / scale
        self.distinct_pairs = len(self._next)

    _STATE = ("_movie_ids", "_rank_of", "_ids_by_rank", "_offsets", "_next", "_support")
    _SCALARS = ("min_support", "window", "rating_count", "pair_count", "distinct_pairs")

    def state(self) -> dict[str, np.ndarray]:
        """The learned state as plain arrays (what the ``next_movie_model`` asset stores), without the
        fallback, which is a model of its own. Movie ids are stored as int32 when they fit."""
        out = {name.lstrip("_"): getattr(self, name) for name in self._STATE}
        if len(out["next"]) and int(out["next"].max()) < 2**31 and int(out["next"].min()) >= 0:
            out["next"] = out["next"].astype(np.int32)
        out.update({name: np.array(getattr(self, name), dtype=np.int64) for name in self._SCALARS})
        out["last_time"] = np.array(-1 if self.last_time is None else self.last_time, dtype=np.int64)
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], fallback: Recommender | None = None) -> NextMovieRecommender:
        """The recommender :meth:`state` describes (plus an optional fallback), without recounting."""
        rec = cls.__new__(cls)
        for name in cls._STATE:
            setattr(rec, name, np.asarray(state[name.lstrip("_")]))
        for name in cls._SCALARS:
            setattr(rec, name, int(state[name]))
        last = int(state["last_time"])
        rec.last_time = None if last == -1 else last
        rec.fallback = fallback
        return rec

    def next_movies(self, movie_id: int) -> list[tuple[int, float]]:
        """The ranked (next movie id, weighted count) list of one previous movie (for inspection)."""
        start, stop = self._segment(np.array([movie_id], dtype=np.int64))
        return [(int(a), float(b)) for a, b in
                zip(self._next[start[0]:stop[0]], self._support[start[0]:stop[0]], strict=True)]

    def _segment(self, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self._movie_ids) == 0:
            zero = np.zeros(len(prev), dtype=np.int64)
            return zero, zero
        pos = np.minimum(np.searchsorted(self._movie_ids, prev), len(self._movie_ids) - 1)
        known = self._movie_ids[pos] == prev
        rank = self._rank_of[pos]
        start = self._offsets[rank]
        return start, np.where(known, self._offsets[rank + 1], start)

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
        k = check_k(k, minimum=0)  # a strategy may be asked for no movies at all
        out = np.full((len(prev), k), PAD, dtype=np.int64)
        start, stop = self._segment(prev)
        counts = np.minimum(stop - start, k)
        cols = np.arange(k)
        mask = cols < counts[:, None]
        out[mask] = self._next[(start[:, None] + cols)[mask]]
        if self.fallback is not None:
            short = np.flatnonzero(counts < k)
            if len(short):
                extra = np.asarray(self.fallback.recommend(prev[short], k + 1), dtype=np.int64)
                _append_distinct(out, counts, short, extra, prev[short])
        return out


def _check_window(window: int) -> None:
    if not (1 <= window <= MAX_WINDOW):
        raise ValueError(f"window must be between 1 and {MAX_WINDOW}, got {window}")



def _pair_codes(history: _History, rank_of: np.ndarray, window: int) -> np.ndarray:
    """The code of every (prev, next) pair of :class:`NextMovieRecommender`, unsorted:
    ``rank(prev) * m + rank(next)``, times ``window`` plus ``distance - 1`` when ``window`` > 1.

    Filled chunk by chunk into one array (a first pass counts the pairs at each distance), so the
    only allocation of the pairs' length is the result itself."""
    user, movie, m = history.user, history.movie, len(rank_of)
    rank = rank_of.astype(np.int32 if m < 2**31 else np.int64)
    n = len(movie)

    def pieces(d: int):
        for part in _chunks(max(n - d, 0)):
            after = slice(part.start + d, part.stop + d)
            yield part, after, (user[after] == user[part]) & (movie[after] != movie[part])

    total = sum(int(np.count_nonzero(ok)) for d in range(1, window + 1) for _, _, ok in pieces(d))
    codes = np.empty(total, dtype=np.int64)
    filled = 0
    for d in range(1, window + 1):
        for part, after, ok in pieces(d):
            out = codes[filled: filled + int(np.count_nonzero(ok))]
            filled += len(out)
            np.multiply(rank[movie[part][ok]], m, out=out, dtype=np.int64)
            out += rank[movie[after][ok]]
            if window > 1:
                out *= window
                out += d - 1
    return codes



def _count_codes(pairs: dict[str, np.ndarray]) -> None:
    """``code`` (one per pair instance) -> ``code`` (each distinct code once, ascending) and its ``count``."""
    codes = pairs.pop("code")
    codes.sort()  # in place: np.unique would sort a copy (a quarter of a gigabyte at 32 M)
    if len(codes):
        new_run = np.empty(len(codes), dtype=bool)
        new_run[0] = True
        np.not_equal(codes[1:], codes[:-1], out=new_run[1:])
        starts = np.flatnonzero(new_run)
        del new_run
    else:
        starts = _EMPTY
    pairs["code"] = codes[starts]
    pairs["count"] = np.diff(starts, append=len(codes)).astype(np.int64, copy=False)


def _weigh_pairs(pairs: dict[str, np.ndarray], window: int, scale: int, min_support: int) -> None:
    """``code``, ``count`` -> ``pair`` (prev rank * m + next rank) and ``weight``: the occurrences at each
    distance d times ``scale // d``, summed; pairs seen fewer than ``min_support`` times are dropped."""
    uniq, counts = pairs.pop("code"), pairs.pop("count")
    if window > 1 and len(uniq):
        pair = uniq // window
        weighted = counts * (scale // (uniq % window + 1))
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        pair = pair[starts]
        weighted, counts = np.add.reduceat(weighted, starts), np.add.reduceat(counts, starts)
    else:
        pair, weighted = uniq, counts
    del uniq
    if min_support > 1:
        keep = counts >= min_support
        pair, weighted = pair[keep], weighted[keep]
    pairs["pair"], pairs["weight"] = pair, weighted


def _rank_pairs(pairs: dict[str, np.ndarray], m: int) -> None:
    """``pair``, ``weight`` -> ``prev``, ``next`` (popularity ranks) and ``weight``, ordered by previous
    movie, then weight down, then next movie's rank (one packed-key value sort, decoded back)."""
    pair, weighted = pairs.pop("pair"), pairs.pop("weight")
    prev, nxt = np.divmod(pair, max(m, 1))
    del pair
    top = int(weighted.max()) if len(weighted) else 0
    block = (top + 1) * m
    if m * block <= _I64_MAX:
        key = prev * block
        del prev
        down = top - weighted
        down *= m
        key += down
        key += nxt
        del down, weighted, nxt
        key.sort(kind="stable")  # already ordered by previous movie (_count_codes): runs to merge
        prev, rest = np.divmod(key, block)
        del key
        weighted, nxt = np.divmod(rest, m)
        del rest
        weighted = top - weighted
    else:
        order = np.lexsort((nxt, -weighted, prev))
        prev, weighted, nxt = prev[order], weighted[order], nxt[order]
    pairs["prev"], pairs["next"], pairs["weight"] = prev, nxt, weighted


def _pair_starts(user: np.ndarray, movie: np.ndarray, d: int) -> np.ndarray:
    """Positions i of the ordered history where i -> i + d is a transition: same user, another movie."""
    if len(user) <= d:
        return _EMPTY
    return np.flatnonzero((user[d:] == user[:-d]) & (movie[d:] != movie[:-d]))


def _append_distinct(out: np.ndarray, counts: np.ndarray, rows: np.ndarray, extra: np.ndarray,
                     prev: np.ndarray) -> None:
    """Append to ``out[rows]`` (after ``counts[rows]`` picks) the ids of ``extra`` (same rows, in
    order) that are not PAD, not the previous movie, not already in the row and not repeated.
    ``out`` and ``counts`` are updated in place."""
    if extra.ndim != 2 or extra.shape[0] != len(rows):
        raise ValueError(f"fallback returned shape {extra.shape}, expected ({len(rows)}, k)")
    width = extra.shape[1]
    if width == 0:
        return
    have = out[rows]
    bad = (extra == PAD) | (extra == prev[:, None]) | (extra[:, :, None] == have[:, None, :]).any(axis=2)
    earlier = np.tril(np.ones((width, width), dtype=bool), -1)  # [j, i]: i listed before j
    bad |= ((extra[:, :, None] == extra[:, None, :]) & earlier).any(axis=2)
    append_usable(out, counts, rows, extra, bad)
