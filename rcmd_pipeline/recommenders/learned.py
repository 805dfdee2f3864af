"""Strategies learned from behaviour, beyond the study: popularity, "what people watched next", a blend.

Leakage, and why :func:`training_window` exists
-----------------------------------------------
The evaluation asks, for the most recent "previous movie -> next movie" pairs of users, whether a
strategy recommends the next movie. A strategy that learns from ratings could simply have *seen*
those very pairs: counting "after 260 people watched 1196" over all ratings counts the evaluation
pair itself (and everything later), and the hit ratio becomes a measure of memory, not of
prediction. So every learned strategy here is built from :func:`training_window` only: the ratings
strictly before :func:`leakage_cutoff`, the timestamp of the earliest evaluation pair. Every
evaluation pair's *next* rating is at or after the cutoff, so no evaluation transition (nor
anything after one) can be counted; the *previous* ratings of evaluation pairs may fall before it,
which is fine: the query hands the strategy that movie anyway. Ratings at exactly the cutoff
second are excluded too (strictly before), even if they belong to no evaluation pair: the
evaluation set is ordered by time, and a same-second rating is not "the past" of the first pair.

The classes themselves cannot tell a window from the full data; ``NextMovieRecommender.last_time``
and :func:`transition_pairs` let callers and tests check that what was counted lies before the
cutoff.

Construction speed
------------------
Per-user sequences are ordered by (time, movie id), exactly as ``build_eval_transitions`` orders
them. Sorting 28 M rows by three keys with ``np.lexsort`` takes ~20 s on two cores; instead the
(user, time, movie) triple is packed into one int64 key (dense user and movie indexes, time
offset), the keys are sorted by value (~2 s) and the triple is decoded back from the sorted keys,
so no permutation is ever materialised. MovieLens 32M needs about 2^63.7 key values: its users are
split into two blocks of consecutive users, each sorted on its own. Transitions are counted with
``np.unique`` over encoded (prev, next) pair codes, and ranked with one more packed-key sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rcmd_pipeline.lib.arguments import check_k
from rcmd_pipeline.recommenders.base import PAD, Recommender

MAX_WINDOW = 10
"""Largest ``window`` of :class:`NextMovieRecommender`: weights 1/d are counted exactly as integers
scaled by lcm(1..window) (2,520 at 10)."""

_DENSE_LOOKUP_LIMIT = 50_000_000  # ids below this are densified with a lookup table, O(n)
_I64_MAX = 2**63 - 1
_EMPTY = np.zeros(0, dtype=np.int64)
_CHUNK = 1 << 22  # rows per piece when a temporary of a large array's length is avoided
_SORT_BLOCK_ROWS = 1 << 23  # ratings per sorted block of users: 64 MB of int64 keys


# --------------------------------------------------------------------------------------------
# The training window


def leakage_cutoff(eval_pairs: pd.DataFrame) -> int:
    """The timestamp of the earliest evaluation pair: learned strategies see only ratings before it."""
    if "timestamp" not in eval_pairs.columns:
        raise ValueError("eval_pairs lacks a 'timestamp' column (expected build_eval_transitions' frame)")
    if len(eval_pairs) == 0:
        raise ValueError("eval_pairs is empty: there is no evaluation to protect, hence no cutoff")
    return int(eval_pairs["timestamp"].min())


def training_window(users, movies, times, cutoff: int) -> tuple[np.ndarray, ...]:
    """``(users, movies, times)`` of the ratings strictly before ``cutoff``, as int64 arrays.

    This is the ONLY data a learned strategy may see (see the module docstring: anything at or
    after the earliest evaluation pair would leak the answers into the model). Order is kept; arrays
    that hold only such ratings already (read with the same filter) are returned without a copy.
    """
    users, movies, times = _columns(users, movies, times)
    keep = times < int(cutoff)
    if keep.all():
        return users, movies, times
    return users[keep], movies[keep], times[keep]


# --------------------------------------------------------------------------------------------
# Popularity


class PopularityRecommender:
    """The k most-rated movies of the training window, the same list for every previous movie.

    The previous movie itself is never recommended (the list's first k + 1 are taken and it is
    dropped). Ties in rating count are broken by movie id (smaller first); movies rated fewer than
    ``min_count`` times are left out. Rows are padded with :data:`PAD` only when the window holds
    too few movies. ``movies_in_window`` is the movie column of :func:`training_window`'s result.
    """

    name = "popularity"

    def __init__(self, movies_in_window: np.ndarray, min_count: int = 1) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        movies = np.asarray(movies_in_window, dtype=np.int64).ravel()
        dense, ids = _dense(movies)
        counts = np.bincount(dense, minlength=len(ids))
        order = np.argsort(-counts, kind="stable")  # most rated first, ties by movie id
        order = order[counts[order] >= min_count]
        self.ranked_ids = ids[order]
        self.ranked_counts = counts[order]
        self.min_count = min_count

    def state(self) -> dict[str, np.ndarray]:
        """The learned state as plain arrays (what the ``popularity_model`` asset stores)."""
        return {"ranked_ids": self.ranked_ids.astype(np.int64), "ranked_counts": self.ranked_counts.astype(np.int64),
                "min_count": np.array(self.min_count, dtype=np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PopularityRecommender:
        """The recommender :meth:`state` describes, without the ratings it was counted from."""
        rec = cls.__new__(cls)
        rec.ranked_ids = np.asarray(state["ranked_ids"], dtype=np.int64)
        rec.ranked_counts = np.asarray(state["ranked_counts"], dtype=np.int64)
        rec.min_count = int(state["min_count"])
        return rec

    @property
    def popularity(self) -> pd.Series:
        """Movie id -> rating count in the window (the ranked movies), most rated first."""
        return pd.Series(self.ranked_counts, index=pd.Index(self.ranked_ids, name="movieId"), name="ratings")

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
        k = _check_k(k)
        out = np.full((len(prev), k), PAD, dtype=np.int64)
        top = self.ranked_ids[: k + 1]
        if len(prev) == 0 or k == 0 or len(top) == 0:
            return out
        rows = np.broadcast_to(top, (len(prev), len(top)))
        ok = rows != prev[:, None]
        picked = np.take_along_axis(rows, np.argsort(~ok, axis=1, kind="stable"), axis=1)
        picked = np.where(np.arange(len(top)) < ok.sum(axis=1)[:, None], picked, PAD)
        width = min(k, len(top))
        out[:, :width] = picked[:, :width]
        return out


# --------------------------------------------------------------------------------------------
# Next movie: counted transitions


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
        popularity = _counts(history.movie, m)
        by_rank = np.argsort(-popularity, kind="stable")  # most rated first, ties by movie id
        rank_of = np.empty(m, dtype=np.int64)
        rank_of[by_rank] = np.arange(m)
        self._movie_ids = history.movie_ids  # sorted, for lookups
        self._rank_of = rank_of  # dense index (movie id order) -> popularity rank
        self._ids_by_rank = history.movie_ids[by_rank]

        # Pair codes over popularity ranks, so "ties by popularity then id" is "ties by next code".
        scale = math.lcm(*range(1, window + 1))  # weights 1/d as exact integers scale/d
        codes = _pair_codes(history, rank_of, window)
        self.pair_count = len(codes)
        del history
        codes.sort()  # in place: np.unique would sort a copy (a quarter of a gigabyte at 32 M)
        if len(codes):
            new_run = np.empty(len(codes), dtype=bool)
            new_run[0] = True
            np.not_equal(codes[1:], codes[:-1], out=new_run[1:])
            starts = np.flatnonzero(new_run)
            del new_run
        else:
            starts = _EMPTY
        uniq = codes[starts]
        counts = np.diff(starts, append=len(codes)).astype(np.int64, copy=False)
        del codes, starts
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
        del counts
        prev, nxt = np.divmod(pair, max(m, 1))
        del pair

        # Rank each previous movie's next movies: weighted count down, then popularity rank up.
        top = int(weighted.max()) if len(weighted) else 0
        block = (top + 1) * m
        if m * block <= _I64_MAX:  # one packed-key value sort, decoded back
            key = prev * block
            del prev
            down = top - weighted
            down *= m
            key += down
            key += nxt
            del down, weighted, nxt
            key.sort()
            prev, rest = np.divmod(key, block)
            del key
            weighted, nxt = np.divmod(rest, m)
            del rest
            weighted = top - weighted
        else:
            order = np.lexsort((nxt, -weighted, prev))
            prev, weighted, nxt = prev[order], weighted[order], nxt[order]
        self._offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(prev, minlength=m), out=self._offsets[1:])
        self._next = self._ids_by_rank[nxt]
        self._support = weighted / scale
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
        k = _check_k(k)
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


# --------------------------------------------------------------------------------------------
# Hybrid


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
        k = _check_k(k)
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


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class _History:
    """Ratings ordered by (user, time, movie id); ``user``/``movie`` are dense indexes."""

    user: np.ndarray
    movie: np.ndarray
    time: np.ndarray | None  # None when built compact (not needed by the next-movie counts)
    user_ids: np.ndarray
    movie_ids: np.ndarray


def _columns(users, movies, times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three columns as 1-D integer arrays: ids stay int32 when they are (MovieLens' are: half the
    memory at 32 M ratings; dense indexes are int64 anyway), anything else becomes int64."""
    users, movies = (_ids(x) for x in (users, movies))
    times = np.asarray(times, dtype=np.int64).ravel()
    if not (len(users) == len(movies) == len(times)):
        raise ValueError(f"users, movies and times must have the same length, got "
                         f"{len(users)}, {len(movies)}, {len(times)}")
    return users, movies, times


def _ids(values) -> np.ndarray:
    array = np.asarray(values).ravel()
    return array if array.dtype in (np.int32, np.int64) else array.astype(np.int64)


def _check_window(window: int) -> None:
    if not (1 <= window <= MAX_WINDOW):
        raise ValueError(f"window must be between 1 and {MAX_WINDOW}, got {window}")


def _check_k(k: int) -> int:
    return check_k(k, minimum=0)  # a strategy may be asked for no movies at all


def _dense(x: np.ndarray, index: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(index of each value among the sorted distinct values, as ``index``; the sorted distinct values).

    Looked up chunk by chunk, so no temporary of the input's length is made (NumPy copies an int32
    index array to int64 before indexing with it: 256 MB at 32 M ratings)."""
    if len(x) == 0:
        return _EMPTY.astype(index), _EMPTY
    low, high = int(x.min()), int(x.max())
    if low >= 0 and high < _DENSE_LOOKUP_LIMIT:  # a lookup table: O(n), no sort
        present = np.zeros(high + 1, dtype=bool)
        for part in _chunks(len(x)):
            present[x[part]] = True
        lookup = np.cumsum(present, dtype=index)
        lookup -= 1
        out = np.empty(len(x), dtype=index)
        for part in _chunks(len(x)):
            out[part] = lookup[x[part]]
        return out, np.flatnonzero(present).astype(np.int64)
    uniques, inverse = np.unique(x, return_inverse=True)
    return inverse.astype(index).ravel(), uniques.astype(np.int64)


def _chunks(n: int) -> list[slice]:
    """``slice`` s covering ``range(n)`` in pieces of :data:`_CHUNK`: the large arrays' temporaries stay small."""
    return [slice(start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK)]


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(index, minlength=n)`` chunk by chunk (bincount copies int32 input to int64)."""
    out = np.zeros(n, dtype=np.int64)
    for part in _chunks(len(index)):
        out += np.bincount(index[part], minlength=n)
    return out


def _user_blocks(user: np.ndarray, n_users: int, max_users: int, max_rows: int) -> list[tuple[int, int, int]]:
    """Consecutive dense-user ranges ``(low, high, rows)``: at most ``max_users`` users each (the int64
    key range) and, unless one user has more, at most ``max_rows`` ratings (the size of a block's keys)."""
    ends = np.cumsum(_counts(user, n_users))
    blocks, low = [], 0
    while low < n_users:
        before = int(ends[low - 1]) if low else 0
        high = int(np.searchsorted(ends, before + max_rows, side="right"))
        high = min(max(high, low + 1), low + max_users, n_users)
        blocks.append((low, high, int(ends[high - 1]) - before))
        low = high
    return blocks


def _sorted_history(users: np.ndarray, movies: np.ndarray, times: np.ndarray, compact: bool = False) -> _History:
    """The ratings ordered by (user, time, movie id), as in ``build_eval_transitions``.

    ``compact``: dense indexes as int32 and no sorted ``time`` (None): what :class:`NextMovieRecommender`
    needs, in 1.1 GB less at MovieLens 32M than the full int64 history.
    """
    index = np.int32 if compact else np.int64
    user, user_ids = _dense(users, index)
    movie, movie_ids = _dense(movies, index)
    if len(movie) == 0:
        return _History(_EMPTY, _EMPTY, None if compact else _EMPTY, user_ids, movie_ids)
    t0 = int(times.min())
    span = int(times.max()) - t0 + 1
    n_users, n_movies = len(user_ids), len(movie_ids)
    per_user = span * n_movies  # key values one user's ratings can take
    if per_user > _I64_MAX:  # absurd time ranges: plain three-key sort
        order = np.lexsort((movie, times, user))
        return _History(user[order], movie[order], None if compact else times[order], user_ids, movie_ids)
    # key = (user - low) * per_user + time offset * n_movies + movie, in int64: sorting the keys by
    # value sorts the ratings, and the sorted keys decode back into the sorted columns (int64
    # division by a constant is fast; uint64 is not). The users are taken in blocks of consecutive
    # users, each sorted on its own: few enough users for one int64 key range (MovieLens 32M needs
    # 2), few enough ratings that a block's keys stay small (each key is built chunk by chunk).
    sorted_user, sorted_movie = np.empty(len(user), dtype=index), np.empty(len(movie), dtype=index)
    sorted_time = None if compact else np.empty_like(times)
    done = 0
    for low, high, rows in _user_blocks(user, n_users, max(1, _I64_MAX // per_user), _SORT_BLOCK_ROWS):
        key = np.empty(rows, dtype=np.int64)
        filled = 0
        for part in _chunks(len(user)):
            u = user[part]
            sel = slice(None) if (low == 0 and high == n_users) else (u >= low) & (u < high)
            k = np.subtract(u[sel], low, dtype=np.int64)
            k *= per_user
            offset = np.subtract(times[part][sel], t0, dtype=np.int64)
            offset *= n_movies
            k += offset
            k += movie[part][sel]
            key[filled: filled + len(k)] = k
            filled += len(k)
        key.sort()
        here = slice(done, done + rows)
        done += rows
        np.remainder(key, n_movies, out=sorted_movie[here], casting="unsafe")  # < n_movies: fits
        np.floor_divide(key, n_movies, out=key)
        np.floor_divide(key, span, out=sorted_user[here], casting="unsafe")  # < high - low: fits
        sorted_user[here] += low
        if sorted_time is not None:
            np.remainder(key, span, out=sorted_time[here])
            sorted_time[here] += t0
        del key
    return _History(sorted_user, sorted_movie, sorted_time, user_ids, movie_ids)


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
    k = out.shape[1]
    if extra.ndim != 2 or extra.shape[0] != len(rows):
        raise ValueError(f"fallback returned shape {extra.shape}, expected ({len(rows)}, k)")
    width = extra.shape[1]
    if width == 0:
        return
    have = out[rows]
    bad = (extra == PAD) | (extra == prev[:, None]) | (extra[:, :, None] == have[:, None, :]).any(axis=2)
    earlier = np.tril(np.ones((width, width), dtype=bool), -1)  # [j, i]: i listed before j
    bad |= ((extra[:, :, None] == extra[:, None, :]) & earlier).any(axis=2)
    ordered = np.take_along_axis(extra, np.argsort(bad, axis=1, kind="stable"), axis=1)
    put = np.minimum(k - counts[rows], (~bad).sum(axis=1))
    for j in range(min(k, width)):
        sel = j < put
        out[rows[sel], counts[rows[sel]] + j] = ordered[sel, j]
    counts[rows] += put
