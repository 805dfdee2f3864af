"""Queries with context: each evaluation pair's user, moment, previous movie and the user's history.

A pair of ``build_eval_transitions`` says "user u rated ``prev`` and then ``next`` at time t". At
the moment of the recommendation everything the user rated *before* ``next`` is known, so a
strategy may look at it: the history of a query is the user's ratings that come strictly before
the pair's next rating in the evaluation set's own order, (time, then movie id), oldest first.
Earlier evaluation pairs of the same user belong to it (what was known at that moment: the
"iterative revealing" protocol); the next movie itself and anything after it never do.

The history is taken over ALL of the user's ratings, not only the movies that passed the
evaluation set's ``min_movie_ratings`` filter: a strategy sees what the user really watched.
``prev`` stays a field of its own: it is the previous *filtered* movie, the study's query. When
the set was built without a filter (``min_movie_ratings=1``), or when no unfiltered movie sits
between the two, ``prev`` is the history's last element; otherwise the movies rated between
``prev`` and ``next`` (rare ones) come after it. ``prev`` is always in the history.

Speed: only the rows of the queries' users are gathered (a boolean lookup over user ids), sorted
by (user, time, movie) and each query's position found by one merged sort; at 32 M ratings and
3,000 pairs that is about a second and a few hundred MB. The rating columns are used in the dtype
they come in (int32 ids stay int32); only the gathered rows are widened to int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_LOOKUP_LIMIT = 50_000_000
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Queries:
    """A batch of n queries in CSR layout.

    ``prev``, ``users``, ``times`` (the next rating's time: the moment of the query) have length
    n; the history of query i is ``items[offsets[i]:offsets[i+1]]``, oldest first, cut to the last
    ``max_len`` ratings. ``n_earlier`` is the uncut number of earlier ratings (for splits by
    history length); when None it equals the cut lengths.
    """

    prev: np.ndarray
    users: np.ndarray
    times: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    n_earlier: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prev)

    def history(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i]:self.offsets[i + 1]]


def history_lengths(q: Queries) -> np.ndarray:
    """Per query, how many ratings the user made before the next movie (uncut by ``max_len``)."""
    if q.n_earlier is not None:
        return np.asarray(q.n_earlier, dtype=np.int64)
    return np.diff(q.offsets)


HISTORY_BINS = ((1, 1, "1"), (2, 5, "2-5"), (6, 20, "6-20"), (21, None, ">20"))
"""The leaderboard's history-length split: (lowest, highest or None, label)."""


def history_bin_labels(q: Queries) -> np.ndarray:
    """Each query's :data:`HISTORY_BINS` label ("0" for a query without any earlier rating)."""
    lengths = history_lengths(q)
    labels = np.full(len(lengths), "0", dtype=object)
    for low, high, label in HISTORY_BINS:
        labels[(lengths >= low) & ((lengths <= high) if high is not None else True)] = label
    return labels


def queries_from_histories(histories: list, prev=None, users=None, times=None) -> Queries:
    """Queries from explicit histories (oldest first); ``prev`` defaults to each history's last item.

    For hand-made examples and tests; ``users``/``times`` default to 0..n-1 and 0.
    """
    n = len(histories)
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if n else _EMPTY
    if prev is None:
        if (lengths == 0).any():
            raise ValueError("an empty history needs an explicit prev")
        prev = items[offsets[1:] - 1]
    return Queries(
        prev=np.asarray(prev, dtype=np.int64),
        users=np.arange(n, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64),
        times=np.zeros(n, dtype=np.int64) if times is None else np.asarray(times, dtype=np.int64),
        offsets=offsets, items=items, n_earlier=lengths,
    )


QUERY_ARRAYS = ("prev", "users", "times", "offsets", "items", "n_earlier")
"""The arrays of a stored batch of queries (:func:`queries_to_arrays`), one per :class:`Queries` field."""


def queries_to_arrays(q: Queries) -> dict[str, np.ndarray]:
    """The queries as named flat arrays, for a stored ``.npz`` (the ``eval_queries`` asset).

    The histories' movie ids (``items``, the only large array: at 32M 2.2 M ids for 3,000 pairs)
    are stored as int32 when they fit; :func:`queries_from_arrays` gives the same int64 queries back.
    """
    items = q.items
    if len(items) and np.iinfo(np.int32).min <= int(items.min()) and int(items.max()) <= np.iinfo(np.int32).max:
        items = items.astype(np.int32)
    return {"prev": q.prev, "users": q.users, "times": q.times, "offsets": q.offsets, "items": items,
            "n_earlier": history_lengths(q)}


def queries_from_arrays(arrays) -> Queries:
    """The :class:`Queries` of :func:`queries_to_arrays`' arrays (every field int64, as built)."""
    missing = [name for name in QUERY_ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"stored queries lack the array(s) {missing}; expected {list(QUERY_ARRAYS)}")
    fields = {name: np.asarray(arrays[name], dtype=np.int64) for name in QUERY_ARRAYS}
    n = len(fields["prev"])
    if len(fields["offsets"]) != n + 1 or int(fields["offsets"][-1]) != len(fields["items"]):
        raise ValueError(f"stored queries are inconsistent: {n} queries, {len(fields['offsets'])} offsets, "
                         f"{len(fields['items'])} history items")
    return Queries(**fields)


def queries_match_pairs(q: Queries, pairs: pd.DataFrame) -> bool:
    """Whether ``q`` are the queries of ``pairs`` (same users, previous movies and moments, in order)."""
    return len(q) == len(pairs) and all(
        np.array_equal(getattr(q, field), pairs[column].to_numpy(np.int64))
        for field, column in (("users", "userId"), ("prev", "prev_movieId"), ("times", "timestamp")))


def build_queries(pairs: pd.DataFrame, users, movies, times, max_len: int = 200) -> Queries:
    """The queries of evaluation ``pairs`` with each user's history before the pair's next movie.

    ``pairs`` has columns userId, prev_movieId, movieId, timestamp (``build_eval_transitions``:
    timestamp is the NEXT movie's time); ``users``/``movies``/``times`` are the ratings (all of
    them, or any superset of what precedes the pairs). The history of pair i is the user's ratings
    strictly before (timestamp_i, movieId_i) in (time, movie id) order, the last ``max_len`` of them.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    for column in ("userId", "prev_movieId", "movieId", "timestamp"):
        if column not in pairs.columns:
            raise ValueError(f"pairs lacks a {column!r} column (expected build_eval_transitions' frame)")
    users, movies, times = (_integers(c) for c in (users, movies, times))  # as given: no int64 copy of 32 M
    if not (len(users) == len(movies) == len(times)):
        raise ValueError("users, movies and times must have the same length")
    qu = pairs["userId"].to_numpy(np.int64)
    qm = pairs["movieId"].to_numpy(np.int64)
    qt = pairs["timestamp"].to_numpy(np.int64)
    qp = pairs["prev_movieId"].to_numpy(np.int64)
    n = len(qu)

    rows = _rows_of(users, qu)
    u, m, t = (c[rows].astype(np.int64) for c in (users, movies, times))
    r = len(u)
    # One merged sort of ratings and queries by (user, time, movie); a query sorts before a rating
    # with the same key, so the ratings before a query are exactly those strictly before it.
    flag = np.concatenate([np.ones(r, dtype=np.int8), np.zeros(n, dtype=np.int8)])
    merged = np.lexsort((flag, np.concatenate([m, qm]), np.concatenate([t, qt]), np.concatenate([u, qu])))
    is_rating = merged < r
    ratings_before = np.cumsum(is_rating) - is_rating  # ratings ahead of each merged position
    end = np.empty(n, dtype=np.int64)
    end[merged[~is_rating] - r] = ratings_before[~is_rating]
    sorted_rows = merged[is_rating]
    su, sm = u[sorted_rows], m[sorted_rows]
    start = np.searchsorted(su, qu, side="left")
    n_earlier = end - start
    cut = np.maximum(start, end - max_len)
    lengths = end - cut
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(cut - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    items = sm[idx]
    return Queries(prev=qp.copy(), users=qu.copy(), times=qt.copy(), offsets=offsets, items=items,
                   n_earlier=n_earlier)


def _integers(column) -> np.ndarray:
    """A ratings column as a flat integer array, int32 kept as it is (only the gathered rows widen)."""
    column = np.asarray(column).ravel()
    return column if column.dtype.kind in "iu" else column.astype(np.int64)


def _rows_of(users: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of the ratings whose user is among ``wanted``."""
    if len(users) == 0 or len(wanted) == 0:
        return _EMPTY
    top = int(users.max())
    if int(users.min()) >= 0 and top < _LOOKUP_LIMIT:
        owner = np.zeros(top + 1, dtype=bool)
        wanted = wanted[(wanted >= 0) & (wanted <= top)]
        owner[wanted] = True
        return np.flatnonzero(owner[users])
    return np.flatnonzero(np.isin(users, wanted))
