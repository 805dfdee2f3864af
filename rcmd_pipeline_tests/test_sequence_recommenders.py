"""Arithmetic of the sequence-aware strategies on hand-made sequences (exact scores and orders)."""

from __future__ import annotations

import numpy as np
import pytest

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.sequence import (
    SLIST,
    ItemKNN,
    SequenceHybrid,
    SequentialRules,
    blend_lists,
    decay_weights,
)

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
