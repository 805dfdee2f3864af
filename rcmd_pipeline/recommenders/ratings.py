"""Ratings as arrays for every learned strategy: checked columns, dense indexes, chunked counts,
blocks under a budget, and every user's ratings in (time, movie id) order (the sequence models keep
a compacter form of that order, ``user_sequences.py``).

Per-user sequences are ordered by (time, movie id), exactly as ``build_eval_transitions`` orders
them. Sorting 28 M rows by three keys with ``np.lexsort`` takes ~20 s on two cores; instead the
(user, time, movie) triple is packed into one int64 key (dense user and movie indexes, time
offset), the keys are sorted by value (~2 s) and the triple is decoded back from the sorted keys,
so no permutation is ever materialised. MovieLens 32M needs about 2^63.7 key values: its users are
split into blocks of consecutive users, each sorted on its own. Large arrays are read in chunks of
:data:`_CHUNK` rows, so no temporary of their length is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOOKUP_LIMIT = 50_000_000  # ids below this are densified with a lookup table, O(n)
_I64_MAX = 2**63 - 1
_EMPTY = np.zeros(0, dtype=np.int64)
_CHUNK = 1 << 22  # rows per piece when a temporary of a large array's length is avoided
_SORT_BLOCK_ROWS = 1 << 23  # ratings per sorted block of users: 64 MB of int64 keys


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


def _chunks(n: int, factor: int = 1) -> list[slice]:
    """``slice`` s covering ``range(n)`` in pieces of ``factor`` x :data:`_CHUNK` rows."""
    size = factor * _CHUNK
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def sorted_unique(values: np.ndarray, kind: str | None = None) -> np.ndarray:
    """``np.unique(values)`` of 1-D integers by a sort (``kind`` as ``np.sort``'s) and a pass dropping repeats.

    NumPy 2.4's ``np.unique`` hashes first: 2.7 s against 0.15 s for a sort of the 2.2 M history codes of
    3,000 32M-scale queries, 7 s against 0.4 s for 5 M ids spread over a large range.
    """
    out = np.sort(values, kind=kind)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


class _Densifier:
    """Dense index (0..k-1 in id order, int32) of integer ids, in chunks: a lookup table when ids allow."""

    def __init__(self, x: np.ndarray) -> None:
        n = len(x)
        low, high = (int(x.min()), int(x.max())) if n else (0, -1)
        if low >= 0 and high < _LOOKUP_LIMIT:
            present = np.zeros(high + 1, dtype=bool)
            for part in _chunks(n):
                present[x[part]] = True
            self.ids = np.flatnonzero(present).astype(np.int64)
            self._table = np.cumsum(present, dtype=np.int32) - 1 if len(self.ids) else np.zeros(0, np.int32)
        else:  # negative or huge ids: a sort instead of a table
            self.ids = sorted_unique(x).astype(np.int64)
            self._table = None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        if self._table is not None:
            return self._table[chunk]
        return np.searchsorted(self.ids, chunk).astype(np.int32)

    def counts(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.ids), dtype=np.int64)
        for part in _chunks(len(x)):
            out += np.bincount(self(x[part]), minlength=len(self.ids))
        return out


def _dense(x: np.ndarray, index: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(index of each value among the sorted distinct values, as ``index``; the sorted distinct values).

    Looked up chunk by chunk, so no temporary of the input's length is made (NumPy copies an int32
    index array to int64 before indexing with it: 256 MB at 32 M ratings)."""
    densifier = _Densifier(x)
    out = np.empty(len(x), dtype=index)
    for part in _chunks(len(x)):
        out[part] = densifier(x[part])
    return out, densifier.ids


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(index, minlength=n)`` chunk by chunk (bincount copies int32 input to int64)."""
    out = np.zeros(n, dtype=np.int64)
    for part in _chunks(len(index)):
        out += np.bincount(index[part], minlength=n)
    return out


def _popular_order(counts: np.ndarray) -> np.ndarray:
    """Dense indexes, most rated first, ties by smaller index (= smaller movie id)."""
    return np.argsort(-np.asarray(counts), kind="stable")


def _blocks(sizes: np.ndarray, budget: int, max_items: int) -> list[tuple[int, int]]:
    """Consecutive ranges ``[low, high)`` of items whose ``sizes`` sum to at most ``budget`` (an item larger
    than that alone), at most ``max_items`` items each: blocks of users to sort, of movies to pair."""
    ends = np.cumsum(sizes)
    blocks, low = [], 0
    while low < len(sizes):
        before = int(ends[low - 1]) if low else 0
        high = int(np.searchsorted(ends, before + budget, side="right"))
        high = min(max(high, low + 1), low + max_items, len(sizes))
        blocks.append((low, high))
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
    user_counts = _counts(user, n_users)
    for low, high in _blocks(user_counts, _SORT_BLOCK_ROWS, max(1, _I64_MAX // per_user)):
        rows = int(user_counts[low:high].sum())
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
        # stable (a merge of runs): rating files come grouped by user (MovieLens: by user, then movie), so
        # the keys are runs already; at 28.8 M ratings in MovieLens order 1.4-1.6x faster than the default
        # sort, 12 % slower when the rows are shuffled (benchmarks.md)
        key.sort(kind="stable")
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
