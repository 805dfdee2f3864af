"""Arithmetic of the sequence-aware strategies on hand-made sequences (exact scores and orders)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.item_knn import ItemKNN
from rcmd_pipeline.recommenders.seq_hybrid import SequenceHybrid, blend_lists
from rcmd_pipeline.recommenders.seq_rules import SequentialRules
from rcmd_pipeline.recommenders.sequence_scoring import _history_codes, _history_positions, _lookup, decay_weights
from rcmd_pipeline.recommenders.slist import SLIST

# user 1 rates 10, 20, 30; user 2 rates 10, 30, 40 (times 1, 2, 3)
USERS = [1, 1, 1, 2, 2, 2]
MOVIES = [10, 20, 30, 10, 30, 40]
TIMES = [1, 2, 3, 1, 2, 3]


def _rules(state) -> dict[tuple[int, int], float]:
    ids = state["item_ids"]
    out = {}
    for a in range(len(ids)):
        for p in range(state["indptr"][a], state["indptr"][a + 1]):
            out[(int(ids[a]), int(ids[state["indices"][p]]))] = float(state["weights"][p])
    return out


def test_decay_weights():
    j = np.array([1, 2, 4])
    assert decay_weights(j, 4, "harmonic").tolist() == [1.0, 0.5, 0.25]
    assert decay_weights(j, 4, "linear").tolist() == [1.0, 0.75, 0.25]
    assert decay_weights(j, 4, "flat").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        decay_weights(j, 4, "cubic")


def test_sequential_rules_weights_are_one_over_gap():
    state = SequentialRules.fit(USERS, MOVIES, TIMES, max_gap=2)
    # 10->30: gap 2 for user 1 (1/2) + gap 1 for user 2 (1) ; 10->40: gap 2 for user 2
    assert _rules(state) == {(10, 20): 1.0, (10, 30): 1.5, (10, 40): 0.5, (20, 30): 1.0, (30, 40): 1.0}
    assert int(state["last_time"]) == 3
    assert state["item_counts"].tolist() == [2, 1, 2, 1]
    only_next = SequentialRules.fit(USERS, MOVIES, TIMES, max_gap=1)
    assert _rules(only_next) == {(10, 20): 1.0, (10, 30): 1.0, (20, 30): 1.0, (30, 40): 1.0}


def test_sequential_rules_scores_from_the_last_items_with_decay():
    state = SequentialRules.fit(USERS, MOVIES, TIMES, max_gap=2)
    rec = SequentialRules.from_state(state, last_n=2, decay="harmonic")
    q = queries_from_histories([[10], [20, 10], [30], [40, 20, 10]])
    scores = rec.scores(q).toarray()  # columns: 10, 20, 30, 40
    assert scores[0].tolist() == [0.0, 1.0, 1.5, 0.5]
    # 10 (j=1, weight 1) + 20 (j=2, weight 1/2): 30 = 1.5 + 0.5 * 1
    assert scores[1].tolist() == [0.0, 1.0, 2.0, 0.5]
    # last_n=2: the oldest item (40) is ignored
    assert scores[3].tolist() == scores[1].tolist()
    recs = rec.recommend_queries(q, 3)
    assert recs[0].tolist() == [30, 20, 40]
    # 20 is in the history but not excluded by default; the previous movie never is recommended
    assert recs[1].tolist() == [30, 20, 40]
    # one rule (30->40), then the most rated (10: 2 ratings; 30 is the previous movie), then 20
    assert recs[2].tolist() == [40, 10, 20]
    seen = SequentialRules.from_state(state, last_n=2, decay="harmonic", exclude_seen=True)
    out = seen.recommend_queries(q, 3)
    assert out[1].tolist() == [30, 40, PAD]  # 10 and 20 seen: nothing left to fill with
    assert out[2].tolist() == [40, 10, 20]
    linear = SequentialRules.from_state(state, last_n=2, decay="linear").scores(q).toarray()
    assert linear[1].tolist() == [0.0, 1.0, 2.0, 0.5]  # linear at n=2: weights 1, 1/2 as well
    flat = SequentialRules.from_state(state, last_n=2, decay="flat").scores(q).toarray()
    assert flat[1].tolist() == [0.0, 1.0, 2.5, 0.5]


def test_sequential_rules_as_a_study_recommender_uses_the_previous_movie_only():
    rec = SequentialRules.from_state(SequentialRules.fit(USERS, MOVIES, TIMES, max_gap=2))
    assert rec.recommend(np.array([10, 20]), 2).tolist() == [[30, 20], [30, 10]]


def test_item_knn_is_cosine_of_windowed_co_occurrence():
    state = ItemKNN.fit(USERS, MOVIES, TIMES, window=1, shrink=0.0)
    rules = _rules(state)
    # C = 1 for the adjacent pairs (either order); counts 10:2, 20:1, 30:2, 40:1
    assert rules[(10, 20)] == pytest.approx(1 / np.sqrt(2))
    assert rules[(20, 10)] == pytest.approx(1 / np.sqrt(2))
    assert rules[(10, 30)] == pytest.approx(0.5)
    assert rules[(30, 40)] == pytest.approx(1 / np.sqrt(2))
    assert (10, 40) not in rules
    shrunk = _rules(ItemKNN.fit(USERS, MOVIES, TIMES, window=1, shrink=2.0))
    assert shrunk[(10, 30)] == pytest.approx(1 / (2 + 2))
    wide = _rules(ItemKNN.fit(USERS, MOVIES, TIMES, window=2, shrink=0.0))
    assert wide[(10, 30)] == pytest.approx(2 / 2)  # adjacent for user 2, 2 apart for user 1
    assert wide[(10, 40)] == pytest.approx(1 / np.sqrt(2))
    rec = ItemKNN.from_state(state, last_n=1)
    assert rec.recommend_queries(queries_from_histories([[10]]), 3).tolist() == [[20, 30, 40]]


def test_top_k_keeps_the_best_rules_ties_by_popularity():
    # 1 -> 2, 3, 4 once each; 4 is the most rated, then 3 (ties at weight 1 by popularity)
    users = [1, 1, 2, 2, 3, 3, 4, 5, 5]
    movies = [1, 2, 1, 3, 1, 4, 4, 3, 4]
    times = [1, 2, 1, 2, 1, 2, 1, 1, 2]
    state = SequentialRules.fit(users, movies, times, max_gap=1, top_k=2)
    ids = state["item_ids"].tolist()
    a = ids.index(1)
    kept = [ids[i] for i in state["indices"][state["indptr"][a]:state["indptr"][a + 1]]]
    assert kept == [4, 3]  # 2 (one rating) is dropped; stored best first
    assert _rules(state)[(3, 4)] == 1.0


def _explicit_slist(users, movies, times, window, alpha, reg):
    """SLIST built literally: X with a row per window, S/T with a row per target (dense numpy)."""
    ids = np.unique(movies)
    index = {m: i for i, m in enumerate(ids)}
    seqs = {}
    for u, m, _t in sorted(zip(users, movies, times, strict=True), key=lambda r: (r[0], r[2], r[1])):
        seqs.setdefault(u, []).append(index[m])
    x_rows, s_rows, t_rows = [], [], []
    for seq in seqs.values():
        length = len(seq)
        for start in range(-(window - 1), length):
            row = np.zeros(len(ids))
            for p in range(max(0, start), min(length, start + window)):
                row[seq[p]] += 1
            x_rows.append(row / np.sqrt(window))
        for t in range(1, length):
            s, tt = np.zeros(len(ids)), np.zeros(len(ids))
            for j in range(1, min(window, t) + 1):
                s[seq[t - j]] += 1.0 / j
            tt[seq[t]] = 1
            s_rows.append(s)
            t_rows.append(tt)
    x, s, t = np.array(x_rows), np.array(s_rows), np.array(t_rows)
    return ids, x.T @ x, s.T @ s, s.T @ t


def test_slist_grams_match_the_literal_construction_and_the_closed_form():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(6), 7)
    movies = rng.integers(1, 8, size=len(users))
    times = np.tile(np.arange(7), 6) + rng.integers(0, 2, size=len(users))
    for window in (1, 2, 3):
        grams = SLIST.grams(users, movies, times, min_count=1, max_items=100, window=window)
        ids, gram, s_s, s_t = _explicit_slist(users, movies, times, window, 0.5, 1.0)
        order = np.argsort(grams["item_ids"])
        assert grams["item_ids"][order].tolist() == ids.tolist()
        back = np.ix_(order, order)
        np.testing.assert_allclose(grams["gram"][back], gram, atol=1e-9)
        np.testing.assert_allclose(grams["s_s"][back], s_s, atol=1e-9)
        np.testing.assert_allclose(grams["s_t"][back], s_t, atol=1e-9)
    # closed forms
    state = SLIST.fit(users, movies, times, window=2, alpha=0.5, reg=3.0)
    ids, gram, s_s, s_t = _explicit_slist(users, movies, times, 2, 0.5, 3.0)
    b = np.linalg.inv(0.5 * gram + 0.5 * s_s + 3.0 * np.eye(len(ids))) @ (0.5 * gram + 0.5 * s_t)
    np.fill_diagonal(b, 0.0)
    order = np.argsort(state["item_ids"])
    np.testing.assert_allclose(state["matrix"][np.ix_(order, order)], b, rtol=1e-4, atol=1e-6)
    slis = SLIST.fit(users, movies, times, window=2, alpha=1.0, reg=3.0)
    p = np.linalg.inv(gram + 3.0 * np.eye(len(ids)))
    ease = np.eye(len(ids)) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(slis["matrix"][np.ix_(order, order)], ease, rtol=1e-4, atol=1e-6)
    assert np.diag(slis["matrix"]).tolist() == [0.0] * len(ids)


def test_slist_item_set_and_scores():
    # min_count keeps movies rated at least twice (10 and 30); max_items caps by popularity
    state = SLIST.fit(USERS, MOVIES, TIMES, min_count=2, window=1, alpha=0.5, reg=1.0)
    assert sorted(state["item_ids"].tolist()) == [10, 30]
    assert state["matrix"].shape == (2, 2)
    capped = SLIST.fit(USERS, MOVIES, TIMES, min_count=1, max_items=1, window=1)
    assert capped["item_ids"].tolist() == [10]  # 10 and 30 tie at 2 ratings: smaller id first
    rec = SLIST.from_state(state, last_n=3, decay="flat")
    q = queries_from_histories([[40, 10], [20]])
    m = state["matrix"]
    i10, i30 = state["item_ids"].tolist().index(10), state["item_ids"].tolist().index(30)
    assert m[i10, i30] > 0
    recs = rec.recommend_queries(q, 2)
    assert recs[0, 0] == 30  # scored by 10 (40 is unknown to the model)
    assert recs[1].tolist() == [10, 30]  # no known item: popularity fill (10 before 30 by id)


def test_blend_lists_reciprocal_rank_arithmetic():
    q = queries_from_histories([[1, 5]])
    lists = {"a": np.array([[7, 8, 9]]), "b": np.array([[9, 7, 5]])}
    # a: 7 -> 1/(1+1), 8 -> 1/(2+1), 9 -> 1/(3+1); b (weight 2): 9 -> 2/2, 7 -> 2/3, 5 is seen
    out = blend_lists(q, lists, {"a": 1.0, "b": 2.0}, 3, c0=1.0, exclude_seen=True)
    assert out.tolist() == [[9, 7, 8]]  # 9: 1.25, 7: 1.1667, 8: 0.3333
    only_a = blend_lists(q, lists, {"a": 1.0, "b": 0.0}, 3, c0=1.0, exclude_seen=True)
    assert only_a.tolist() == [[7, 8, 9]]
    keep_seen = blend_lists(q, lists, {"a": 0.0, "b": 1.0}, 3, c0=1.0, exclude_seen=False)
    assert keep_seen.tolist() == [[9, 7, PAD]]  # 5 is the previous movie: never


def test_sequence_hybrid_state_round_trip():
    state = SequentialRules.fit(USERS, MOVIES, TIMES, max_gap=2)
    parts = {"sr": SequentialRules.from_state(state), "knn": ItemKNN.from_state(ItemKNN.fit(USERS, MOVIES, TIMES))}
    hybrid = SequenceHybrid(parts, {"sr": 1.0, "knn": 0.5}, depth=5)
    again = SequenceHybrid.from_state(hybrid.state(), parts)
    q = queries_from_histories([[10], [20, 10]])
    assert again.weights == hybrid.weights
    assert np.array_equal(again.recommend_queries(q, 3), hybrid.recommend_queries(q, 3))
    with pytest.raises(ValueError):
        SequenceHybrid(parts, {"sr": 0.0})


# ------------------------------------------------------------------ the blocked fits against literal sums


def _literal_table(users, movies, times, gaps, symmetric, top_k, shrink=None):
    """W[a][b] summed in plain Python over each user's (time, id)-ordered sequence; rows cut to top_k.

    Gap g adds gaps[g-1] (exact: a Fraction or an int). Cosines with ``shrink``. Row order: value descending,
    then more rated, then smaller id. Returns {a: [(b, value), ...]} best first.
    """
    seqs = {}
    for u, m, _t in sorted(zip(users, movies, times, strict=True), key=lambda r: (r[0], r[2], r[1])):
        seqs.setdefault(u, []).append(m)
    counts = {}
    for m in movies:
        counts[m] = counts.get(m, 0) + 1
    w = {}
    for seq in seqs.values():
        for p in range(len(seq)):
            for g in range(1, len(gaps) + 1):
                if p + g < len(seq) and seq[p] != seq[p + g]:
                    w[(seq[p], seq[p + g])] = w.get((seq[p], seq[p + g]), 0) + gaps[g - 1]
                    if symmetric:
                        w[(seq[p + g], seq[p])] = w.get((seq[p + g], seq[p]), 0) + gaps[g - 1]
    rows = {}
    for (a, b), v in w.items():
        v = float(v)
        if shrink is not None:
            v = v / (np.sqrt(float(counts[a]) * counts[b]) + shrink)
        rows.setdefault(a, []).append((b, v))
    return {a: sorted(r, key=lambda e: (-e[1], -counts[e[0]], e[0]))[:top_k] for a, r in rows.items()}


def _rows(state) -> dict:
    ids = state["item_ids"]
    out = {}
    for a in range(len(ids)):
        lo, hi = state["indptr"][a], state["indptr"][a + 1]
        if hi > lo:
            pairs = zip(state["indices"][lo:hi], state["weights"][lo:hi], strict=True)
            out[int(ids[a])] = [(int(ids[b]), float(v)) for b, v in pairs]
    return out


def _random_ratings(seed, n=3000, n_users=60, n_movies=80, dtype=np.int64, id_scale=7):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(dtype) * 3 + 1
    movies = (rng.zipf(1.6, n) % n_movies).astype(dtype) * id_scale
    times = rng.integers(0, 40, n)  # many same-second ratings: the movie id breaks the tie
    return users, movies, times


BLOCKINGS = [
    {},  # one block
    {"block_codes": 50, "dense_cells": 0, "sort_rows": 37},  # many blocks, sorted pair codes
    {"block_codes": 400, "dense_cells": 10**9, "sort_rows": 100},  # many blocks, bincount cells
]


@pytest.mark.parametrize("blocking", BLOCKINGS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_blocked_rules_and_knn_equal_the_literal_sums(blocking, dtype):
    users, movies, times = _random_ratings(11, dtype=dtype)
    for max_gap, top_k in ((1, 200), (3, 4), (10, 2)):
        state = SequentialRules.fit(users, movies, times, max_gap=max_gap, top_k=top_k, **blocking)
        gaps = [Fraction(1, g) for g in range(1, max_gap + 1)]
        want = _literal_table(users.tolist(), movies.tolist(), times.tolist(), gaps, False, top_k)
        got = _rows(state)
        assert [[b for b, _ in r] for r in got.values()] == [[b for b, _ in want[a]] for a in got]
        assert set(got) == set(want)
        for a, row in got.items():  # stored as float32 of the exact float64 sums
            assert [v for _, v in row] == [float(np.float32(v)) for _, v in want[a]]
    for window, shrink, top_k in ((1, 0.0, 200), (3, 5.0, 3), (10, 20.0, 1)):
        state = ItemKNN.fit(users, movies, times, window=window, shrink=shrink, top_k=top_k, **blocking)
        want = _literal_table(users.tolist(), movies.tolist(), times.tolist(), [1] * window, True, top_k, shrink)
        got = _rows(state)
        assert set(got) == set(want)
        for a, row in got.items():
            assert [b for b, _ in row] == [b for b, _ in want[a]], a
            assert [v for _, v in row] == [float(np.float32(v)) for _, v in want[a]]
    assert state["item_ids"].tolist() == sorted(set(movies.tolist()))
    assert state["item_counts"].tolist() == [int((movies == m).sum()) for m in state["item_ids"]]
    assert int(state["last_time"]) == int(times.max())


def test_blocked_fits_do_not_depend_on_the_blocking_or_the_id_range():
    users, movies, times = _random_ratings(12)
    reference = {name: fit(users, movies, times) for name, fit in (("sr", SequentialRules.fit), ("knn", ItemKNN.fit))}
    for blocking in BLOCKINGS[1:]:
        for name, fit in (("sr", SequentialRules.fit), ("knn", ItemKNN.fit)):
            state = fit(users, movies, times, **blocking)
            for key, value in reference[name].items():
                assert np.array_equal(state[key], value), (name, key, blocking)
    # negative and huge ids take the sorted-ids path instead of a lookup table: same model
    shifted = SequentialRules.fit(users - 10**12, movies * 10**9 - 5, times, max_gap=3)
    plain = SequentialRules.fit(users, movies, times, max_gap=3)
    assert shifted["item_ids"].tolist() == (plain["item_ids"] * 10**9 - 5).tolist()
    for key in ("item_counts", "indptr", "indices", "weights"):
        assert np.array_equal(shifted[key], plain[key])


def test_top_k_order_is_exact_where_float32_merges_values():
    from rcmd_pipeline.recommenders.pair_table import _best_first

    # source 0: targets 0..3; 1 + 1e-12 and 1 are one float32 but 3 must come before 0 and 2
    src = np.zeros(4, dtype=np.int64)
    dst = np.array([0, 1, 2, 3], dtype=np.int64)
    value = np.array([1.0, 0.5, 1.0, 1.0 + 1e-12])
    weight = np.ones(4, dtype=np.int64)
    assert dst[_best_first(src, dst, weight, value, 2, exact_by_weight=False)].tolist() == [3, 0]
    assert dst[_best_first(src, dst, weight, value, 4, exact_by_weight=False)].tolist() == [3, 0, 2, 1]
    # the same order as the three-key sort on random float ties, several sources
    rng = np.random.default_rng(4)
    n = 2000
    src = np.sort(rng.integers(0, 30, n))
    dst = rng.permutation(n).astype(np.int64)
    value = 1.0 + rng.integers(0, 5, n) * 1e-12 + rng.integers(0, 3, n) * 0.25
    keep = _best_first(src, dst, np.ones(n, dtype=np.int64), value, 7, exact_by_weight=False)
    order = np.lexsort((dst, -value, src))
    place = np.arange(n) - np.searchsorted(src[order], src[order], side="left")
    assert keep.tolist() == order[place < 7].tolist()


def test_pair_tables_counted_by_two_threads_equal_one_thread(monkeypatch):
    from rcmd_pipeline.recommenders import pair_table

    users, movies, times = _random_ratings(13)
    monkeypatch.setattr(pair_table, "_THREADS", 1)
    reference = {name: fit(users, movies, times, **BLOCKINGS[1])
                 for name, fit in (("sr", SequentialRules.fit), ("knn", ItemKNN.fit))}
    monkeypatch.setattr(pair_table, "_THREADS", 2)
    monkeypatch.setattr(pair_table, "_THREAD_MIN_RATINGS", 1)
    for blocking in BLOCKINGS:
        for name, fit in (("sr", SequentialRules.fit), ("knn", ItemKNN.fit)):
            state = fit(users, movies, times, **blocking)
            for key, value in reference[name].items():
                assert np.array_equal(state[key], value), (name, key, blocking)


def test_sequences_are_ordered_by_user_time_movie_in_user_blocks():
    from rcmd_pipeline.recommenders.user_sequences import _sequences

    users, movies, times = _random_ratings(13, n=500, dtype=np.int32)
    order = np.lexsort((movies, times, users))
    for sort_rows in (1, 17, 10**6):
        seq = _sequences(users, movies, times, sort_rows=sort_rows)
        assert seq.ids_by_rank[seq.movie].tolist() == movies[order].tolist()
        u = users[order]
        left = [min(255, int((u[p + 1:] == u[p]).sum())) for p in range(len(u))]
        assert seq.left.tolist() == left
        assert seq.counts_by_rank.tolist() == sorted(seq.counts_by_rank.tolist(), reverse=True)


def test_slist_grams_do_not_depend_on_chunks_or_blocks(monkeypatch):
    from rcmd_pipeline.recommenders import ratings

    users, movies, times = _random_ratings(14, n=1500)
    whole = SLIST.grams(users, movies, times, min_count=3, max_items=40, window=4)
    monkeypatch.setattr(ratings, "_CHUNK", 13)
    pieces = SLIST.grams(users.astype(np.int32), movies.astype(np.int32), times, min_count=3, max_items=40, window=4,
                         sort_rows=29)
    for key, value in whole.items():
        assert np.array_equal(pieces[key], value), key
    assert len(whole["item_ids"]) == 40
    # fit consumes its own Gram matrices only: solve leaves the caller's intact
    grams = SLIST.grams(users, movies, times, window=2)
    SLIST.solve(grams, alpha=0.5, reg=2.0)
    assert set(grams) == {"item_ids", "item_counts", "gram", "s_s", "s_t", "last_time"}


def test_the_pair_table_memory_is_bounded_by_the_blocks():
    import tracemalloc

    rng = np.random.default_rng(15)
    n = 600_000
    users = np.sort(rng.integers(0, 20_000, n)).astype(np.int32)
    movies = rng.integers(0, 3_000, n).astype(np.int32)
    times = rng.integers(0, 10**9, n)
    tracemalloc.start()
    try:
        state = ItemKNN.fit(users, movies, times, window=10, block_codes=300_000, sort_rows=50_000, top_k=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 12 M pair instances (96 MB as int64 codes) never exist at once: sequences (5 bytes a rating),
    # one block's codes and its reductions, the state
    state_bytes = sum(v.nbytes for v in state.values())
    assert peak < 5 * n + 40 * 300_000 + 2 * state_bytes + 8_000_000, peak


def test_fit_one_loads_the_training_window_compactly(tmp_path):
    """benchmarks/eval_real_small.py --fit-one: row groups into narrow arrays, only ratings before the cutoff."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_real_small.py"
    spec = importlib.util.spec_from_file_location("eval_real_small", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(16)
    n = 5000
    frame = pd.DataFrame({"userId": rng.integers(1, 300, n), "movieId": rng.integers(1, 90_000, n),
                          "rating": rng.random(n), "timestamp": rng.integers(10**9, 2 * 10**9, n)})
    frame.loc[7, "movieId"] = 2**40  # an id beyond int32: that column stays int64
    frame.to_parquet(tmp_path / "r.parquet", row_group_size=700)
    cutoff = int(frame["timestamp"].median())
    users, movies, times = bench.load_window(str(tmp_path / "r.parquet"), cutoff)
    want = frame[frame["timestamp"] < cutoff]
    assert (users.dtype, movies.dtype, times.dtype) == (np.int32, np.int64, np.int64)
    assert users.tolist() == want["userId"].tolist()
    assert movies.tolist() == want["movieId"].tolist()
    assert times.tolist() == want["timestamp"].tolist()
    everything = bench.load_window(str(tmp_path / "r.parquet"), None)
    assert len(everything[0]) == n
    state = SequentialRules.fit(users, movies, times, max_gap=2)
    assert np.array_equal(state["indices"], SequentialRules.fit(*(want[c].to_numpy() for c in
                                                                  ("userId", "movieId", "timestamp")),
                                                                max_gap=2)["indices"])


@pytest.mark.parametrize("blocking", BLOCKINGS)
def test_item_knn_fit_shrinks_equals_one_fit_per_shrink(blocking):
    users, movies, times = _random_ratings(13)
    shrinks = [0.0, 5.0, 20.0]
    for window, top_k in ((1, 200), (4, 3)):
        states = ItemKNN.fit_shrinks(users, movies, times, shrinks=shrinks, window=window, top_k=top_k, **blocking)
        assert len(states) == len(shrinks)
        for shrink, state in zip(shrinks, states, strict=True):
            alone = ItemKNN.fit(users, movies, times, window=window, shrink=shrink, top_k=top_k, **blocking)
            assert set(state) == set(alone)
            for key, value in alone.items():
                assert np.array_equal(state[key], value), (shrink, key)
    with pytest.raises(ValueError, match="shrink"):
        ItemKNN.fit_shrinks(users, movies, times, shrinks=[1.0, -1.0])


def test_history_positions_are_kept_per_item_set_and_equal_a_fresh_lookup():
    q = queries_from_histories([[5, 3, 9], [3], [7, 1, 4]])
    a, b = np.array([1, 3, 5, 9]), np.array([3, 7])
    first = _history_positions(q, a)
    assert first.tolist() == _lookup(a, q.items).tolist() == [2, 1, 3, 1, -1, 0, -1]
    assert _history_positions(q, a.copy()) is first  # the same item set again: looked up once
    assert _history_positions(q, b).tolist() == [-1, 0, -1, 0, 1, -1, -1]  # another item set: looked up anew
    assert _history_positions(q, a).tolist() == first.tolist()


def test_history_codes_are_each_query_movie_once_in_order():
    # a movie twice in one history, a prev repeated from the history, one id far above the rest
    q = queries_from_histories([[5, 3, 5, 9], [3], [7, 290_000, 4]], prev=[9, 3, 1])
    codes, scale = _history_codes(q)
    assert scale == 290_001
    expected = sorted({row * scale + movie for row, movies in enumerate([[5, 3, 5, 9, 9], [3, 3], [7, 290_000, 4, 1]])
                       for movie in movies})
    assert codes.tolist() == expected
    assert codes.tolist() == np.unique(codes).tolist()
    assert _history_codes(q)[0] is codes  # kept on the batch



def test_sorted_unique_equals_np_unique_and_serves_ids_a_lookup_table_cannot():
    from rcmd_pipeline.recommenders.ratings import _Densifier, sorted_unique

    rng = np.random.default_rng(3)
    for values in (np.zeros(0, np.int64), np.array([5]), rng.integers(-50, 50, 1000),
                   rng.integers(0, 2**40, 1000), np.repeat(np.arange(7), 3)):
        for kind in (None, "stable"):
            assert sorted_unique(values, kind).tolist() == np.unique(values).tolist()
    ids = np.array([10**12, -3, 7, 10**12, 7])  # negative and huge: the sort, not a table
    densify = _Densifier(ids)
    assert densify.ids.tolist() == [-3, 7, 10**12]
    assert densify(ids).tolist() == [2, 0, 1, 2, 1]
