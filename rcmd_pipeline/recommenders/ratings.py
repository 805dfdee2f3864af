"""Ratings as arrays for the learned strategies: checked columns, dense indexes, chunked counts, and
every user's ratings in (time, movie id) order.

Per-user sequences are ordered by (time, movie id), exactly as ``build_eval_transitions`` orders
them. Sorting 28 M rows by three keys with ``np.lexsort`` takes ~20 s on two cores; instead the
(user, time, movie) triple is packed into one int64 key (dense user and movie indexes, time
offset), the keys are sorted by value (~2 s) and the triple is decoded back from the sorted keys,
so no permutation is ever materialised. MovieLens 32M needs about 2^63.7 key values: its users are
split into two blocks of consecutive users, each sorted on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DENSE_LOOKUP_LIMIT = 50_000_000  # ids below this are densified with a lookup table, O(n)
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
