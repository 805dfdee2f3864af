"""The sparse item -> item table of the neighbour models (sequential rules, item-kNN), and its scoring.

The table is counted from pairs of positions a few apart in the users' sequences
(``user_sequences.py``): pair instances are enumerated per block of source movies
(~``_BLOCK_CODES`` at a time, all shifts of a position read as one window row), summed exactly
(bincount over the block's cells, or a sort of pair codes) and cut to each source's ``top_k`` by
one packed-key argsort before the next block. The result equals the straightforward construction
(tests compare it with literal sums).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.ratings import _EMPTY, _blocks, _popular_order
from rcmd_pipeline.recommenders.sequence_scoring import (
    _finish,
    _history_positions,
    _HistoryModel,
    _lookup,
    _recent_known,
    decay_weights,
)
from rcmd_pipeline.recommenders.user_sequences import _PAD, _SORT_ROWS, _Sequences, _sequences

_BLOCK_CODES = 6_000_000  # pair instances per block of source movies
_DENSE_CELLS = 8_000_000  # a block's (sources x movies) cells summed with bincount when at most this
_MAX_BLOCK_SOURCES = 1 << 15


def _place_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (keys sorted)."""
    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if n else _EMPTY
    place = np.arange(n, dtype=np.int64)
    place -= np.repeat(starts, np.diff(np.r_[starts, n]))
    return place


def _block_pairs(seq: _Sequences, pos: np.ndarray, lo: int, spec: _PairSpec,
                 dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pair code (source - lo) * m + target, integer weight) of a block's sources, summed exactly.

    A shift d pairs position p with p + d (same user, another movie). Each source position's
    neighbours are read as one row of a sliding window over the padded sequence (contiguous
    memory, all shifts at once). ``dense`` sums with bincount over the block's (sources x m)
    cells; otherwise codes (with the gap in the low digits when ``spec.gap_codes``) are sorted and
    counted in runs.
    """
    m = len(seq.ids_by_rank)
    shifts, gap_codes, gap_weights = spec.shifts, spec.gap_codes, spec.gap_weights
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


@dataclass(frozen=True)
class _PairSpec:
    """What a pair table counts: see :func:`_pair_table`."""

    gap_weights: np.ndarray  # int64, the weight of a pair g positions apart at [g - 1]
    scale: int
    shifts: list[int]  # position p is paired with p + d for each d
    gap_codes: bool  # the weights differ by gap: a pair's code carries its gap
    top_k: int
    shrink: float | None


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
    return _pair_tables(users, movies, times, gap_weights, scale, symmetric, top_k, [shrink], block_codes,
                        dense_cells, sort_rows)[0]


def _pair_tables(users, movies, times, gap_weights: np.ndarray, scale: int, symmetric: bool, top_k: int,
                 shrinks: list[float | None], block_codes: int = _BLOCK_CODES, dense_cells: int = _DENSE_CELLS,
                 sort_rows: int = _SORT_ROWS) -> list[dict[str, np.ndarray]]:
    """:func:`_pair_table` for each of ``shrinks``, counting the pairs once (tuning item-kNN's shrink)."""
    seq = _sequences(users, movies, times, sort_rows=sort_rows)
    gap_weights = np.asarray(gap_weights, dtype=np.int64)
    gaps = range(1, len(gap_weights) + 1)
    specs = [_PairSpec(gap_weights, scale, shifts=[*gaps, *([-g for g in gaps] if symmetric else [])],
                       gap_codes=bool((gap_weights != gap_weights[0]).any()), top_k=top_k, shrink=shrink)
             for shrink in shrinks]
    kept = list(_kept_pairs(seq, specs, block_codes, dense_cells))
    return [_neighbour_state(seq, [block[i] for block in kept]) for i in range(len(specs))]


def _source_groups(seq: _Sequences, n_shifts: int, block_codes: int) -> list[list[tuple[int, int]]]:
    """Blocks of source ranks whose pair instances (ratings x shifts) stay within ``block_codes``, in
    groups: one scan of the sequences finds the positions of a group's sources, then each block's."""
    counts = seq.counts_by_rank
    groups, group = [], []
    for lo, hi in _blocks(counts * n_shifts, block_codes, _MAX_BLOCK_SOURCES):
        if group and counts[group[0][0]:hi].sum() > max(block_codes, len(seq.movie) // 8):
            groups.append(group)
            group = []
        group.append((lo, hi))
    if group:
        groups.append(group)
    return groups


_THREADS = max(1, min(2, os.cpu_count() or 1))
"""Threads counting a pair table (two: the 2-core machines this runs on; more cores would need the
block memory budget spread further)."""
_THREAD_MIN_RATINGS = 1_000_000
"""Below this one thread (small tables gain nothing). The tuning's 2 M-rating fits use two: 5 s less of
``sequence_tuning`` at 32M scale. (It was 8 M until the index build's peak came down: the second
thread's malloc arena keeps 60-70 MB that later steps of an in-process run carry, affordable now.)"""


def _kept_pairs(seq: _Sequences, specs: list[_PairSpec], block_codes: int, dense_cells: int):
    """Per block of source movies, for each spec (they differ only in ``shrink``): (source rank, place
    among its targets, target rank, value) of each source's ``top_k`` best targets, best first.

    Groups of blocks are independent (a source's targets are all in its block), so :data:`_THREADS`
    threads take them in turn (NumPy's sorts, gathers and arithmetic run without the GIL); each
    thread's blocks are ``block_codes / threads``, so the memory in flight stays that of one block.
    """
    threads = max(1, min(_THREADS, len(seq.movie) // _THREAD_MIN_RATINGS))
    groups = _source_groups(seq, len(specs[0].shifts), max(1, block_codes // threads))
    if threads == 1:
        for group in groups:
            yield from _group_kept(seq, specs, group, dense_cells)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="pair-table") as pool:
        for kept in pool.map(lambda group: list(_group_kept(seq, specs, group, dense_cells)), groups):
            yield from kept


def _group_kept(seq: _Sequences, specs: list[_PairSpec], group: list[tuple[int, int]], dense_cells: int):
    """:func:`_kept_pairs` for one group of blocks: one scan finds the group's positions, then each block's."""
    spec = specs[0]
    m, counts = len(seq.ids_by_rank), seq.counts_by_rank
    g_lo, g_hi = group[0][0], group[-1][1]
    g_pos = np.flatnonzero((seq.movie >= g_lo) & (seq.movie < g_hi))
    g_movie = seq.movie[g_pos]
    for lo, hi in group:
        pos = g_pos[(g_movie >= lo) & (g_movie < hi)] if len(group) > 1 else g_pos
        n_codes = int(counts[lo:hi].sum()) * len(spec.shifts)
        dense = (hi - lo) * m <= min(dense_cells, n_codes)
        pair, weight = _block_pairs(seq, pos, lo, spec, dense)
        del pos
        if len(pair) == 0:
            continue
        src, dst = pair // m, pair % m
        del pair
        kept = [_top_k(src, dst, weight, lo, counts, one) for one in specs]
        del src, dst, weight
        yield kept


def _top_k(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, lo: int, counts: np.ndarray,
           spec: _PairSpec) -> tuple[np.ndarray, ...]:
    """One block's values (cosines with ``shrink``) cut to each source's ``top_k``, as compact arrays."""
    value = weight / float(spec.scale)
    if spec.shrink is not None:
        value = value / (np.sqrt(counts[src + lo].astype(np.float64) * counts[dst]) + spec.shrink)
    keep = _best_first(src, dst, weight, value, spec.top_k, exact_by_weight=spec.shrink is None)
    src_k = src[keep]
    return ((src_k + lo).astype(np.int32), _place_in_runs(src_k).astype(np.int32), dst[keep].astype(np.int32),
            value[keep].astype(np.float32))


def _neighbour_state(seq: _Sequences, kept: list[tuple[np.ndarray, ...]]) -> dict[str, np.ndarray]:
    """The state of a neighbour model: CSR rows by movie id (the state's order), each row best first."""
    m, counts = len(seq.ids_by_rank), seq.counts_by_rank
    kept_src, kept_place, kept_dst, kept_w = ([block[i] for block in kept] for i in range(4))
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


class _NeighbourModel(_HistoryModel):
    """Scoring shared by the sparse item -> item models (state: CSR rows of targets per source)."""

    name = "neighbours"

    def __init__(self, state: dict, last_n: int = 5, decay: str = "harmonic", exclude_seen: bool = False) -> None:
        self._set_query_params(state, last_n, decay, exclude_seen)
        self.item_ids = np.asarray(state["item_ids"], dtype=np.int64)
        self.item_counts = np.asarray(state["item_counts"], dtype=np.int64)
        m = len(self.item_ids)
        self.matrix = sp.csr_matrix(
            (np.asarray(state["weights"], dtype=np.float64), np.asarray(state["indices"], dtype=np.int64),
             np.asarray(state["indptr"], dtype=np.int64)), shape=(m, m))
        self._rank_of = np.empty(m, dtype=np.int64)
        order = _popular_order(self.item_counts)
        self._rank_of[order] = np.arange(m)
        self._popular_ids = self.item_ids[order]

    def scores(self, q: Queries) -> sp.csr_matrix:
        """(queries x model movies) sparse scores sum_j decay(j) W[a_j, :]."""
        m = len(self.item_ids)
        row, item, j = _recent_known(q, _history_positions(q, self.item_ids), self.last_n)
        weights = decay_weights(j, self.last_n, self.decay)
        vectors = sp.csr_matrix((weights, (row, item)), shape=(len(q), m))
        return (vectors @ self.matrix).tocsr()

    def candidate_scores(self, q: Queries, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The score of each (query row, movie id); 0 for a movie the model does not know."""
        s = self.scores(q)
        s.sum_duplicates()
        col = _lookup(self.item_ids, ids)
        out = np.zeros(len(col))
        known = col >= 0
        if known.any():
            out[known] = np.asarray(s[np.asarray(rows)[known], col[known]]).ravel()
        return out

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        s = self.scores(q)
        s.sum_duplicates()
        rows = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(s.indptr))
        cand = s.indices.astype(np.int64)
        return _finish(q, int(k), rows, self.item_ids[cand], s.data, self._rank_of[cand], self._popular_ids,
                       self.exclude_seen)
