"""Every user's ratings in (time, movie id) order as compact sequences: what the sequence models learn from.

The ratings become an int32 popularity rank plus a uint8 "same user for how many more" per rating
(5 bytes a rating), ordered in blocks of consecutive users by one sort of packed int64 keys, so
memory beyond the output is a few arrays of a block's length. Same order as
``build_eval_transitions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcmd_pipeline.recommenders.ratings import _I64_MAX, _blocks, _columns, _Densifier, _popular_order

_SORT_ROWS = 4_000_000  # ratings per block of users when ordering the sequences
_PAD = 64  # padding around the sequences: a window of +-64 positions reads any position's neighbours


@dataclass(frozen=True)
class _Sequences:
    """Every user's ratings in (time, movie id) order, users one after the other, compactly.

    ``movie`` holds popularity ranks (0 = most rated in the window, ties by smaller movie id), so a
    block of the most rated movies is a range of ranks and "ties by popularity" is "ties by rank";
    ``left`` says how many later ratings of the same user follow each position (capped at 255), so
    positions p and p + g (g <= 255) belong to one user iff ``left[p] >= g``. 5 bytes a rating.
    """

    movie_buf: np.ndarray  # int32 rank per position, _PAD positions of -1 on either side
    left_buf: np.ndarray  # uint8, _PAD zeros on either side
    ids_by_rank: np.ndarray  # int64 movie id of each rank
    counts_by_rank: np.ndarray  # int64 ratings of each rank
    last_time: np.ndarray

    @classmethod
    def padded(cls, n: int, ids_by_rank: np.ndarray, counts_by_rank: np.ndarray,
               last_time: np.ndarray) -> _Sequences:
        """Room for ``n`` ratings (not yet written) between the padding."""
        movie_buf = np.empty(n + 2 * _PAD, dtype=np.int32)
        left_buf = np.empty(n + 2 * _PAD, dtype=np.uint8)
        for buf, fill in ((movie_buf, -1), (left_buf, 0)):
            buf[:_PAD] = fill
            buf[len(buf) - _PAD:] = fill
        return cls(movie_buf, left_buf, ids_by_rank, counts_by_rank, last_time)

    @property
    def movie(self) -> np.ndarray:
        return self.movie_buf[_PAD:len(self.movie_buf) - _PAD]

    @property
    def left(self) -> np.ndarray:
        return self.left_buf[_PAD:len(self.left_buf) - _PAD]

    def dense_of_rank(self) -> np.ndarray:
        """Index of each rank's movie among the sorted movie ids (the states' ``item_ids`` order)."""
        out = np.empty(len(self.ids_by_rank), dtype=np.int64)
        out[np.argsort(self.ids_by_rank, kind="stable")] = np.arange(len(self.ids_by_rank))
        return out


def _sequences(users, movies, times, sort_rows: int = _SORT_ROWS) -> _Sequences:
    """The users' rating sequences of :class:`_Sequences`, built in blocks of users.

    Users are split into blocks of about ``sort_rows`` ratings (consecutive user ids); each block is
    ordered by one sort of packed int64 keys (user, time, movie id), so memory beyond the 5-byte
    output is a few arrays of ``sort_rows``. Same order as ``build_eval_transitions``.
    """
    users, movies, times = _columns(users, movies, times)
    dense_movie = _Densifier(movies)
    m = len(dense_movie.ids)
    counts = dense_movie.counts(movies)
    by_rank = _popular_order(counts)
    rank_of = np.empty(m, dtype=np.int32)
    rank_of[by_rank] = np.arange(m, dtype=np.int32)
    result = _Sequences.padded(len(users), dense_movie.ids[by_rank], counts[by_rank], _last_time(times))
    if len(users) == 0:
        return result
    movie, left = result.movie, result.left
    order = _UserOrder(users, movies, times, dense_movie)
    done = 0
    for first, last in _blocks(order.dense_user.counts(users), sort_rows, order.max_users):
        u, mv = order.sorted_block(first, last)
        here = slice(done, done + len(u))
        movie[here] = rank_of[mv]
        left[here] = _left_in_user(u)
        done += len(u)
        del u, mv
    return result


class _UserOrder:
    """Orders the ratings of a block of consecutive users by (user, time, movie id): one packed int64 key
    ``(user - first) * per_user + time offset * m + movie`` sorted by value and decoded back."""

    def __init__(self, users: np.ndarray, movies: np.ndarray, times: np.ndarray, dense_movie: _Densifier) -> None:
        self.users, self.movies, self.times = users, movies, times
        self.dense_user, self.dense_movie = _Densifier(users), dense_movie
        self.t0 = int(times.min())
        self.m = len(dense_movie.ids)
        self.per_user = (int(times.max()) - self.t0 + 1) * self.m  # key values one user's ratings can take
        self.max_users = max(1, _I64_MAX // self.per_user) if self.per_user <= _I64_MAX else 1

    def sorted_block(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """(user index counted from ``first``, dense movie index) of users ``first..last-1``'s ratings, in order."""
        low_id, high_id = self.dense_user.ids[first], self.dense_user.ids[last - 1]
        rows = np.flatnonzero((self.users >= low_id) & (self.users <= high_id))
        u = self.dense_user(self.users[rows]).astype(np.int64)
        u -= first
        mv = self.dense_movie(self.movies[rows]).astype(np.int64)
        t = self.times[rows] - self.t0
        del rows
        if self.per_user > _I64_MAX:  # absurd time ranges: a three-key sort
            order = np.lexsort((mv, t, u))
            return u[order], mv[order]
        key = u * self.per_user
        t *= self.m
        key += t
        key += mv
        del t, u, mv
        key.sort(kind="stable")  # see ratings._sorted_history: the rows come mostly in user order
        return key // self.per_user, key % self.m


def _left_in_user(u: np.ndarray) -> np.ndarray:
    """For each position of the sorted user labels ``u``: how many later positions hold the same user (at most 255)."""
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    run_end = np.repeat(np.r_[starts[1:], len(u)], np.diff(np.r_[starts, len(u)]))
    run_end -= np.arange(1, len(u) + 1)
    return np.minimum(run_end, 255)


def _last_time(times: np.ndarray) -> np.ndarray:
    return np.array(int(times.max()) if len(times) else -1, dtype=np.int64)
