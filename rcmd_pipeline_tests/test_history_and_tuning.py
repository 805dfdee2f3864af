"""Queries with history, the validation protocol, and the leakage test of every sequence strategy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import materialize

from rcmd_pipeline.assets.evaluation import HISTORY_MAX_LEN
from rcmd_pipeline.definitions import all_assets
from rcmd_pipeline.evaluation.rerank_choice import RerankOptions
from rcmd_pipeline.evaluation.transitions import TransitionSettings, build_eval_transitions
from rcmd_pipeline.evaluation.tuning import (
    BLEND_PARTS,
    _windows,
    choose_sequence_parameters,
    decode_choice,
    decode_selected,
    encode_choice,
    expand_grid,
    most_recent,
    tune,
    tune_blend,
    validation_split,
)
from rcmd_pipeline.recommenders.content import ContentTable
from rcmd_pipeline.recommenders.history import (
    build_queries,
    history_bin_labels,
    history_lengths,
    queries_from_arrays,
    queries_to_arrays,
)
from rcmd_pipeline.recommenders.item_knn import ItemKNN
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.rerank import Fitted, Reranker, part_names, sequence_members
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly, SequenceHybrid
from rcmd_pipeline.recommenders.seq_rules import SequentialRules
from rcmd_pipeline.recommenders.sequence import with_query_params
from rcmd_pipeline.recommenders.slist import SLIST
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config, write_dataset


def _pairs(rows):
    return pd.DataFrame(rows, columns=["userId", "prev_movieId", "movieId", "timestamp"])


def test_history_is_everything_strictly_before_the_next_movie_in_time_then_id_order():
    # user 7: 5@10, 3@20, 9@20, 4@20, 8@30 ; user 8: 1@5
    users = np.array([7, 7, 7, 7, 7, 8])
    movies = np.array([5, 3, 9, 4, 8, 1])
    times = np.array([10, 20, 20, 20, 30, 5])
    pairs = _pairs([(7, 4, 9, 20), (7, 3, 4, 20), (7, 9, 8, 30), (8, 0, 1, 5)])
    q = build_queries(pairs, users, movies, times)
    assert q.history(0).tolist() == [5, 3, 4]  # same second: 3 and 4 come before 9, 8 after
    assert q.history(1).tolist() == [5, 3]
    assert q.history(2).tolist() == [5, 3, 4, 9]
    assert q.history(3).tolist() == []
    assert history_lengths(q).tolist() == [3, 2, 4, 0]
    assert q.prev.tolist() == [4, 3, 9, 0] and q.times.tolist() == [20, 20, 30, 5]
    cut = build_queries(pairs, users, movies, times, max_len=2)
    assert cut.history(2).tolist() == [4, 9]
    assert history_lengths(cut).tolist() == [3, 2, 4, 0]  # uncut counts for the split
    assert history_bin_labels(cut).tolist() == ["2-5", "2-5", "2-5", "0"]


def test_prev_is_the_last_history_item_without_a_filter_and_in_the_history_with_one():
    rng = np.random.default_rng(0)
    users, movies, times = _ratings(rng)
    plain = build_eval_transitions(users, movies, times, TransitionSettings(1, 200))
    q = build_queries(plain, users, movies, times)
    assert all(q.history(i)[-1] == q.prev[i] for i in range(len(q)))
    filtered = build_eval_transitions(users, movies, times, TransitionSettings(30, 200))
    q = build_queries(filtered, users, movies, times)
    assert all(q.prev[i] in q.history(i) for i in range(len(q)))
    assert any(q.history(i)[-1] != q.prev[i] for i in range(len(q)))  # rare movies in between


def _ratings(rng, n_users=80, n_movies=60, per_user=25):
    """Users with a taste: each walks the catalogue in steps of 1-3 (so sequences carry signal)."""
    users, movies, times = [], [], []
    for u in range(1, n_users + 1):
        start = int(rng.integers(0, 10_000))
        movie = int(rng.integers(1, n_movies + 1))
        seen = set()
        for j in range(per_user):
            movie = (movie + int(rng.integers(1, 4)) - 1) % n_movies + 1
            if movie in seen:
                continue
            seen.add(movie)
            users.append(u)
            movies.append(movie)
            times.append(start + j * int(rng.integers(1, 200)) + int(rng.integers(0, 2)))
    return np.array(users), np.array(movies), np.array(times)


def _strategies(train):
    sr = SequentialRules.fit(*train, max_gap=3)
    knn = ItemKNN.fit(*train, window=3, shrink=1.0)
    slist = SLIST.fit(*train, window=3, alpha=0.5, reg=5.0)
    slis = SLIST.fit(*train, window=3, alpha=1.0, reg=5.0)
    pop = PopularityRecommender(train[1])
    out = {}
    for seen in (False, True):
        out[f"seq_rules{seen}"] = SequentialRules.from_state(sr, last_n=3, exclude_seen=seen)
        out[f"item_knn{seen}"] = ItemKNN.from_state(knn, last_n=3, decay="linear", exclude_seen=seen)
        out[f"slist{seen}"] = SLIST.from_state(slist, last_n=3, exclude_seen=seen)
        out[f"slis{seen}"] = SLIST.from_state(slis, last_n=2, decay="flat", exclude_seen=seen)
    parts = {"next_movie": PrevOnly(NextMovieRecommender(*train, fallback=pop)),
             "seq_rules": out["seq_rulesTrue"], "slist": out["slistFalse"]}
    out["seq_hybrid"] = SequenceHybrid(parts, {"next_movie": 0.5, "seq_rules": 1.0, "slist": 2.0}, depth=12)
    # the re-ranker as its model asset loads it: the parts' states, their views, scores, fixed weights
    states = {"seq_rules": with_query_params(sr, {"last_n": 3}),
              "item_knn": with_query_params(knn, {"last_n": 3, "decay": "linear"}),
              "slist": with_query_params(slist, {"last_n": 3})}
    members = sequence_members(parts["next_movie"], states)
    names = part_names(True)
    n_features = 7 * 8 + 6 + 2 + 3 * 8 + 21  # 7 parts x (bands, 1/r), 6 scores, 2 counts, band products, pairs
    weights = np.random.default_rng(11).standard_normal(n_features)
    out["seq_rerank"] = Reranker(members, names, Fitted(weights, np.zeros(n_features), np.ones(n_features), 0, True),
                                 pop.ranked_ids, pop.ranked_counts, depth=12, use_scores=True)
    # ... and with the content part (its neighbours a part, its similarities with the history features)
    ids = np.unique(train[1])
    rng = np.random.default_rng(12)
    content = ContentTable.from_records(ids, ["|".join(g for g in "ABCD" if rng.random() < 0.4) for _ in ids],
                                        rng.choice(["en", "ko"], len(ids)), [0] * len(ids), rng.integers(0, 99, len(ids)))
    width = n_features + 8 + 4 + 3 + 7  # + the content part's bands and 1/r, 4 similarities, band products, pairs
    out["seq_rerank_content"] = Reranker(
        members, [*names, "content"], Fitted(np.random.default_rng(13).standard_normal(width), np.zeros(width),
                                             np.ones(width), 0, True),
        pop.ranked_ids, pop.ranked_counts, depth=12, use_scores=True, content=content)
    return out


def _all_recs(users, movies, times, pairs, cutoff, k=10):
    train = training_window(users, movies, times, cutoff)
    # as the hit ratios get them: the queries of eval_queries, through its stored arrays
    q = queries_from_arrays(queries_to_arrays(build_queries(pairs, users, movies, times, max_len=HISTORY_MAX_LEN)))
    return {name: s.recommend_queries(q, k) for name, s in _strategies(train).items()}


def test_no_strategy_sees_a_pairs_next_movie_or_anything_after_it():
    rng = np.random.default_rng(1)
    users, movies, times = _ratings(rng)
    pairs = build_eval_transitions(users, movies, times, TransitionSettings(5, 150))
    cutoff = leakage_cutoff(pairs)
    before = _all_recs(users, movies, times, pairs, cutoff)
    checked = 0
    for i in rng.choice(len(pairs), size=12, replace=False):
        u, m, t = (int(pairs[c].iloc[i]) for c in ("userId", "movieId", "timestamp"))
        # everything at or after the next movie's moment, except the user's earlier same-second ratings
        after = (times > t) | ((times == t) & ((users != u) | (movies >= m)))
        assert after[(users == u) & (movies == m) & (times == t)].all()
        p_movies, p_times = movies.copy(), times.copy()
        p_movies[after] = rng.integers(1, 200, size=int(after.sum()))  # new movies too
        p_times[after] = t + 1 + rng.integers(0, 5_000, size=int(after.sum()))
        extra = 40  # and more ratings, of this user too, after the moment
        p_users = np.concatenate([users, np.full(extra, u), rng.integers(1, 80, size=extra)])
        p_movies = np.concatenate([p_movies, rng.integers(1, 200, size=2 * extra)])
        p_times = np.concatenate([p_times, t + 1 + rng.integers(0, 5_000, size=2 * extra)])
        after_recs = _all_recs(p_users, p_movies, p_times, pairs, cutoff)
        for name, recs in before.items():
            assert np.array_equal(recs[i], after_recs[name][i]), (name, i)
        checked += 1
    assert checked == 12

    # The check has teeth: a model trained on every rating (the leak) changes recommendations.
    leaky_before = _strategies((users, movies, times))["seq_rulesFalse"]
    q = build_queries(pairs, users, movies, times)
    shuffled = movies.copy()
    late = times >= cutoff
    shuffled[late] = rng.permutation(shuffled[late])
    leaky_after = _strategies((users, shuffled, times))["seq_rulesFalse"]
    assert not np.array_equal(leaky_before.recommend_queries(q, 10), leaky_after.recommend_queries(q, 10))


def _tuned(users, movies, times):
    split = validation_split(users, movies, times, min_movie_ratings=5, eval_size=100)
    train = training_window(users, movies, times, split.tuning_cutoff)
    before = times < split.final_cutoff
    vq = build_queries(split.validation, users[before], movies[before], times[before])
    actual = split.validation["movieId"].to_numpy()
    fits = {}

    def factory(max_gap, last_n, exclude_seen):
        if max_gap not in fits:
            fits[max_gap] = SequentialRules.fit(*train, max_gap=max_gap)
        return SequentialRules.from_state(fits[max_gap], last_n=last_n, exclude_seen=exclude_seen)

    grid = {"max_gap": [1, 2, 5], "last_n": [1, 3], "exclude_seen": [False, True]}
    return split, tune(factory, grid, vq, actual, k=5)


def test_validation_split_windows_and_cutoffs():
    rng = np.random.default_rng(2)
    users, movies, times = _ratings(rng, n_users=120)
    split = validation_split(users, movies, times, min_movie_ratings=5, eval_size=100)
    assert len(split.evaluation) == len(split.validation) == 100
    assert split.final_cutoff == split.evaluation["timestamp"].min()
    assert split.tuning_cutoff == split.validation["timestamp"].min()
    assert split.validation["timestamp"].max() < split.final_cutoff
    before = times < split.final_cutoff
    expected = build_eval_transitions(users[before], movies[before], times[before], TransitionSettings(5, 100))
    pd.testing.assert_frame_equal(split.validation, expected)


def test_changing_the_evaluation_window_cannot_change_the_chosen_parameters():
    rng = np.random.default_rng(4)
    users, movies, times = _ratings(rng, n_users=150)
    split, result = _tuned(users, movies, times)
    assert len(result.table) == 12 and result.hit_ratio == result.table["hit_ratio"].max()
    # Change the evaluation window's pairs: shuffle which movie each of its ratings is (movie counts
    # and rating times stay, so the window keeps its boundary).
    late = np.flatnonzero(times >= split.final_cutoff)
    movies2, users2 = movies.copy(), users.copy()
    movies2[late] = movies[rng.permutation(late)]
    split2, result2 = _tuned(users2, movies2, times)
    assert not split2.evaluation.equals(split.evaluation)  # the evaluation pairs did change
    assert split2.final_cutoff == split.final_cutoff
    pd.testing.assert_frame_equal(split2.validation, split.validation)
    assert result2.params == result.params
    pd.testing.assert_frame_equal(result2.table, result.table)
    # ...and the choice is not a constant of this grid: other validation answers change it
    vq_actual = split.validation["movieId"].to_numpy()
    assert len(set(result.table["hit_ratio"])) > 1 and len(vq_actual) == 100


def test_tune_breaks_ties_by_grid_order_and_expand_grid():
    assert expand_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    q = build_queries(_pairs([(1, 2, 3, 9)]), [1], [2], [1])

    class Fixed:
        def __init__(self, pick):
            self.pick = pick

        def recommend_queries(self, queries, k):
            return np.full((len(queries), k), self.pick, dtype=np.int64)

    result = tune(lambda pick: Fixed(pick), {"pick": [5, 3, 4, 3]}, q, [3], k=2)
    assert result.params == {"pick": 3} and result.hit_ratio == 1.0
    assert result.table["hit_ratio"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_tune_blend_is_at_least_its_best_part_on_validation():
    rng = np.random.default_rng(5)
    users, movies, times = _ratings(rng, n_users=150)
    split = validation_split(users, movies, times, min_movie_ratings=5, eval_size=100)
    train = training_window(users, movies, times, split.tuning_cutoff)
    before = times < split.final_cutoff
    vq = build_queries(split.validation, users[before], movies[before], times[before])
    actual = split.validation["movieId"].to_numpy()
    parts = _strategies(train)
    names = ["seq_rulesTrue", "item_knnTrue", "slistTrue"]
    lists = {n: parts[n].recommend_queries(vq, 20) for n in names}
    result = tune_blend(lists, vq, actual, k=5)
    singles = [float((parts[n].recommend_queries(vq, 5) == actual[:, None]).any(axis=1).mean()) for n in names]
    assert result.hit_ratio >= max(singles)
    assert set(result.params) == set(names) and any(w > 0 for w in result.params.values())


def test_expand_grid_rejects_nothing_and_tune_rejects_an_empty_grid():
    q = build_queries(_pairs([(1, 2, 3, 9)]), [1], [2], [1])
    with pytest.raises(ValueError):
        tune(lambda: None, [], q, [3])


def test_build_queries_takes_int32_columns_as_they_are():
    rng = np.random.default_rng(7)
    users, movies, times = _ratings(rng)
    pairs = build_eval_transitions(users, movies, times, TransitionSettings(5, 100))
    wide = build_queries(pairs, users, movies, times, max_len=7)
    narrow = build_queries(pairs, users.astype(np.int32), movies.astype(np.int32), times, max_len=7)
    for field in ("prev", "users", "times", "offsets", "items", "n_earlier"):
        assert np.array_equal(getattr(narrow, field), getattr(wide, field)), field
        assert getattr(narrow, field).dtype == np.int64
    assert len(wide.items) > len(pairs)  # histories are not empty


def _shuffle_evaluation_window(rng, movies, times, cutoff):
    """The ratings at or after ``cutoff`` get each other's movies (counts and times stay)."""
    late = np.flatnonzero(times >= cutoff)
    changed = movies.copy()
    changed[late] = movies[rng.permutation(late)]
    return changed


def test_the_sequence_choice_reads_nothing_of_the_evaluation_window():
    rng = np.random.default_rng(4)
    users, movies, times = _ratings(rng, n_users=150)
    settings = TransitionSettings(5, 100)
    cutoff = leakage_cutoff(build_eval_transitions(users, movies, times, settings))
    grids = {"seq_rules": {"max_gap": [1, 3]}, "item_knn": {"window": [3], "shrink": [0.0, 5.0]},
             "slist": {"window": [2], "alpha": [0.5, 1.0], "reg": [5.0]}}
    fixed = {"slist": {"min_count": 2, "max_items": 50}}
    # the re-ranker too, with an earlier window of training queries (its parts refitted before it) and the
    # content neighbours of a made-up catalogue (metadata: the same for any window)
    ids = np.unique(movies)
    genres = ["|".join(g for g in ("A", "B", "C", "D") if rng.random() < 0.4) for _ in ids]
    content = ContentTable.from_records(ids, genres, rng.choice(["en", "ko"], len(ids)), [0] * len(ids),
                                        rng.integers(0, 1000, len(ids)))
    grid = [{"views": views, "scores": True, "l2": 0.01, "earlier": earlier} for views in (False, True)
            for earlier in (0, 1)] + [{"views": True, "scores": True, "model": "boosted", "rounds": 20, "earlier": 1}]
    rerank = RerankOptions(grid=grid, content=content)

    def choose(m):
        return choose_sequence_parameters(lambda: (users, m, times), cutoff, 5, 100, k=10, grids=grids, fixed=fixed,
                                          depth=20, rerank=rerank)

    first = choose(movies)
    changed = _shuffle_evaluation_window(rng, movies, times, cutoff)
    assert not build_eval_transitions(users, changed, times, settings).equals(
        build_eval_transitions(users, movies, times, settings))  # the evaluation pairs did change
    second = choose(changed)
    assert second.chosen == first.chosen and second.validation_hit_ratio == first.validation_hit_ratio
    assert second.inner_hit_ratio == first.inner_hit_ratio and second.selected == first.selected
    inner = first.inner_hit_ratio  # the re-ranker only when it beats the blend on the inner split
    assert first.selected == ("seq_rerank" if inner["seq_rerank"] > inner["seq_hybrid"] else "seq_hybrid")
    assert len(first.chosen["seq_rerank"]["weights"]) == len(first.chosen["seq_rerank"]["feature_names"])
    assert "content" in first.chosen["seq_rerank"]["part_names"]
    assert first.chosen["seq_rerank"]["content_ids"] == ids.tolist()  # the table travels with the choice
    assert len(set(first.tables["seq_rerank"]["hit_ratio"])) > 1  # the re-ranker's grid discriminates too
    for name, table in first.tables.items():
        pd.testing.assert_frame_equal(second.tables[name], table)
    assert decode_choice(encode_choice(first)) == first.chosen
    assert decode_selected(encode_choice(first)) == first.selected
    assert first.chosen["slist"]["max_items"] == 50 and set(first.chosen["seq_hybrid"]) == set(BLEND_PARTS)
    # the blend is at least its best part on validation, and the grid really discriminates
    assert first.validation_hit_ratio["seq_hybrid"] >= max(first.validation_hit_ratio[n] for n in BLEND_PARTS)
    assert len(set(first.tables["seq_rules"]["hit_ratio"])) > 1


def test_the_tuning_asset_chooses_the_same_when_the_evaluation_window_changes(tmp_path):
    rng = np.random.default_rng(4)
    users, movies, times = _ratings(rng, n_users=150)
    cutoff = leakage_cutoff(build_eval_transitions(users, movies, times, TransitionSettings(5, 100)))
    outputs = []
    for label, m in (("a", movies), ("b", _shuffle_evaluation_window(rng, movies, times, cutoff))):
        frame = pd.DataFrame({"userId": users, "movieId": m, "rating": 4.0, "timestamp": times})
        dataset = write_dataset(tmp_path / label, frame)
        result = materialize(all_assets, selection=["movielens_ratings", "eval_transitions", "sequence_tuning"],
                             resources=embedded_resources(dataset, tmp_path / f"state_{label}"),
                             run_config=small_run_config(5, 100))
        assert result.success
        meta = result.asset_materializations_for_node("sequence_tuning")[0].metadata
        outputs.append((result.output_for_node("eval_transitions"), result.output_for_node("sequence_tuning"),
                        meta["chosen"].value))
    (pairs_a, tuned_a, chosen_a), (pairs_b, tuned_b, chosen_b) = outputs
    assert not pairs_a.equals(pairs_b) and pairs_a["timestamp"].min() == pairs_b["timestamp"].min()
    assert chosen_a == chosen_b == decode_choice(tuned_a)
    assert tuned_a.keys() == tuned_b.keys() and all(np.array_equal(tuned_a[k], tuned_b[k]) for k in tuned_a)


def test_the_choice_learns_from_at_most_the_most_recent_ratings_asked_for():
    users = np.array([1, 1, 2, 2, 3, 3])
    movies = np.array([10, 11, 12, 13, 14, 15])
    times = np.array([5, 1, 3, 3, 9, 2])
    window = (users, movies, times)
    kept = most_recent(window, 3)
    # the 3 most recent are at 9, 5 and 3; both ratings at 3 (the boundary) stay, order is kept
    assert [a.tolist() for a in kept] == [[1, 2, 2, 3], [10, 12, 13, 14], [5, 3, 3, 9]]
    assert most_recent(window, 6) is window and most_recent(window, None) is window


def test_earlier_windows_of_training_queries_each_come_before_the_next_with_parts_trained_before_them():
    rng = np.random.default_rng(4)
    users, movies, times = _ratings(rng, n_users=150)
    settings = TransitionSettings(5, 60)
    cutoff = leakage_cutoff(build_eval_transitions(users, movies, times, settings))
    w = _windows(lambda: (users, movies, times), cutoff, settings, 1000, None, earlier=2)
    assert len(w.earlier) == 2
    # the validation window, then each earlier window: the same procedure on the ratings before the later one
    later_cutoff, before = w.tuning_cutoff, times < w.tuning_cutoff
    for window in w.earlier:
        pairs = build_eval_transitions(users[before], movies[before], times[before], settings)
        assert window.actual.tolist() == pairs["movieId"].tolist() and len(pairs) == 60
        assert window.queries.times.max() < later_cutoff
        earliest = int(pairs["timestamp"].min())
        assert window.train[2].max() < earliest and len(window.train[2]) == int((times < earliest).sum())
        ids, counts = window.popular  # every rating before the window, counted
        expected = np.unique(movies[times < earliest], return_counts=True)
        assert dict(zip(ids.tolist(), counts.tolist(), strict=True)) == dict(zip(*expected, strict=True))
        later_cutoff, before = earliest, times < earliest
    assert w.popular[1].sum() == int((times < w.tuning_cutoff).sum())
    pop = PopularityRecommender(movies[times < w.tuning_cutoff])  # the same arrays as the popularity model's
    assert np.array_equal(w.popular[0], pop.ranked_ids) and np.array_equal(w.popular[1], pop.ranked_counts)
    plain = _windows(lambda: (users, movies, times), cutoff, settings, 1000, None)
    assert plain.earlier == () and plain.popular is None and np.array_equal(plain.actual, w.actual)


def test_scoring_settings_two_at_a_time_chooses_and_scores_exactly_as_one_at_a_time(monkeypatch):
    from rcmd_pipeline.evaluation import tuning

    rng = np.random.default_rng(8)
    users, movies, times = _ratings(rng, n_users=150)
    cutoff = leakage_cutoff(build_eval_transitions(users, movies, times, TransitionSettings(5, 100)))
    grids = {"seq_rules": {"max_gap": [1, 3]}, "item_knn": {"window": [3], "shrink": [0.0, 5.0]},
             "slist": {"window": [2], "alpha": [0.5, 1.0], "reg": [5.0]}}
    query_grid = {"last_n": [1, 3, 10], "decay": ["harmonic", "linear"], "exclude_seen": [True, False]}
    choices = {}
    for threads in (1, 2):
        monkeypatch.setattr(tuning, "SCORING_THREADS", threads)
        choices[threads] = choose_sequence_parameters(lambda: (users, movies, times), cutoff, 5, 100, k=10,
                                                      grids=grids, query_grid=query_grid,
                                                      fixed={"slist": {"min_count": 2, "max_items": 50}}, depth=20)
    one, two = choices[1], choices[2]
    assert two.chosen == one.chosen and two.validation_hit_ratio == one.validation_hit_ratio
    for name, table in one.tables.items():
        pd.testing.assert_frame_equal(two.tables[name], table)
    assert len(one.tables["slist"]) == 2 * 12 and len(set(one.tables["seq_rules"]["hit_ratio"])) > 1
