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

Memory at MovieLens-32M scale (32 M ratings given as int32/int64 arrays; each fit adds 0.65-0.8
GB and takes 16-28 s of CPU, see docs/evaluation.md): the ratings become compact user sequences
(int32 popularity rank + uint8 "same user for how many more" per rating), ordered in blocks of
users; pair instances are enumerated per block of source movies (~``_BLOCK_CODES`` at a time,
all shifts of a position read as one window row), summed exactly (bincount over the block's
cells, or a sort of pair codes) and cut to each source's ``top_k`` by one packed-key argsort
before the next block. SLIST's Gram matrices are dense over at most ``max_items`` movies and
are accumulated from exact integer counts chunk by chunk. The fits return the same arrays as the
straightforward construction (tests compare them with literal sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import Queries

DECAYS = ("harmonic", "linear", "flat")
_EMPTY = np.zeros(0, dtype=np.int64)
_I64_MAX = 2**63 - 1
_LOOKUP_LIMIT = 50_000_000  # ids below this are densified with a lookup table, O(n)
_CHUNK = 4_000_000  # ratings per chunk of the linear passes
_SORT_ROWS = 4_000_000  # ratings per block of users when ordering the sequences
_BLOCK_CODES = 6_000_000  # pair instances per block of source movies
_DENSE_CELLS = 8_000_000  # a block's (sources x movies) cells summed with bincount when at most this
_MAX_BLOCK_SOURCES = 1 << 15
_PAD = 64  # padding around the sequences: a window of +-64 positions reads any position's neighbours


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
        cached = q.__dict__["_history_codes"] = (np.unique(codes), scale)
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
    ordered = np.sort(key)
    start = np.flatnonzero(np.r_[True, (ordered[1:] >> 32) != (ordered[:-1] >> 32)])
    count = np.diff(np.r_[start, len(ordered)])
    limit = np.full(int(rows.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    full = count > k
    limit[ordered[start[full]] >> 32] = ordered[start[full] + k - 1]
    return key <= limit[rows]


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


# ------------------------------------------------------------------------------------------------ sequences


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


def _integer_column(x) -> np.ndarray:
    x = np.asarray(x).ravel()
    if x.dtype.kind not in "iu":
        x = x.astype(np.int64)
    return x


def _chunks(n: int, size: int | None = None):
    size = size or _CHUNK
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class _Densifier:
    """Dense index (0..k-1 in id order, int32) of integer ids, in chunks: a lookup table when ids allow."""

    def __init__(self, x: np.ndarray) -> None:
        n = len(x)
        low, high = (int(x.min()), int(x.max())) if n else (0, -1)
        if low >= 0 and high < _LOOKUP_LIMIT:
            present = np.zeros(high + 1, dtype=bool)
            for lo, hi in _chunks(n):
                present[x[lo:hi]] = True
            self.ids = np.flatnonzero(present).astype(np.int64)
            self._table = np.cumsum(present, dtype=np.int32) - 1 if len(self.ids) else np.zeros(0, np.int32)
        else:  # negative or huge ids: a sort instead of a table
            self.ids = np.unique(x).astype(np.int64)
            self._table = None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        if self._table is not None:
            return self._table[chunk]
        return np.searchsorted(self.ids, chunk).astype(np.int32)

    def counts(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.ids), dtype=np.int64)
        for lo, hi in _chunks(len(x)):
            out += np.bincount(self(x[lo:hi]), minlength=len(self.ids))
        return out


def _sequences(users, movies, times, sort_rows: int = _SORT_ROWS) -> _Sequences:
    """The users' rating sequences of :class:`_Sequences`, built in blocks of users.

    Users are split into blocks of about ``sort_rows`` ratings (consecutive user ids); each block is
    ordered by one sort of packed int64 keys (user, time, movie id), so memory beyond the 5-byte
    output is a few arrays of ``sort_rows``. Same order as ``build_eval_transitions``.
    """
    users, movies = _integer_column(users), _integer_column(movies)
    times = np.asarray(times).ravel()
    if times.dtype != np.int64:
        times = times.astype(np.int64)
    n = len(users)
    if not (n == len(movies) == len(times)):
        raise ValueError(f"users, movies and times must have the same length, got {n}, {len(movies)}, {len(times)}")
    dense_movie = _Densifier(movies)
    m = len(dense_movie.ids)
    counts = dense_movie.counts(movies)
    by_rank = _popular_order(counts)
    rank_of = np.empty(m, dtype=np.int32)
    rank_of[by_rank] = np.arange(m, dtype=np.int32)
    movie_buf = np.empty(n + 2 * _PAD, dtype=np.int32)
    left_buf = np.empty(n + 2 * _PAD, dtype=np.uint8)
    for buf, fill in ((movie_buf, -1), (left_buf, 0)):
        buf[:_PAD] = fill
        buf[len(buf) - _PAD:] = fill
    result = _Sequences(movie_buf, left_buf, dense_movie.ids[by_rank], counts[by_rank], _last_time(times))
    movie, left = result.movie, result.left
    if n == 0:
        return result
    dense_user = _Densifier(users)
    user_counts = dense_user.counts(users)
    t0 = int(times.min())
    span = int(times.max()) - t0 + 1
    per_user = span * m
    max_users = max(1, _I64_MAX // per_user) if per_user <= _I64_MAX else 1
    ends = np.cumsum(user_counts)
    done, first = 0, 0
    n_users = len(user_counts)
    while first < n_users:
        last = int(np.searchsorted(ends, ends[first] - user_counts[first] + sort_rows, side="right"))
        last = min(n_users, max(last, first + 1), first + max_users)
        low_id, high_id = dense_user.ids[first], dense_user.ids[last - 1]
        rows = np.flatnonzero((users >= low_id) & (users <= high_id))
        u = dense_user(users[rows]).astype(np.int64)
        u -= first
        mv = dense_movie(movies[rows]).astype(np.int64)
        t = times[rows] - t0
        del rows
        if per_user <= _I64_MAX:
            key = u * per_user
            t *= m
            key += t
            key += mv
            del t, u, mv
            key.sort()
            u = key // per_user
            mv = key % m
            del key
        else:  # absurd time ranges: a three-key sort
            order = np.lexsort((mv, t, u))
            u, mv = u[order], mv[order]
            del order, t
        here = slice(done, done + len(u))
        movie[here] = rank_of[mv]
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        run_end = np.repeat(np.r_[starts[1:], len(u)], np.diff(np.r_[starts, len(u)]))
        run_end -= np.arange(1, len(u) + 1)
        left[here] = np.minimum(run_end, 255)
        done += len(u)
        first = last
        del u, mv, starts, run_end
    return result


# ------------------------------------------------------------------------------------------------ pair tables


def _source_blocks(counts_by_rank: np.ndarray, per_source_codes: int, block_codes: int,
                   max_sources: int = _MAX_BLOCK_SOURCES) -> list[tuple[int, int]]:
    """Ranges of source ranks whose pair instances (ratings x shifts) stay within ``block_codes``."""
    m = len(counts_by_rank)
    ends = np.cumsum(counts_by_rank * per_source_codes)
    blocks, lo = [], 0
    while lo < m:
        before = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, before + block_codes, side="right"))
        hi = min(m, max(hi, lo + 1), lo + max_sources)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def _place_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (keys sorted)."""
    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if n else _EMPTY
    place = np.arange(n, dtype=np.int64)
    place -= np.repeat(starts, np.diff(np.r_[starts, n]))
    return place


def _block_pairs(seq: _Sequences, pos: np.ndarray, lo: int, shifts: list[int], gap_codes: bool,
                 dense: bool, gap_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair code (source - lo) * m + target, integer weight) of a block's sources, summed exactly.

    A shift d pairs position p with p + d (same user, another movie). Each source position's
    neighbours are read as one row of a sliding window over the padded sequence (contiguous
    memory, all shifts at once). ``dense`` sums with bincount over the block's (sources x m)
    cells; otherwise codes (with the gap in the low digits when ``gap_codes``) are sorted and
    counted in runs.
    """
    m = len(seq.ids_by_rank)
    n_gaps = len(gap_weights)
    reach = max(abs(d) for d in shifts)
    offsets = np.array(shifts, dtype=np.int64)
    gaps = np.abs(offsets)
    rows = (pos + (_PAD - reach))[:, None]
    movie_rows = np.lib.stride_tricks.sliding_window_view(seq.movie_buf, 2 * reach + 1)
    left_rows = np.lib.stride_tricks.sliding_window_view(seq.left_buf, 2 * reach + 1)
    # p and p + d share a user iff left[min(p, p + d)] >= |d|
    valid = left_rows[rows, np.where(offsets > 0, reach, reach + offsets)[None, :]] >= gaps[None, :]
    target = movie_rows[rows, (reach + offsets)[None, :]]
    source = movie_rows[rows, reach]
    del rows
    valid &= target != source
    source = source.astype(np.int64)
    source -= lo
    source *= m
    code = target + source  # int64 (sources x shifts)
    del target, source
    if gap_codes and not dense:
        code *= n_gaps
        code += gaps - 1
    code = code[valid]
    if dense:
        cells = (int(code.max()) // m + 1) * m if len(code) else 0
        if gap_codes:  # integer weights: float64 sums are exact below 2**53
            weight = np.broadcast_to(gap_weights[gaps - 1].astype(np.float64), valid.shape)[valid]
            acc = np.bincount(code, weights=weight, minlength=cells).astype(np.int64)
        else:
            acc = np.bincount(code, minlength=cells) * int(gap_weights[0])
        del code, valid
        pair = np.flatnonzero(acc)
        return pair, acc[pair]
    del valid
    if len(code) == 0:
        return _EMPTY, _EMPTY
    code.sort()
    first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    occurrences = np.diff(np.r_[first, len(code)])
    code = code[first]
    if not gap_codes:
        return code, occurrences * int(gap_weights[0])
    weight = occurrences * gap_weights[code % n_gaps]
    pair = code // n_gaps
    del code, occurrences
    first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    return pair[first], np.add.reduceat(weight, first)


def _best_first(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, value: np.ndarray, top_k: int,
                exact_by_weight: bool) -> np.ndarray:
    """Positions of each source's ``top_k`` best targets, ordered by (source, -value, target rank).

    One packed-key argsort: (source, descending weight, rank) when ``exact_by_weight`` (the value
    is weight / constant); else (source, descending float32 value, rank), then the float64 order
    is checked among the candidates (the top_k and float32 ties at the cut) and, where float32
    rounding merged values, redone with a three-key lexsort. The result equals
    ``lexsort((dst, -value, src))`` restricted to each source's first ``top_k``.
    """
    if len(src) == 0:
        return _EMPTY
    rank_bits = int(dst.max()).bit_length()
    src_bits = int(src.max()).bit_length()
    if exact_by_weight:
        top = int(weight.max())
        desc = top - weight
    else:
        bits = value.astype(np.float32).view(np.int32).astype(np.int64)  # positive floats: order kept
        top = int(bits.max())
        desc = top - bits
    value_bits = int(desc.max()).bit_length()
    if src_bits + value_bits + rank_bits > 63:
        order = np.lexsort((dst, -value, src))
        return order[_place_in_runs(src[order]) < top_k]
    key = src << (value_bits + rank_bits)
    key |= desc << rank_bits
    key |= dst
    del desc
    order = np.argsort(key)
    del key
    s = src[order]
    place = _place_in_runs(s)
    if exact_by_weight:
        return order[place < top_k]
    # candidates: the top_k, plus targets tied in float32 with a source's top_k-th
    v32 = value[order].astype(np.float32)
    cut = np.flatnonzero(place == top_k - 1)
    boundary = np.full(int(s.max()) + 1, np.inf, dtype=np.float32)
    boundary[s[cut]] = v32[cut]
    candidate = (place < top_k) | (v32 == boundary[s])
    order = order[candidate]
    s, v, t = src[order], value[order], dst[order]
    same = s[1:] == s[:-1]
    wrong = same & ((v[1:] > v[:-1]) | ((v[1:] == v[:-1]) & (t[1:] < t[:-1])))
    if wrong.any():
        order = order[np.lexsort((t, -v, s))]
        s = src[order]
    return order[_place_in_runs(s) < top_k]


def _pair_table(users, movies, times, gap_weights: np.ndarray, scale: int, symmetric: bool, top_k: int,
                shrink: float | None = None, block_codes: int = _BLOCK_CODES,
                dense_cells: int = _DENSE_CELLS, sort_rows: int = _SORT_ROWS) -> dict[str, np.ndarray]:
    """Sparse item -> item weights from pairs of positions up to ``len(gap_weights)`` apart.

    A pair (a at position p, b at p + g) of one user's sequence, a != b, adds
    ``gap_weights[g-1] / scale`` to W[a, b] (and, when ``symmetric``, the pair also counts as
    W[b, a]). Integer weights make the sums exact. With ``shrink`` the sums become cosines
    ``W / (sqrt(n_a n_b) + shrink)``. Each source keeps its ``top_k`` best targets (ties: more rated,
    then smaller id). Returns the state arrays of a neighbour model.

    Memory: the sequences (5 bytes a rating), then blocks of source movies (popularity ranks) of at
    most ``block_codes`` pair instances, each reduced exactly (bincount over the block's cells when
    they are few, ``dense_cells`` at most, else a sort of pair codes) and cut to its top_k at once.
    """
    seq = _sequences(users, movies, times, sort_rows=sort_rows)
    m = len(seq.ids_by_rank)
    n_gaps = len(gap_weights)
    gap_weights = np.asarray(gap_weights, dtype=np.int64)
    shifts = list(range(1, n_gaps + 1)) + ([-g for g in range(1, n_gaps + 1)] if symmetric else [])
    gap_codes = bool((gap_weights != gap_weights[0]).any())
    counts = seq.counts_by_rank
    kept_src, kept_place, kept_dst, kept_w = [], [], [], []
    blocks = _source_blocks(counts, len(shifts), block_codes)
    # two levels: one scan of the sequence per group of blocks, then each block within the group
    groups, group = [], []
    for lo, hi in blocks:
        if group and counts[group[0][0]:hi].sum() > max(block_codes, len(seq.movie) // 8):
            groups.append(group)
            group = []
        group.append((lo, hi))
    if group:
        groups.append(group)
    for group in groups:
        g_lo, g_hi = group[0][0], group[-1][1]
        g_pos = np.flatnonzero((seq.movie >= g_lo) & (seq.movie < g_hi))
        g_movie = seq.movie[g_pos]
        for lo, hi in group:
            pos = g_pos[(g_movie >= lo) & (g_movie < hi)] if len(group) > 1 else g_pos
            n_codes = int(counts[lo:hi].sum()) * len(shifts)
            dense = (hi - lo) * m <= min(dense_cells, n_codes)
            pair, weight = _block_pairs(seq, pos, lo, shifts, gap_codes, dense, gap_weights)
            del pos
            if len(pair) == 0:
                continue
            src, dst = pair // m, pair % m
            del pair
            value = weight / float(scale)
            if shrink is not None:
                value = value / (np.sqrt(counts[src + lo].astype(np.float64) * counts[dst]) + shrink)
            keep = _best_first(src, dst, weight, value, top_k, exact_by_weight=shrink is None)
            src_k = src[keep]
            kept_src.append((src_k + lo).astype(np.int32))
            kept_place.append(_place_in_runs(src_k).astype(np.int32))
            kept_dst.append(dst[keep].astype(np.int32))
            kept_w.append(value[keep].astype(np.float32))
            del src, dst, weight, value, keep, src_k
        del g_pos, g_movie
    # rows by movie id (the state's order), each row best first
    dense_of_rank = seq.dense_of_rank().astype(np.int32)
    src = dense_of_rank[np.concatenate(kept_src)] if kept_src else np.zeros(0, np.int32)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=m), out=indptr[1:])
    at = indptr[src] + (np.concatenate(kept_place) if kept_place else 0)
    indices = np.zeros(len(src), dtype=np.int32)
    weights = np.zeros(len(src), dtype=np.float32)
    if len(src):
        indices[at] = dense_of_rank[np.concatenate(kept_dst)]
        weights[at] = np.concatenate(kept_w)
    counts_by_id = np.empty(m, dtype=np.int64)
    counts_by_id[dense_of_rank] = counts
    return {
        "item_ids": np.sort(seq.ids_by_rank), "item_counts": counts_by_id, "indptr": indptr,
        "indices": indices, "weights": weights, "last_time": seq.last_time,
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


def _restricted(seq: _Sequences, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sequences restricted to the ``size`` most rated movies: (rank, user label) per kept rating."""
    n = len(seq.movie)
    kept = int(seq.counts_by_rank[:size].sum())
    x = np.empty(kept, dtype=np.int16 if size <= np.iinfo(np.int16).max else np.int32)
    u = np.empty(kept, dtype=np.int32)
    done, users_before = 0, 0
    for lo, hi in _chunks(n):
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
    for lo, hi in _chunks(max(n, 0), 2 * _CHUNK):
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
            p = np.linalg.inv(a)
            del a
            b = alpha * grams["gram"]
            b += (1 - alpha) * grams["s_t"]
            if consume:
                grams.clear()
            matrix = p @ b
            del p, b
        matrix = np.asarray(matrix, dtype=np.float32)
        matrix[np.diag_indices(size)] = 0.0
        return {"item_ids": head["item_ids"], "item_counts": head["item_counts"], "matrix": matrix,
                "last_time": head["last_time"]}

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
        # each query weighs at most last_n movies: a sparse product touches only their rows of B
        weights = sp.csr_matrix((decay_weights(j, self.last_n, self.decay).astype(np.float32), (row, item)),
                                shape=(len(q), size))
        scores = np.asarray(weights @ self.matrix, dtype=np.float32) if size else np.zeros((len(q), 0), np.float32)
        del weights
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

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie."""
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)


# ------------------------------------------------------------------------------------------------ by name

MODELS = {"seq_rules": SequentialRules, "item_knn": ItemKNN, "slist": SLIST}
"""The sequence models by registry name."""
FIT_PARAMS = {"seq_rules": ("max_gap", "top_k"), "item_knn": ("window", "shrink", "top_k"),
              "slist": ("min_count", "max_items", "window", "alpha", "reg")}
"""The parameters each model's ``fit`` takes; the others (:data:`QUERY_PARAMS`) only change scoring."""
QUERY_PARAMS = ("last_n", "decay", "exclude_seen")


def split_params(name: str, params: dict) -> tuple[dict, dict]:
    """(fit parameters, query parameters) of ``params`` for model ``name``; anything else is an error."""
    fit = {k: v for k, v in params.items() if k in FIT_PARAMS[name]}
    query = {k: v for k, v in params.items() if k in QUERY_PARAMS}
    unknown = set(params) - set(fit) - set(query)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {name}: expected some of "
                         f"{[*FIT_PARAMS[name], *QUERY_PARAMS]}")
    return fit, query


def with_query_params(state: dict, query: dict) -> dict[str, np.ndarray]:
    """A fitted state plus the query parameters, so the stored state answers queries on its own."""
    return {**state, **{f"query_{k}": np.array(v) for k, v in query.items()}}


def fit_model(name: str, users, movies, times, params: dict) -> dict[str, np.ndarray]:
    """Fit model ``name`` with the fit parameters of ``params``; its query parameters go into the state."""
    fit, query = split_params(name, params)
    return with_query_params(MODELS[name].fit(users, movies, times, **fit), query)


def load_model(name: str, state: dict):
    """The recommender of a state from :func:`fit_model` (its query parameters read from it)."""
    query = {k: np.asarray(state[f"query_{k}"]).item() for k in QUERY_PARAMS if f"query_{k}" in state}
    return MODELS[name].from_state(state, **query)
