"""Scoring a query from its recent history, shared by the sequence models (SR, item-kNN, SLIST).

The last ``last_n`` movies of the query's history that the model knows, the j-th most recent
weighted by ``decay`` ("harmonic" 1/j, "linear" (n-j+1)/n, "flat" 1), give score(b) = sum_j
decay(j) * W[a_j, b]. The k best scores are recommended (ties: more rated in the training window
first, then smaller movie id); short rows are filled with the most rated movies of the training
window. The previous movie itself is never recommended (as ``next_movie``, ``popularity`` and
``hybrid``); with ``exclude_seen`` no movie of the query's history is either.
"""

from __future__ import annotations

import hashlib

import numpy as np

from rcmd_pipeline.recommenders.base import PAD, append_usable
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.ratings import sorted_unique

DECAYS = ("harmonic", "linear", "flat")


def decay_weights(j: np.ndarray, n: int, decay: str) -> np.ndarray:
    """Weight of the j-th most recent history movie (j = 1 is the most recent) among the last n."""
    j = np.asarray(j, dtype=np.float64)
    if decay == "harmonic":
        return 1.0 / j
    if decay == "linear":
        return (n - j + 1.0) / n
    if decay == "flat":
        return np.ones_like(j)
    raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")


def _check_query_params(last_n: int, decay: str) -> None:
    if last_n < 1:
        raise ValueError(f"last_n must be at least 1, got {last_n}")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Dense index of each id in ``sorted_ids``, -1 when absent."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def _history_positions(q: Queries, sorted_ids: np.ndarray) -> np.ndarray:
    """``_lookup(sorted_ids, q.items)``: each history movie's index in a model's sorted movie ids.

    Kept on the batch of queries (cached on it) for the last set of ids asked: every query setting of
    one fitted model, and every fit of SLIST's grid (one item set), look up the same histories, which
    at MovieLens-32M scale are millions of movies a batch. Callers must not modify the result.
    """
    sorted_ids = np.asarray(sorted_ids, dtype=np.int64)
    key = (len(sorted_ids), hashlib.blake2b(sorted_ids.tobytes(), digest_size=16).digest())
    cached = q.__dict__.get("_history_positions")
    if cached is None or cached[0] != key:
        cached = q.__dict__["_history_positions"] = (key, _lookup(sorted_ids, q.items))
    return cached[1]


def _recent_known(q: Queries, dense_items: np.ndarray, last_n: int) -> tuple[np.ndarray, ...]:
    """(row, dense item, j) of the last ``last_n`` known history movies of each query (j = 1 newest)."""
    lengths = np.diff(q.offsets)
    row = np.repeat(np.arange(len(q), dtype=np.int64), lengths)
    known = dense_items >= 0
    row, item = row[known], dense_items[known]
    per_row = np.bincount(row, minlength=len(q))
    first = np.zeros(len(q) + 1, dtype=np.int64)
    np.cumsum(per_row, out=first[1:])
    j = per_row[row] - (np.arange(len(row)) - first[row])
    keep = j <= last_n
    return row[keep], item[keep], j[keep]


def _history_codes(q: Queries) -> tuple[np.ndarray, int]:
    """(sorted codes row * scale + movie id of every (query, history movie) and (query, prev), scale).

    Computed once per batch of queries (cached on it): every part and setting scored on the same
    queries excludes with the same codes.
    """
    cached = q.__dict__.get("_history_codes")
    if cached is None:
        scale = int(max(q.items.max(initial=0), q.prev.max(initial=0))) + 1
        row = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(q.offsets))
        codes = np.concatenate([row * scale + q.items, np.arange(len(q), dtype=np.int64) * scale + q.prev])
        # stable: the codes are two runs already in row order, a merge (0.07 s against 0.15 s at 32M scale)
        cached = q.__dict__["_history_codes"] = (sorted_unique(codes, kind="stable"), scale)
    return cached


def _excluded(q: Queries, rows: np.ndarray, ids: np.ndarray, exclude_seen: bool) -> np.ndarray:
    """Per (row, movie id): the query's previous movie, or (exclude_seen) any movie of its history."""
    if not exclude_seen:
        return ids == q.prev[rows]
    codes, scale = _history_codes(q)
    inside = (ids >= 0) & (ids < scale)  # an id above every history id is in no history
    wanted = rows * scale + np.where(inside, ids, 0)
    at = np.minimum(np.searchsorted(codes, wanted), max(len(codes) - 1, 0))
    return inside & (codes[at] == wanted) if len(codes) else np.zeros(len(ids), dtype=bool)


def _best_per_row(rows: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Mask of the candidates that can be among their row's k best: each row's k highest scores
    (as float32, an order-keeping rounding) and everything tied with the k-th; rows sorted or not."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    bits = np.maximum(score, 0).astype(np.float32).view(np.int32).astype(np.int64)
    key = rows << 32
    key |= 0x7F800000 - bits  # descending score within a row
    ordered = np.sort(key, kind="stable")  # rows come in order from every caller: runs to merge
    start = np.flatnonzero(np.r_[True, (ordered[1:] >> 32) != (ordered[:-1] >> 32)])
    count = np.diff(np.r_[start, len(ordered)])
    limit = np.full(int(rows.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    full = count > k
    limit[ordered[start[full]] >> 32] = ordered[start[full] + k - 1]
    return key <= limit[rows]


def _finish(q: Queries, k: int, rows: np.ndarray, ids: np.ndarray, score: np.ndarray, tie: np.ndarray,
            popular_ids: np.ndarray, exclude_seen: bool) -> np.ndarray:
    """Top-k movie ids per query from scored candidates, then popularity fill, then PAD.

    ``rows``/``ids``/``score``/``tie`` list candidates (a movie at most once per row); higher score
    first, then smaller ``tie``. Excluded movies (prev; with exclude_seen the history) are dropped.
    """
    n = len(q)
    out = np.full((n, k), PAD, dtype=np.int64)
    if n == 0 or k == 0:
        return out
    if len(rows):
        drop = _excluded(q, rows, ids, exclude_seen) | ~(score > 0)
        rows, ids, score, tie = rows[~drop], ids[~drop], score[~drop], tie[~drop]
        score = np.round(score, 10)
        near = _best_per_row(rows, score, k)  # the exact ranking below needs only these
        rows, ids, score, tie = rows[near], ids[near], score[near], tie[near]
        order = np.lexsort((tie, -score, rows))
        rows, ids = rows[order], ids[order]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        take = place < k
        out[rows[take], place[take]] = ids[take]
    counts = (out != PAD).sum(axis=1)
    short = np.flatnonzero(counts < k)
    if len(short) and len(popular_ids):
        _fill(out, counts, short, q, popular_ids, exclude_seen)
    return out


def _fill(out: np.ndarray, counts: np.ndarray, short: np.ndarray, q: Queries, popular_ids: np.ndarray,
          exclude_seen: bool) -> None:
    """Append the most rated movies, skipping those already listed or excluded, to the short rows."""
    k = out.shape[1]
    lengths = np.diff(q.offsets)[short]
    width = min(len(popular_ids), k + 1 + (int(lengths.max(initial=0)) if exclude_seen else 0) + k)
    cand = np.broadcast_to(popular_ids[:width], (len(short), width))
    rows = np.repeat(short, width)
    bad = _excluded(q, rows, cand.ravel(), exclude_seen).reshape(len(short), width)
    listed = out[short]  # already in the row: compared as sorted codes row * scale + id
    valid = listed != PAD
    scale = int(max(cand.max(initial=0), listed.max(initial=0))) + 1
    codes = np.sort(np.nonzero(valid)[0] * scale + listed[valid])
    wanted = np.arange(len(short), dtype=np.int64)[:, None] * scale + cand
    at = np.minimum(np.searchsorted(codes, wanted), max(len(codes) - 1, 0))
    bad |= (codes[at] == wanted) if len(codes) else False
    append_usable(out, counts, short, cand, bad)


def _single_item_queries(prev_movie_ids) -> Queries:
    prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
    n = len(prev)
    return Queries(prev=prev, users=np.zeros(n, dtype=np.int64), times=np.zeros(n, dtype=np.int64),
                   offsets=np.arange(n + 1, dtype=np.int64), items=prev.copy(), n_earlier=np.ones(n, np.int64))


class _HistoryModel:
    """What the sequence models (SR, item-kNN, SLIST) share: the query parameters, rebuilding from a
    state, and the Recommender interface (a history of just the previous movie)."""

    def _set_query_params(self, state: dict, last_n: int, decay: str, exclude_seen: bool) -> None:
        _check_query_params(last_n, decay)
        self.last_n, self.decay, self.exclude_seen = int(last_n), decay, bool(exclude_seen)
        self.last_time = int(np.asarray(state["last_time"]))

    @classmethod
    def from_state(cls, state: dict, **params):
        return cls(state, **params)

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie."""
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)
