"""SLIST (Choi et al., WWW 2021): a linear item -> item model of the next movie, one matrix solve.

The Gram matrices are dense over at most ``max_items`` movies and are accumulated from exact
integer counts chunk by chunk, so a fit costs the matrices plus a few chunks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.ratings import _EMPTY, _chunks
from rcmd_pipeline.recommenders.sequence_scoring import (
    _finish,
    _history_positions,
    _HistoryModel,
    _lookup,
    _recent_known,
    decay_weights,
)
from rcmd_pipeline.recommenders.user_sequences import _SORT_ROWS, _Sequences, _sequences


def _restricted(seq: _Sequences, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sequences restricted to the ``size`` most rated movies: (rank, user label) per kept rating."""
    n = len(seq.movie)
    kept = int(seq.counts_by_rank[:size].sum())
    x = np.empty(kept, dtype=np.int16 if size <= np.iinfo(np.int16).max else np.int32)
    u = np.empty(kept, dtype=np.int32)
    done, users_before = 0, 0
    for part in _chunks(n):
        lo, hi = part.start, part.stop
        start = np.empty(hi - lo, dtype=bool)  # a user's first rating: the previous one was its user's last
        start[0] = lo == 0 or seq.left[lo - 1] == 0
        start[1:] = seq.left[lo:hi - 1] == 0
        label = np.cumsum(start, dtype=np.int64)
        label += users_before - 1
        mv = seq.movie[lo:hi]
        keep = mv < size
        here = slice(done, done + int(keep.sum()))
        x[here] = mv[keep]
        u[here] = label[keep]
        done = here.stop
        users_before += int(start.sum())
    return x, u


def _offset_counts(x: np.ndarray, u: np.ndarray, size: int, span: int, a: int, b: int) -> np.ndarray:
    """int64 (size * size) counts of the pairs (x[i+a], x[i+b]) over i with u[i] == u[i+span].

    Chunk by chunk (bincount of each chunk's pair codes: exact integers); a == b counts only the
    diagonal, so it bincounts the movies themselves.
    """
    acc = np.zeros(size * size, dtype=np.int64)
    n = len(x) - span
    for part in _chunks(max(n, 0), factor=2):
        lo, hi = part.start, part.stop
        ok = u[lo:hi] == u[lo + span:hi + span]
        if a == b:
            acc[::size + 1] += np.bincount(x[lo + a:hi + a][ok], minlength=size)
            continue
        code = x[lo + a:hi + a][ok].astype(np.int64)
        code *= size
        code += x[lo + b:hi + b][ok]
        del ok
        acc += np.bincount(code, minlength=len(acc))
        del code
    return acc


class SLIST(_HistoryModel):
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
        return SLIST._solve(grams, alpha, reg, consume=True)

    @staticmethod
    def grams(users, movies, times, min_count: int = 1, max_items: int = 3000, window: int = 5,
              sort_rows: int = _SORT_ROWS) -> dict:
        """The item set and the Gram matrices G, S'S, S'T (float64), reusable across alpha and reg.

        Counts of "x[i+a] with x[i+b]" are exact integers accumulated chunk by chunk, then turned
        into the float64 sums in a fixed order; the sequences restricted to the item set are int16
        ranks plus int32 user labels (6 bytes a kept rating).
        """
        seq = _sequences(users, movies, times, sort_rows=sort_rows)
        counts = seq.counts_by_rank  # most rated first: the item set is the first `size` ranks
        size = int(min(max_items, int((counts >= min_count).sum())))
        x, u = _restricted(seq, size)
        ids, item_counts, last_time = seq.ids_by_rank[:size].copy(), counts[:size].copy(), seq.last_time
        del seq
        cells = size * size
        gram = np.zeros(cells)
        gram[np.arange(size) * (size + 1)] = item_counts
        s_t = np.zeros(cells)
        for g in range(1, window + 1):
            c = _offset_counts(x, u, size, g, 0, g).astype(np.float64).reshape(size, size)
            if g < window:
                sym = c + c.T
                sym *= (window - g) / window
                gram += sym.ravel()
                del sym
            c /= g
            s_t += c.ravel()
            del c
        s_s = np.zeros(cells)
        for j2 in range(1, window + 1):  # the older of the two source slots, j1 the newer
            for j1 in range(1, j2 + 1):
                c = _offset_counts(x, u, size, j2, j2 - j1, 0).astype(np.float64).reshape(size, size)
                if j1 == j2:
                    c /= j1 * j2
                    s_s += c.ravel()
                else:
                    sym = c + c.T
                    sym /= j1 * j2
                    s_s += sym.ravel()
                    del sym
                del c
        return {"item_ids": ids, "item_counts": item_counts.astype(np.int64), "gram": gram.reshape(size, size),
                "s_s": s_s.reshape(size, size), "s_t": s_t.reshape(size, size), "last_time": last_time}

    @staticmethod
    def solve(grams: dict, alpha: float = 0.5, reg: float = 10.0) -> dict[str, np.ndarray]:
        return SLIST._solve(grams, alpha, reg, consume=False)

    @staticmethod
    def _solve(grams: dict, alpha: float, reg: float, consume: bool) -> dict[str, np.ndarray]:
        """The closed form; ``consume`` drops each Gram matrix from ``grams`` once it is used (less memory)."""
        size = len(grams["item_ids"])
        head = {k: grams[k] for k in ("item_ids", "item_counts", "last_time")}
        if size == 0:
            matrix = np.zeros((0, 0), dtype=np.float32)
        elif alpha >= 1.0:
            a = grams["gram"].copy()
            if consume:
                grams.clear()
            a[np.diag_indices(size)] += reg
            p = np.linalg.inv(a)
            del a
            p /= np.diag(p)[None, :].copy()
            np.negative(p, out=p)  # -(p / d) == -p / d exactly
            matrix = p
        else:
            a = alpha * grams["gram"]
            a += (1 - alpha) * grams["s_s"]
            if consume:
                del grams["s_s"]
            a[np.diag_indices(size)] += reg
            b = alpha * grams["gram"]
            b += (1 - alpha) * grams["s_t"]
            if consume:
                grams.clear()
            # one solve of a x = b instead of inv(a) @ b: 35 % less time at 3,000 movies (the same
            # matrix to 1e-14). NumPy's LAPACK, not SciPy's Cholesky (10 % faster still): SciPy's own
            # OpenBLAS would keep buffers of its own in the run process
            matrix = np.linalg.solve(a, b)
            del a, b
        matrix = np.asarray(matrix, dtype=np.float32)
        matrix[np.diag_indices(size)] = 0.0
        return {"item_ids": head["item_ids"], "item_counts": head["item_counts"], "matrix": matrix,
                "last_time": head["last_time"]}

    def __init__(self, state: dict, last_n: int = 5, decay: str = "harmonic", exclude_seen: bool = False) -> None:
        self._set_query_params(state, last_n, decay, exclude_seen)
        ids = np.asarray(state["item_ids"], dtype=np.int64)  # most rated first
        self._sorter = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._sorter]
        self.item_ids = ids
        self.matrix = np.asarray(state["matrix"], dtype=np.float32)

    def _dense_scores(self, q: Queries) -> tuple[np.ndarray, np.ndarray]:
        """(queries x model movies) scores q B, float32, columns in ``item_ids`` order; and each
        history movie's column (-1 when the model does not know it)."""
        size = len(self.item_ids)
        where = _history_positions(q, self._sorted_ids)
        dense = np.where(where >= 0, self._sorter[np.maximum(where, 0)], -1)
        row, item, j = _recent_known(q, dense, self.last_n)
        # each query weighs at most last_n movies: a sparse product touches only their rows of B
        weights = sp.csr_matrix((decay_weights(j, self.last_n, self.decay).astype(np.float32), (row, item)),
                                shape=(len(q), size))
        scores = np.asarray(weights @ self.matrix, dtype=np.float32) if size else np.zeros((len(q), 0), np.float32)
        return scores, dense

    def candidate_scores(self, q: Queries, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The score of each (query row, movie id); 0 for a movie the model does not know."""
        scores, _ = self._dense_scores(q)
        where = _lookup(self._sorted_ids, ids)
        out = np.zeros(len(ids))
        known = where >= 0
        out[known] = scores[np.asarray(rows)[known], self._sorter[where[known]]]
        return out

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        k = int(k)
        size = len(self.item_ids)
        scores, dense = self._dense_scores(q)
        if size == 0 or len(q) == 0 or k == 0:
            return _finish(q, k, _EMPTY, _EMPTY, np.zeros(0), _EMPTY, self.item_ids, self.exclude_seen)
        # Excluded movies (prev; with exclude_seen the whole history) score 0, which _finish drops;
        # then only each row's k best and those tied with its k-th reach the exact ranking.
        if self.exclude_seen:
            history_rows = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(q.offsets))
            known = dense >= 0
            scores[history_rows[known], dense[known]] = 0.0
        where = _lookup(self._sorted_ids, q.prev)
        known = where >= 0
        scores[np.flatnonzero(known), self._sorter[where[known]]] = 0.0
        depth = min(size, k)
        kth = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1]
        rows, cand = np.nonzero((scores >= kth[:, None]) & (scores > 0))
        rows, cand = rows.astype(np.int64), cand.astype(np.int64)
        return _finish(q, k, rows, self.item_ids[cand], scores[rows, cand].astype(np.float64), cand,
                       self.item_ids, self.exclude_seen)
