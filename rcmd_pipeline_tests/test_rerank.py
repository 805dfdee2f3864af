"""Arithmetic of the learned re-ranker (recommenders/rerank.py) on hand-made lists."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.rerank import (
    Candidates,
    Fitted,
    Reranker,
    _batch,
    _folded_loss,
    candidates,
    features,
    fit_blocks,
    fit_boosted,
    fit_conditional_logit,
    history_band,
    log_counts,
    part_names,
    rank_candidates,
    row_normalised,
    softmax_loss,
    state_from_choice,
    view_models,
)

# query 0: history [5, 7] (prev 7); query 1: history [9] (prev 9)
Q = queries_from_histories([[5, 7], [9]])
A = np.array([[7, 1, 2, 5], [1, 3, PAD, PAD]])  # part "a": 7 is prev, 5 seen in query 0
B = np.array([[2, 3, 4, 1], [9, 2, 1, 4]])  # part "b": 9 is prev of query 1


class _Listed:
    """A part that answers with fixed lists (and, optionally, fixed scores per (row, id))."""

    def __init__(self, lists: np.ndarray, scores: dict | None = None) -> None:
        self.lists, self._scores = lists, scores

    def recommend_queries(self, q, k):
        return self.lists[:, :k]


def test_candidates_are_the_union_in_first_listing_order_with_each_parts_rank():
    c = candidates(Q, [A, B])
    assert c.rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # query 0: a lists 7 (prev), 1, 2, 5 (seen); b lists 2, 3, 4, 1 -> 1, 2 first (from a), then 3, 4
    # query 1: a lists 1, 3; b lists 9 (prev), 2, 1, 4
    assert c.ids.tolist() == [1, 2, 3, 4, 1, 3, 2, 4]
    assert c.ranks.tolist() == [[2, 4], [3, 1], [0, 2], [0, 3], [1, 3], [2, 0], [0, 2], [0, 4]]
    assert c.n_queries == 2
    keep_seen = candidates(Q, [A, B], exclude_seen=False)
    assert keep_seen.ids[keep_seen.rows == 0].tolist() == [1, 2, 5, 3, 4]  # 5 comes back, prev 7 never


def test_features_rank_bands_reciprocal_ranks_counts_and_interactions():
    c = candidates(Q, [A, B])
    log_count = np.log1p(np.arange(len(c.ids), dtype=float))
    x, names = features(c, log_count, history_band(Q), ["a", "b"], interactions=False)
    col = {n: i for i, n in enumerate(names)}
    assert names[:8] == ["a:rank 1", "a:rank 2", "a:rank 3", "a:rank 4-5", "a:rank 6-10", "a:rank 11-20",
                         "a:rank 21+", "a:1/r"]
    row = x[0]  # movie 1 of query 0: a rank 2, b rank 4
    assert row[col["a:rank 2"]] == 1 and row[col["b:rank 4-5"]] == 1
    assert row[col["a:1/r"]] == 0.5 and row[col["b:1/r"]] == 0.25
    assert x[2, col["a:1/r"]] == 0 and x[2, :7].sum() == 0  # movie 3 of query 0: not listed by a
    assert x[:, col["log count"]].tolist() == log_count.tolist()
    assert np.allclose(x[:, col["log count^2"]], log_count ** 2)
    # query 0 has 2 earlier ratings (band 1: 2-5), query 1 has 1 (band 0: the baseline)
    assert history_band(Q).tolist() == [1, 0]
    xi, names_i = features(c, log_count, history_band(Q), ["a", "b"], interactions=True)
    ci = {n: i for i, n in enumerate(names_i)}
    assert "a:1/r x history band 0" not in ci  # the baseline band: a:1/r is the sum over bands
    assert xi[0, ci["a:1/r x history band 1"]] == 0.5 and xi[4, ci["a:1/r x history band 1"]] == 0
    assert xi[0, ci["a:1/r x b:1/r"]] == 0.125
    assert xi[0, ci["log count x history band 1"]] == log_count[0]


def test_scores_are_divided_by_the_querys_best_candidate_score():
    c = Candidates(np.array([0, 0, 0, 2, 2]), np.array([1, 2, 3, 1, 2]), np.zeros((5, 1), np.int64), 3)
    assert row_normalised(c, np.array([2.0, 1.0, 0.5, -1.0, 0.0])).tolist() == [1.0, 0.5, 0.25, 0.0, 0.0]
    x, names = features(c, np.zeros(5), np.zeros(3, np.int64), ["a"], False, {"a": np.array([4.0, 1, 0, 3, 6])})
    assert x[:, names.index("a:score/max")].tolist() == [1.0, 0.25, 0.0, 0.5, 1.0]


def test_softmax_loss_and_gradient_by_hand_and_by_finite_differences():
    # query 0: candidates with scores 1 and 0 (positive: the first); query 1: scores 0, 0, 2 (positive: the second)
    x = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    rows = np.array([0, 0, 1, 1, 1])
    positive = np.array([True, False, False, True, False])
    w = np.array([1.0, 0.0])
    loss, grad = softmax_loss(w, x, rows, positive, 2, l2=0.0)
    expected = (-(1 - math.log(math.e + 1)) - (0 - math.log(1 + 1 + math.e ** 2))) / 2
    assert loss == pytest.approx(expected, rel=1e-12)
    w = np.array([0.3, -0.7])
    loss, grad = softmax_loss(w, x, rows, positive, 2, l2=0.1)
    eps = 1e-6
    numeric = [(softmax_loss(w + eps * e, x, rows, positive, 2, 0.1)[0]
                - softmax_loss(w - eps * e, x, rows, positive, 2, 0.1)[0]) / (2 * eps) for e in np.eye(2)]
    assert np.allclose(grad, numeric, atol=1e-6)


def _queries_of_candidates(rng, n: int, width: int, without: int):
    """``n`` queries of the candidates 1..width each, a random next movie among them except for the
    first ``without`` queries (99: not among the candidates, no information, skipped by a fit)."""
    rows = np.repeat(np.arange(n), width)
    ids = np.tile(np.arange(1, width + 1), n)
    actual = rng.integers(1, width + 1, n)
    actual[:without] = 99
    return rows, ids, actual


def test_fit_learns_the_feature_that_marks_the_next_movie_and_skips_queries_without_it():
    rng = np.random.default_rng(0)
    n, width = 60, 5
    rows, ids, actual = _queries_of_candidates(rng, n, width, without=3)
    signal = (ids == actual[rows]).astype(float) + 0.1 * rng.standard_normal(len(ids))
    noise = rng.standard_normal(len(ids))
    c = Candidates(rows, ids, np.ones((len(ids), 1), np.int64), n)
    fitted = fit_conditional_logit(np.column_stack([signal, noise]), c, actual, l2=1e-3)
    assert fitted.queries_used == n - 3
    assert fitted.weights[0] > 5 * abs(fitted.weights[1])
    z = (np.column_stack([signal, noise]) - fitted.mean) / fitted.std
    top = rank_candidates(c, z @ fitted.weights, 1)[:, 0]
    assert (top[3:] == actual[3:]).all()


def test_boosted_trees_learn_a_non_linear_mark_of_the_next_movie_and_survive_the_state():
    # the next movie is the candidate whose feature lies in a middle band: no linear order finds it
    rng = np.random.default_rng(1)
    n, width = 300, 6
    rows, ids, actual = _queries_of_candidates(rng, n, width, without=5)
    band = np.where(ids == actual[rows], rng.uniform(0.4, 0.6, len(ids)),
                    np.where(rng.random(len(ids)) < 0.5, rng.uniform(0, 0.3, len(ids)), rng.uniform(0.7, 1, len(ids))))
    x = np.column_stack([band, rng.standard_normal(len(ids))]).astype(np.float32)
    c = Candidates(rows, ids, np.ones((len(ids), 1), np.int64), n)
    boosted = fit_boosted([(x, c, actual)], rounds=60)
    assert boosted.booster and boosted.queries_used == n - 5
    assert boosted.weights[0] > 0.9  # the band feature carries (nearly) all the gain
    top = rank_candidates(c, boosted.score(x), 1)[5:, 0]
    assert (top == actual[5:]).mean() > 0.95
    linear = fit_conditional_logit(x, c, actual, l2=1e-3)
    assert (rank_candidates(c, linear.score(x), 1)[5:, 0] == actual[5:]).mean() < 0.5
    assert fit_boosted([(x, c, actual)], rounds=60).booster == boosted.booster  # the same data, the same trees
    # a re-ranker with the trees, through its state
    parts = {"a": _Listed(np.tile(np.arange(1, 5), (2, 1)))}
    q = queries_from_histories([[9], [8]])
    cand = candidates(q, [parts["a"].recommend_queries(q, 4)])
    xq, cols = features(cand, np.zeros(len(cand.ids)), history_band(q), ["a"], interactions=False)
    trees = fit_boosted([(xq, cand, np.array([3, 2]))], rounds=5)
    rr = Reranker(parts, ["a"], trees, np.array([1, 2]), np.array([5, 4]), interactions=False, depth=4,
                  feature_names=cols)
    again = Reranker.from_state(rr.state(), parts, np.array([1, 2]), np.array([5, 4]))
    assert again.fitted.booster == trees.booster
    np.testing.assert_array_equal(again.recommend_queries(q, 3), rr.recommend_queries(q, 3))


def test_rank_candidates_ties_go_to_the_candidate_listed_first_and_short_rows_pad():
    c = Candidates(np.array([0, 0, 0, 1]), np.array([30, 10, 20, 40]), np.zeros((4, 1), np.int64), 3)
    out = rank_candidates(c, np.array([1.0, 2.0, 1.0, 0.5]), 2)
    assert out.tolist() == [[10, 30], [40, PAD], [PAD, PAD]]


def test_log_counts_of_known_and_unknown_movies():
    out = log_counts(np.array([30, 10, 20]), np.array([7, 3, 0]), np.array([10, 20, 30, 99]))
    assert out.tolist() == [math.log(4), 0.0, math.log(8), 0.0]


def test_reranker_orders_by_the_learned_weights_fills_short_rows_and_survives_its_state():
    parts = {"a": _Listed(A), "b": _Listed(B)}
    names = ["a", "b"]
    c = candidates(Q, [A, B])
    x, cols = features(c, log_counts(np.array([1, 2, 3, 4]), np.array([1, 1, 1, 1]), c.ids), history_band(Q),
                       names, interactions=False)
    weights = np.zeros(len(cols))
    weights[cols.index("b:1/r")] = 1.0  # part b's order alone
    fitted = Fitted(weights, np.zeros(len(cols)), np.ones(len(cols)), 0, True)
    rr = Reranker(parts, names, fitted, np.array([8, 7, 6, 5, 4]), np.array([9, 8, 7, 6, 5]),
                  interactions=False, depth=4)
    out = rr.recommend_queries(Q, 6)
    # query 0: b's 2, 3, 4, 1 (1/r 1, 1/2, 1/3, 1/4); no more candidates: fill with 8, 6 (7 prev, 5 seen)
    assert out[0].tolist() == [2, 3, 4, 1, 8, 6]
    # query 1: b's 2, 1, 4 (ranks 2, 3, 4), then 3 (a only: 0); fill 8, 7 (9 is prev)
    assert out[1].tolist() == [2, 1, 4, 3, 8, 7]
    again = Reranker.from_state(rr.state(), parts, np.array([8, 7, 6, 5, 4]), np.array([9, 8, 7, 6, 5]))
    assert np.array_equal(again.recommend_queries(Q, 6), out)
    assert "popular_ids" not in rr.state()  # the popularity model's arrays, not the re-ranker's


def test_a_stored_choice_gives_the_state_and_a_state_fitted_on_other_features_is_refused():
    parts = {"a": _Listed(A), "b": _Listed(B)}
    c = candidates(Q, [A, B])
    popular = (np.array([8, 7, 6, 5, 4]), np.array([9, 8, 7, 6, 5]))
    _, cols = features(c, log_counts(*popular, c.ids), history_band(Q), ["a", "b"], interactions=True)
    weights = [1.0 if name == "b:1/r" else 0.0 for name in cols]
    chosen = {"part_names": ["a", "b"], "feature_names": cols, "weights": weights, "mean": [0.0] * len(cols),
              "std": [1.0] * len(cols), "interactions": True, "depth": 4, "exclude_seen": True, "scores": False,
              "l2": 0.01, "views": False}
    state = state_from_choice(chosen)
    assert state["weights"].tolist() == weights and state["part_names"].tolist() == ["a", "b"]
    assert state["use_scores"].item() is False and state["depth"].item() == 4
    rr = Reranker.from_state(state, parts, *popular)
    assert rr.recommend_queries(Q, 6)[0].tolist() == [2, 3, 4, 1, 8, 6]  # b's order, then the fill
    other = {**state, "feature_names": np.array([*cols[:-1], "something else"])}
    with pytest.raises(ValueError, match="other features"):
        Reranker.from_state(other, parts, *popular).recommend_queries(Q, 6)
    with pytest.raises(ValueError, match="feature names"):
        Reranker.from_state({**state, "feature_names": np.array(cols[:3])}, parts, *popular)


def test_batches_of_queries_fitted_together_are_one_batch_of_both_and_the_folded_loss_is_the_loss():
    # two batches fitted together are one batch of both: same usable queries, standardisation and weights
    rng = np.random.default_rng(3)
    n, width = 40, 4
    rows, ids = np.repeat(np.arange(n), width), np.tile(np.arange(1, width + 1), n)
    actual = rng.integers(1, width + 2, n)  # some next movies (5) are no candidate
    x = np.column_stack([(ids == actual[rows]) + rng.standard_normal(len(ids)), rng.standard_normal(len(ids))])
    whole = Candidates(rows, ids, np.ones((len(ids), 1), np.int64), n)
    one = fit_conditional_logit(x, whole, actual, l2=0.01)
    half = (rows >= 25)
    first = Candidates(rows[~half], ids[~half], np.ones((int((~half).sum()), 1), np.int64), 25)
    later = Candidates(rows[half] - 25, ids[half], np.ones((int(half.sum()), 1), np.int64), n - 25)
    two = fit_blocks([(x[~half], first, actual[:25]), (x[half], later, actual[25:])], l2=0.01)
    assert two.queries_used == one.queries_used == int((actual <= width).sum())
    assert np.allclose(two.mean, one.mean) and np.allclose(two.std, one.std)
    assert np.allclose(two.weights, one.weights, atol=1e-6)
    used = x[np.isin(rows, np.flatnonzero(actual <= width))]
    assert np.allclose(one.mean, used.mean(axis=0)) and np.allclose(one.std, used.std(axis=0))
    # the folded loss on the raw features is softmax_loss on the standardised usable rows, gradient too
    keep = np.isin(rows, np.flatnonzero(actual <= width))
    dense = np.cumsum(actual <= width) - 1
    z = (x[keep] - one.mean) / one.std
    w = np.array([0.7, -0.3])
    batches = [_batch(x.astype(np.float32), whole, actual)]
    positive = (ids == actual[rows])[keep]
    reference = softmax_loss(w, z, dense[rows[keep]], positive, one.queries_used, 0.05)
    folded = _folded_loss(w, batches, one.mean, one.std, one.queries_used, 0.05,
                          x[keep][positive].sum(axis=0))
    assert folded[0] == pytest.approx(reference[0], rel=1e-6) and np.allclose(folded[1], reference[1], atol=1e-6)


def test_features_of_some_queries_are_those_rows_of_the_whole_windows_features():
    from rcmd_pipeline.evaluation.rerank_choice import QueryWindow, window_features

    w = QueryWindow(Q, np.array([3, 2]), {"next_movie": A, "seq_rules": B, "item_knn": A, "slist": B}, {},
                    np.array([1, 2, 3, 4]), np.array([5, 4, 3, 2]))
    c, x, cols = window_features(w, views=False, scores=False)
    c1, x1, cols1 = window_features(w, views=False, scores=False, idx=np.array([1]))
    assert cols1 == cols and c1.n_queries == 1 and c1.rows.tolist() == [0] * int((c.rows == 1).sum())
    assert c1.ids.tolist() == c.ids[c.rows == 1].tolist() and np.array_equal(x1, x[c.rows == 1])
    assert x.dtype == np.float32 and x.shape == (len(c.ids), len(cols))


def test_the_previous_movie_views_are_the_same_states_scored_from_the_last_movie():
    from rcmd_pipeline.recommenders.seq_rules import SequentialRules

    users = np.array([1, 1, 1, 2, 2, 2])
    movies = np.array([10, 20, 30, 10, 20, 40])
    times = np.array([1, 2, 3, 1, 2, 3])
    state = SequentialRules.fit(users, movies, times, max_gap=2)
    assert part_names(False) == ["next_movie", "seq_rules", "item_knn", "slist"]
    assert part_names(True)[4:] == ["seq_rules@prev", "item_knn@prev", "slist@prev"]
    view = view_models({"seq_rules": state})["seq_rules@prev"]
    q = queries_from_histories([[10, 20]])
    # the history's last movie only: 20 -> 30 and 20 -> 40 (1 each); the full history would add 10 -> 30/40 (1/2)
    assert view.last_n == 1 and view.recommend_queries(q, 2).tolist() == [[30, 40]]
    assert view.candidate_scores(q, np.array([0, 0]), np.array([30, 40])).tolist() == [1.0, 1.0]


def test_a_block_builds_the_features_of_the_usable_queries_only_and_counts_the_others_as_misses():
    from rcmd_pipeline.evaluation.rerank_choice import QueryWindow, block_hit_ratio, usable_block, window_features
    from rcmd_pipeline.recommenders.rerank import BASE_PARTS

    q = queries_from_histories([[5, 7], [9], [4]])
    lists = {name: np.array([[1, 2, 3], [2, 3, 4], [1, 2, 3]]) for name in BASE_PARTS}
    actual = np.array([2, 8, 3])  # query 1's next movie (8) is no candidate
    w = QueryWindow(q, actual, lists, {}, np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1]))
    block, cols = usable_block(w, views=False, scores=False, extra=None, content=False)
    assert block.n == 3 and block.c.n_queries == 2 and block.actual.tolist() == [2, 3]
    c, x, all_cols = window_features(w, False, False)
    assert cols == all_cols and np.array_equal(block.x, x[c.rows != 1])  # the same rows, query 1's left out
    fitted = Fitted(np.zeros(len(cols)), np.zeros(len(cols)), np.ones(len(cols)), 0, True)
    # first-listing order: query 0 lists 1, 2, 3 (2 in the top 2), query 2 lists 1, 2, 3 (3 is third)
    assert block_hit_ratio(block, fitted, 2) == pytest.approx(1 / 3)
    half, _ = usable_block(w, False, False, None, False, np.array([1, 2]))
    assert half.n == 2 and half.c.n_queries == 1 and block_hit_ratio(half, fitted, 3) == pytest.approx(1 / 2)
