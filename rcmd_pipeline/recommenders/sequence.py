"""Sequence-aware strategies: they see the user's history before the query, not only the previous movie.

Three models from the session-based recommendation literature, each learned in closed form from
the training window's rating sequences (every user's ratings ordered by (time, movie id), the
order of ``build_eval_transitions``), plus a blend of them whose weights are tuned on validation:

- :class:`SequentialRules` (SR, Ludewig & Jannach 2018): a rule a -> b gains 1/g each time b
  follows a g positions later in a user's sequence (g = 1..``max_gap``, a != b);
- :class:`ItemKNN`: cosine similarity of items over co-occurrence within ``window`` positions of
  each other in a user's sequence (either order), ``C(a, b) / (sqrt(n_a * n_b) + shrink)``;
- :class:`SLIST` (Choi et al., WWW 2021): SLIS + SLIT linear item-item models, one matrix solve,
  on the most rated movies (see the class);
- :class:`SequenceHybrid`: a reciprocal-rank blend of parts (these and ``next_movie``).

Scoring a query (SR, item-kNN, SLIST): the last ``last_n`` movies of its history that the model
knows, the j-th most recent weighted by ``decay`` ("harmonic" 1/j, "linear" (n-j+1)/n, "flat" 1),
score(b) = sum_j decay(j) * W[a_j, b]. The k best scores are recommended (ties: more rated in the
training window first, then smaller movie id); short rows are filled with the most rated movies
of the training window. The previous movie itself is never recommended (as ``next_movie``,
``popularity`` and ``hybrid``); with ``exclude_seen`` no movie of the query's history is either.

State: ``fit`` returns the learned model as a dict of plain numpy arrays (an ``.npz`` asset, no
pickles); ``from_state(state, **query_params)`` rebuilds the recommender from it. Give ``fit``
only ``training_window``'s arrays: ``state["last_time"]`` lets a caller assert it.

Memory at MovieLens-32M scale: pair instances are enumerated per block of source movies (the
positions of a block's movies, found once with one argsort), so at most ~``block_codes`` pair
codes live at a time; each source keeps its ``top_k`` best targets. SLIST's matrices are dense
over at most ``max_items`` movies and are accumulated with ``bincount`` over pair codes.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.learned import _columns, _sorted_history

DECAYS = ("harmonic", "linear", "flat")
_EMPTY = np.zeros(0, dtype=np.int64)
_BLOCK_CODES = 24_000_000


# ------------------------------------------------------------------------------------------------ helpers


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


def _history_codes(q: Queries, scale: int) -> np.ndarray:
    """Sorted codes row * scale + movie id of every (query, history movie) and (query, prev)."""
    row = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(q.offsets))
    codes = np.concatenate([row * scale + q.items, np.arange(len(q), dtype=np.int64) * scale + q.prev])
    return np.unique(codes)


def _excluded(q: Queries, rows: np.ndarray, ids: np.ndarray, exclude_seen: bool) -> np.ndarray:
    """Per (row, movie id): the query's previous movie, or (exclude_seen) any movie of its history."""
    if not exclude_seen:
        return ids == q.prev[rows]
    scale = int(max(ids.max(initial=0), q.items.max(initial=0), q.prev.max(initial=0))) + 1
    codes = _history_codes(q, scale)
    return np.isin(rows * scale + ids, codes, assume_unique=False)


def _popular_order(item_counts: np.ndarray) -> np.ndarray:
    """Dense indexes, most rated first, ties by smaller index (= smaller movie id)."""
    return np.argsort(-np.asarray(item_counts), kind="stable")


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
        order = np.lexsort((tie, -np.round(score, 10), rows))
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
    bad |= (cand[:, :, None] == out[short][:, None, :]).any(axis=2)
    ordered = np.take_along_axis(cand, np.argsort(bad, axis=1, kind="stable"), axis=1)
    put = np.minimum(k - counts[short], (~bad).sum(axis=1))
    for j in range(k):
        sel = j < put
        if not sel.any():
            break
        out[short[sel], counts[short[sel]] + j] = ordered[sel, j]
    counts[short] += put


def _single_item_queries(prev_movie_ids) -> Queries:
    prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
    n = len(prev)
    return Queries(prev=prev, users=np.zeros(n, dtype=np.int64), times=np.zeros(n, dtype=np.int64),
                   offsets=np.arange(n + 1, dtype=np.int64), items=prev.copy(), n_earlier=np.ones(n, np.int64))


def _last_time(times: np.ndarray) -> np.ndarray:
    return np.array(int(times.max()) if len(times) else -1, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ pair tables


def _pair_table(users, movies, times, gap_weights: np.ndarray, scale: int, symmetric: bool, top_k: int,
                shrink: float | None = None, block_codes: int = _BLOCK_CODES) -> dict[str, np.ndarray]:
    """Sparse item -> item weights from pairs of positions up to ``len(gap_weights)`` apart.

    A pair (a at position p, b at p + g) of one user's sequence, a != b, adds
    ``gap_weights[g-1] / scale`` to W[a, b] (and, when ``symmetric``, the pair also counts as
    W[b, a]). Integer weights make the sums exact. With ``shrink`` the sums become cosines
    ``W / (sqrt(n_a n_b) + shrink)``. Each source keeps its ``top_k`` best targets (ties: more rated,
    then smaller id). Returns the state arrays of a neighbour model.
    """
    users, movies, times = _columns(users, movies, times)
    history = _sorted_history(users, movies, times)
    user, movie, ids = history.user, history.movie, history.movie_ids
    del users, movies
    m, n_pos, n_gaps = len(ids), len(movie), len(gap_weights)
    counts = np.bincount(movie, minlength=m).astype(np.int64)
    rank_of = np.empty(m, dtype=np.int64)
    rank_of[_popular_order(counts)] = np.arange(m)
    shifts = list(range(1, n_gaps + 1)) + ([-g for g in range(1, n_gaps + 1)] if symmetric else [])
    by_source = np.argsort(movie, kind="stable")
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    per_block = max(1, block_codes // max(1, len(shifts)))
    src_parts, dst_parts, w_parts = [], [], []
    lo = 0
    while lo < m:
        hi = int(np.searchsorted(starts, starts[lo] + per_block, side="right")) - 1
        hi = min(m, max(hi, lo + 1))
        pos = by_source[starts[lo]:starts[hi]]
        codes = []
        for d in shifts:
            nb = pos + d
            ok = (nb >= 0) & (nb < n_pos)
            p, nb = pos[ok], nb[ok]
            ok = (user[nb] == user[p]) & (movie[nb] != movie[p])
            p, nb = p[ok], nb[ok]
            code = (movie[p] - lo) * m + movie[nb]
            code *= n_gaps
            code += abs(d) - 1
            codes.append(code)
        lo_block = lo
        lo = hi
        code = np.concatenate(codes) if codes else _EMPTY
        del codes
        if len(code) == 0:
            continue
        code.sort()
        first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        occurrences = np.diff(np.r_[first, len(code)])
        code = code[first]
        weight = occurrences * gap_weights[code % n_gaps]
        pair = code // n_gaps
        del code, occurrences
        first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        weight = np.add.reduceat(weight, first)
        pair = pair[first]
        src, dst = pair // m + lo_block, pair % m
        value = weight / float(scale)
        if shrink is not None:
            value = value / (np.sqrt(counts[src].astype(np.float64) * counts[dst]) + shrink)
        order = np.lexsort((rank_of[dst], -value, src))
        src, dst, value = src[order], dst[order], value[order]
        place = np.arange(len(src)) - np.searchsorted(src, src, side="left")
        keep = place < top_k
        src_parts.append(src[keep])
        dst_parts.append(dst[keep].astype(np.int32))
        w_parts.append(value[keep].astype(np.float32))
    src = np.concatenate(src_parts) if src_parts else _EMPTY
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=m), out=indptr[1:])
    return {
        "item_ids": ids, "item_counts": counts, "indptr": indptr,
        "indices": np.concatenate(dst_parts) if dst_parts else np.zeros(0, np.int32),
        "weights": np.concatenate(w_parts) if w_parts else np.zeros(0, np.float32),
        "last_time": _last_time(history.time),
    }


class _NeighbourModel:
    """Scoring shared by the sparse item -> item models (state: CSR rows of targets per source)."""

    name = "neighbours"

    def __init__(self, state: dict, last_n: int = 5, decay: str = "harmonic", exclude_seen: bool = False) -> None:
        _check_query_params(last_n, decay)
        self.item_ids = np.asarray(state["item_ids"], dtype=np.int64)
        self.item_counts = np.asarray(state["item_counts"], dtype=np.int64)
        m = len(self.item_ids)
        self.matrix = sp.csr_matrix(
            (np.asarray(state["weights"], dtype=np.float64), np.asarray(state["indices"], dtype=np.int64),
             np.asarray(state["indptr"], dtype=np.int64)), shape=(m, m))
        self.last_n, self.decay, self.exclude_seen = int(last_n), decay, bool(exclude_seen)
        self.last_time = int(np.asarray(state["last_time"]))
        self._rank_of = np.empty(m, dtype=np.int64)
        order = _popular_order(self.item_counts)
        self._rank_of[order] = np.arange(m)
        self._popular_ids = self.item_ids[order]

    @classmethod
    def from_state(cls, state: dict, **params):
        return cls(state, **params)

    def scores(self, q: Queries) -> sp.csr_matrix:
        """(queries x model movies) sparse scores sum_j decay(j) W[a_j, :]."""
        m = len(self.item_ids)
        row, item, j = _recent_known(q, _lookup(self.item_ids, q.items), self.last_n)
        weights = decay_weights(j, self.last_n, self.decay)
        vectors = sp.csr_matrix((weights, (row, item)), shape=(len(q), m))
        return (vectors @ self.matrix).tocsr()

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        s = self.scores(q)
        s.sum_duplicates()
        rows = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(s.indptr))
        cand = s.indices.astype(np.int64)
        return _finish(q, int(k), rows, self.item_ids[cand], s.data, self._rank_of[cand], self._popular_ids,
                       self.exclude_seen)

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie."""
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)


class SequentialRules(_NeighbourModel):
    """Sequential rules: W[a, b] = sum over users of 1/g for each time b follows a by g <= max_gap.

    Ludewig & Jannach's SR with its 1/gap weighting, on whole user sequences (MovieLens has no
    sessions; the gap is counted in ratings, not time). Each movie keeps its ``top_k`` rules.
    """

    name = "seq_rules"

    @staticmethod
    def fit(users, movies, times, max_gap: int = 10, top_k: int = 200, **kwargs) -> dict[str, np.ndarray]:
        if not 1 <= max_gap <= 20:
            raise ValueError(f"max_gap must be between 1 and 20, got {max_gap}")
        scale = math.lcm(*range(1, max_gap + 1))
        gap_weights = np.array([scale // g for g in range(1, max_gap + 1)], dtype=np.int64)
        return _pair_table(users, movies, times, gap_weights, scale, symmetric=False, top_k=top_k, **kwargs)


class ItemKNN(_NeighbourModel):
    """Item-kNN: cosine of co-occurrence within ``window`` ratings of each other in a user's sequence.

    C(a, b) counts the pairs of positions at most ``window`` apart (either order) holding a and b;
    sim(a, b) = C(a, b) / (sqrt(n_a * n_b) + shrink), n = ratings in the training window. A window
    instead of whole user sets keeps the count linear in the ratings (a heavy MovieLens user has
    tens of thousands) and makes "seen close together" mean something. ``top_k`` neighbours each.
    """

    name = "item_knn"

    @staticmethod
    def fit(users, movies, times, window: int = 10, shrink: float = 10.0, top_k: int = 200,
            **kwargs) -> dict[str, np.ndarray]:
        if not 1 <= window <= 50:
            raise ValueError(f"window must be between 1 and 50, got {window}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        return _pair_table(users, movies, times, np.ones(window, dtype=np.int64), 1, symmetric=True,
                           top_k=top_k, shrink=float(shrink), **kwargs)


# ------------------------------------------------------------------------------------------------ SLIST


class SLIST:
    """SLIST (Choi et al., WWW 2021): a linear item -> item model, one matrix inverse.

    Items: the movies rated at least ``min_count`` times in the training window, at most
    ``max_items`` of them (the most rated), so the dense matrices fit (3,300 movies: 44 MB per
    float32 matrix). Each user's sequence is restricted to those movies.

    "Sessions" are sliding windows (MovieLens has no sessions, and time-gap sessions of bulk raters
    run to thousands of ratings): SLIS's X has a row per window of ``window`` consecutive ratings
    (windows overhanging either end included), scaled by 1/sqrt(window), so
    ``G = X'X = diag(n) + sum_{g<window} (window-g)/window (C_g + C_g')`` with C_g[a, b] the number
    of times b follows a by g. SLIT has a row per rating t with a predecessor: source
    ``S_t = sum_{j<=window} e_{x[t-j]} / j`` (same user), target ``T_t = e_{x[t]}``; ``S'T`` and
    ``S'S`` are accumulated from shifted pair codes without building S.

    Closed form: ``alpha == 1`` is SLIS with diag(B) = 0 (EASE-like: B = I - P diag(1/diag P),
    P = (G + reg I)^-1); ``alpha < 1`` is SLIST: B = P (alpha G + (1-alpha) S'T) with
    P = (alpha G + (1-alpha) S'S + reg I)^-1, diagonal then zeroed (a movie never recommends
    itself). Scores: q B with q the decayed last ``last_n`` known history movies.
    """

    name = "slist"

    @staticmethod
    def fit(users, movies, times, min_count: int = 1, max_items: int = 3000, window: int = 5,
            alpha: float = 0.5, reg: float = 10.0) -> dict[str, np.ndarray]:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {alpha}")
        if reg <= 0:
            raise ValueError(f"reg must be positive, got {reg}")
        if not 1 <= window <= 20:
            raise ValueError(f"window must be between 1 and 20, got {window}")
        grams = SLIST.grams(users, movies, times, min_count=min_count, max_items=max_items, window=window)
        return SLIST.solve(grams, alpha=alpha, reg=reg)

    @staticmethod
    def grams(users, movies, times, min_count: int = 1, max_items: int = 3000, window: int = 5) -> dict:
        """The item set and the Gram matrices G, S'S, S'T (float64), reusable across alpha and reg."""
        users, movies, times = _columns(users, movies, times)
        history = _sorted_history(users, movies, times)
        del users, movies
        counts = np.bincount(history.movie, minlength=len(history.movie_ids))
        order = _popular_order(counts)
        order = order[counts[order] >= min_count][:max_items]
        size = len(order)
        sub = np.full(len(counts), -1, dtype=np.int64)
        sub[order] = np.arange(size)
        x = sub[history.movie]
        keep = x >= 0
        x, u = x[keep], history.user[keep]
        del keep
        cells = size * size

        def count(pairs_from, pairs_to, weight=None):
            return np.bincount(pairs_from * size + pairs_to, weights=weight, minlength=cells).astype(np.float64)

        gram = np.zeros(cells)
        gram[np.arange(size) * (size + 1)] = np.bincount(x, minlength=size)
        s_t = np.zeros(cells)
        followed = {}
        for g in range(1, window + 1):
            ok = u[g:] == u[:-g] if len(u) > g else np.zeros(0, dtype=bool)
            c = count(x[:-g][ok], x[g:][ok]).reshape(size, size) if len(ok) else np.zeros((size, size))
            if g < window:
                sym = (c + c.T) * ((window - g) / window)
                gram += sym.ravel()
            s_t += c.ravel() / g
            followed[g] = ok
        s_s = np.zeros(cells)
        t_all = np.arange(len(x))
        for j2 in range(1, window + 1):  # the older of the two source slots
            ok = followed[j2]
            t = t_all[j2:][ok]  # targets with a same-user rating j2 back
            older = x[t - j2]
            for j1 in range(1, j2 + 1):
                c = count(x[t - j1], older, None)
                if j1 == j2:
                    s_s += c / (j1 * j2)
                else:
                    c = c.reshape(size, size)
                    s_s += ((c + c.T) / (j1 * j2)).ravel()
        return {"item_ids": history.movie_ids[order], "item_counts": counts[order].astype(np.int64),
                "gram": gram.reshape(size, size), "s_s": s_s.reshape(size, size),
                "s_t": s_t.reshape(size, size), "last_time": _last_time(history.time)}

    @staticmethod
    def solve(grams: dict, alpha: float = 0.5, reg: float = 10.0) -> dict[str, np.ndarray]:
        size = len(grams["item_ids"])
        if size == 0:
            matrix = np.zeros((0, 0), dtype=np.float32)
        elif alpha >= 1.0:
            a = grams["gram"].copy()
            a[np.diag_indices(size)] += reg
            p = np.linalg.inv(a)
            del a
            matrix = -p / np.diag(p)[None, :]
        else:
            a = alpha * grams["gram"] + (1 - alpha) * grams["s_s"]
            a[np.diag_indices(size)] += reg
            p = np.linalg.inv(a)
            del a
            matrix = p @ (alpha * grams["gram"] + (1 - alpha) * grams["s_t"])
        matrix = np.asarray(matrix, dtype=np.float32)
        matrix[np.diag_indices(size)] = 0.0
        return {"item_ids": grams["item_ids"], "item_counts": grams["item_counts"], "matrix": matrix,
                "last_time": grams["last_time"]}

    def __init__(self, state: dict, last_n: int = 5, decay: str = "harmonic", exclude_seen: bool = False) -> None:
        _check_query_params(last_n, decay)
        ids = np.asarray(state["item_ids"], dtype=np.int64)  # most rated first
        self._sorter = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._sorter]
        self.item_ids = ids
        self.matrix = np.asarray(state["matrix"], dtype=np.float32)
        self.last_n, self.decay, self.exclude_seen = int(last_n), decay, bool(exclude_seen)
        self.last_time = int(np.asarray(state["last_time"]))

    @classmethod
    def from_state(cls, state: dict, **params):
        return cls(state, **params)

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        k = int(k)
        size = len(self.item_ids)
        where = _lookup(self._sorted_ids, q.items)
        dense = np.where(where >= 0, self._sorter[np.maximum(where, 0)], -1)
        row, item, j = _recent_known(q, dense, self.last_n)
        vectors = np.zeros((len(q), size), dtype=np.float32)
        np.add.at(vectors, (row, item), decay_weights(j, self.last_n, self.decay).astype(np.float32))
        scores = vectors @ self.matrix if size else vectors
        del vectors
        # Keep the best few per row before the exact ranking (enough to survive the exclusions).
        lengths = np.diff(q.offsets)
        depth = min(size, k + 1 + (int(lengths.max(initial=0)) if self.exclude_seen else 0))
        if depth == 0:
            return _finish(q, k, _EMPTY, _EMPTY, np.zeros(0), _EMPTY, self.item_ids, self.exclude_seen)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < size else \
            np.broadcast_to(np.arange(size), (len(q), size))
        rows = np.repeat(np.arange(len(q), dtype=np.int64), top.shape[1])
        cand = top.ravel().astype(np.int64)
        return _finish(q, k, rows, self.item_ids[cand], scores[rows, cand].astype(np.float64), cand,
                       self.item_ids, self.exclude_seen)

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)


# ------------------------------------------------------------------------------------------------ blend


class PrevOnly:
    """Adapter: a study-style recommender (``recommend(prev, k)``) as a query recommender."""

    def __init__(self, recommender, name: str | None = None) -> None:
        self.recommender = recommender
        self.name = name or recommender.name

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        return np.asarray(self.recommender.recommend(q.prev, k), dtype=np.int64)


def blend_lists(q: Queries, lists: dict[str, np.ndarray], weights: dict[str, float], k: int, c0: float = 10.0,
                exclude_seen: bool = True) -> np.ndarray:
    """Reciprocal-rank blend: a movie at rank r (1-based) of part c scores weight_c / (r + c0).

    Scores add over parts; the k best per row win (ties: listed first, parts in the given order).
    The previous movie, PAD and (with ``exclude_seen``) history movies are never picked.
    """
    n = len(q)
    out = np.full((n, k), PAD, dtype=np.int64)
    names = [name for name in lists if weights.get(name, 0.0) > 0]
    if n == 0 or k == 0 or not names:
        return out
    cand = np.concatenate([np.asarray(lists[name], dtype=np.int64) for name in names], axis=1)
    score = np.concatenate([np.broadcast_to(weights[name] / (np.arange(1, lists[name].shape[1] + 1) + c0),
                                            lists[name].shape) for name in names], axis=1)
    width = cand.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    flat, score, first = cand.ravel(), score.ravel(), np.tile(np.arange(width), n)
    ok = flat != PAD
    ok[ok] = ~_excluded(q, rows[ok], flat[ok], exclude_seen)
    rows, flat, score, first = rows[ok], flat[ok], score[ok], first[ok]
    order = np.lexsort((first, flat, rows))
    rows, flat, score, first = rows[order], flat[order], score[order], first[order]
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (flat[1:] != flat[:-1])]) if len(rows) else _EMPTY
    if len(start) == 0:
        return out
    total = np.add.reduceat(score, start)
    rows, flat, first = rows[start], flat[start], first[start]
    ranked = np.lexsort((first, -np.round(total, 12), rows))
    rows, flat = rows[ranked], flat[ranked]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    take = place < k
    out[rows[take], place[take]] = flat[take]
    return out


class SequenceHybrid:
    """The blend of parts (query recommenders) with weights chosen on validation (``tune_blend``)."""

    name = "seq_hybrid"

    def __init__(self, parts: dict, weights: dict[str, float], depth: int = 50, c0: float = 10.0,
                 exclude_seen: bool = True) -> None:
        if not any(w > 0 for w in weights.values()):
            raise ValueError("every weight is 0: nothing to blend")
        unknown = set(weights) - set(parts)
        if unknown:
            raise ValueError(f"weights for unknown parts {sorted(unknown)}")
        self.parts, self.weights = parts, {n: float(w) for n, w in weights.items()}
        self.depth, self.c0, self.exclude_seen = int(depth), float(c0), bool(exclude_seen)

    def state(self) -> dict[str, np.ndarray]:
        names = list(self.weights)
        return {"part_names": np.array(names, dtype=str),
                "weights": np.array([self.weights[n] for n in names], dtype=np.float64),
                "depth": np.array(self.depth), "c0": np.array(self.c0), "exclude_seen": np.array(self.exclude_seen)}

    @classmethod
    def from_state(cls, state: dict, parts: dict) -> SequenceHybrid:
        weights = {str(n): float(w) for n, w in zip(state["part_names"], state["weights"], strict=True)}
        return cls(parts, weights, depth=int(state["depth"]), c0=float(state["c0"]),
                   exclude_seen=bool(state["exclude_seen"]))

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        depth = max(self.depth, int(k))
        lists = {name: part.recommend_queries(q, depth) for name, part in self.parts.items()
                 if self.weights.get(name, 0.0) > 0}
        return blend_lists(q, lists, self.weights, int(k), self.c0, self.exclude_seen)
