"""The evaluation pairs' queries, stored once (``eval_queries``) and read by the hit ratios and the leaderboard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, materialize

from rcmd_pipeline import storage
from rcmd_pipeline.assets.evaluation import HISTORY_MAX_LEN, evaluation_settings
from rcmd_pipeline.assets.strategies import stored_queries
from rcmd_pipeline.definitions import all_assets, defs
from rcmd_pipeline.evaluation.transitions import TransitionSettings, build_eval_transitions
from rcmd_pipeline.recommenders.history import (
    QUERY_ARRAYS,
    build_queries,
    history_bin_labels,
    history_lengths,
    queries_from_arrays,
    queries_match_pairs,
    queries_to_arrays,
)
from rcmd_pipeline.recommenders.registry import REGISTRY, Needs, needs_of
from rcmd_pipeline.resources.lazy_input import LazyValue
from rcmd_pipeline.resources.local_state import LocalStateIOManager
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config, write_dataset
from rcmd_pipeline_tests.test_history_and_tuning import _ratings

FIELDS = ("prev", "users", "times", "offsets", "items", "n_earlier")


def _assert_same_queries(got, want) -> None:
    for field in FIELDS:
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
        assert getattr(got, field).dtype == np.int64, field


def test_stored_arrays_give_back_the_same_int64_queries():
    rng = np.random.default_rng(3)
    users, movies, times = _ratings(rng)
    pairs = build_eval_transitions(users, movies, times, TransitionSettings(5, 100))
    queries = build_queries(pairs, users, movies, times, max_len=HISTORY_MAX_LEN)
    arrays = queries_to_arrays(queries)
    assert set(arrays) == set(QUERY_ARRAYS) and arrays["items"].dtype == np.int32  # movie ids fit in 32 bits
    _assert_same_queries(queries_from_arrays(arrays), queries)
    assert queries_match_pairs(queries, pairs) and not queries_match_pairs(queries, pairs.iloc[::-1])
    # ids beyond 32 bits stay 64-bit
    wide = build_queries(pairs, users, movies + 2**40, times)
    assert queries_to_arrays(wide)["items"].dtype == np.int64
    assert np.array_equal(queries_from_arrays(queries_to_arrays(wide)).items, wide.items)
    with pytest.raises(ValueError, match="inconsistent"):
        queries_from_arrays({**arrays, "items": arrays["items"][:-1]})
    with pytest.raises(ValueError, match="lack"):
        queries_from_arrays({k: v for k, v in arrays.items() if k != "offsets"})


def _history_by_hand(users, movies, times, user, movie, moment) -> list[int]:
    """The user's ratings strictly before (moment, movie), oldest first, ties by movie id: the definition."""
    earlier = sorted((int(t), int(m)) for u, m, t in zip(users, movies, times, strict=True)
                     if u == user and (t < moment or (t == moment and m < movie)))
    return [m for _, m in earlier]


def test_eval_queries_is_build_queries_and_holds_nothing_at_or_after_a_pairs_next_movie(tmp_path):
    rng = np.random.default_rng(1)
    users, movies, times = _ratings(rng)
    frame = pd.DataFrame({"userId": users, "movieId": movies, "rating": 4.0, "timestamp": times})
    dataset = write_dataset(tmp_path / "movielens", frame)
    data_dir = tmp_path / "state"
    result = materialize(all_assets, selection=["movielens_ratings", "eval_transitions", "eval_queries"],
                         resources=embedded_resources(dataset, data_dir), run_config=small_run_config(5, 150))
    assert result.success
    ratings = result.output_for_node("movielens_ratings")
    pairs = result.output_for_node("eval_transitions")
    stored = LocalStateIOManager(base_dir=str(data_dir))
    path = data_dir / "assets" / "eval_queries.npz"
    queries = stored_queries(LazyValue(lambda: storage.load_npz(path), "eval_queries"), pairs)
    want = build_queries(pairs, ratings["userId"], ratings["movieId"], ratings["timestamp"], max_len=HISTORY_MAX_LEN)
    _assert_same_queries(queries, want)
    assert len(queries) == 150 and len(queries.items) > len(queries)
    # the leakage property on what is stored: each history is exactly the user's ratings strictly
    # before the pair's next movie, in (time, movie id) order; the next movie and later ones never
    for i, (u, m, t) in enumerate(pairs[["userId", "movieId", "timestamp"]].itertuples(index=False)):
        assert queries.history(i).tolist() == _history_by_hand(users, movies, times, u, m, t), i
    # typed metadata
    meta = result.asset_materializations_for_node("eval_queries")[0].metadata
    lengths = history_lengths(want)
    assert meta["pairs"].value == 150 and meta["history_items"].value == len(want.items)
    assert meta["mean_history_length"].value == pytest.approx(lengths.mean(), abs=0.005)
    assert meta["median_history_length"].value == float(np.median(lengths))
    bins = history_bin_labels(want)
    for label, key in (("0", "0"), ("1", "1"), ("2-5", "2_to_5"), ("6-20", "6_to_20"), (">20", "over_20")):
        assert meta[f"pairs_with_history_{key}"].value == int((bins == label).sum()), label
    assert sum(meta[f"pairs_with_history_{k}"].value for k in ("0", "1", "2_to_5", "6_to_20", "over_20")) == 150
    # the evaluation set carries its settings in its stored value, for sequence_tuning
    assert evaluation_settings(stored.load_input(_input_context("eval_transitions", ["timestamp"]))) == (5, 150)


def _input_context(name: str, columns: list[str]):
    return build_input_context(asset_key=AssetKey(name), definition_metadata={"columns": columns})


def test_stored_queries_of_other_pairs_are_refused():
    pairs = pd.DataFrame({"userId": [1, 1], "prev_movieId": [2, 3], "movieId": [3, 4], "timestamp": [10, 20]})
    arrays = queries_to_arrays(build_queries(pairs, [1, 1, 1], [2, 3, 4], [5, 10, 20]))
    assert len(stored_queries(LazyValue(lambda: arrays, "q"), pairs)) == 2
    other = pairs.assign(timestamp=[10, 21])
    with pytest.raises(ValueError, match="materialize eval_queries again"):
        stored_queries(LazyValue(lambda: arrays, "q"), other)
    with pytest.raises(ValueError, match="materialize eval_transitions again"):
        evaluation_settings(pairs)


def test_lineage_ratings_to_eval_queries_to_the_history_strategies_hit_ratios():
    graph = defs.resolve_asset_graph()
    queries, ratings = AssetKey("eval_queries"), AssetKey("movielens_ratings")
    assert graph.get(queries).parent_keys == {ratings, AssetKey("eval_transitions")}
    assert graph.get(queries).group_name == graph.get(AssetKey("eval_transitions")).group_name
    history = [s for s in REGISTRY if Needs.HISTORY in needs_of(s, REGISTRY)]
    assert {s.name for s in history} >= {"seq_rules", "item_knn", "slist", "seq_hybrid"}
    for strategy in REGISTRY:
        parents = graph.get(AssetKey(f"hit_ratio_{strategy.name}")).parent_keys
        if strategy in history:
            assert queries in parents and ratings not in parents, strategy.name
        else:
            assert queries not in parents, strategy.name
    assert queries in graph.get(AssetKey("strategy_leaderboard")).parent_keys
    assert queries not in graph.get(AssetKey("sequence_tuning")).parent_keys


def test_sequence_tuning_needs_no_record_of_the_evaluation_sets_materialization(tmp_path):
    """The settings come with the stored pairs: a fresh instance (no event of eval_transitions) tunes."""
    rng = np.random.default_rng(4)
    users, movies, times = _ratings(rng, n_users=150)
    frame = pd.DataFrame({"userId": users, "movieId": movies, "rating": 4.0, "timestamp": times})
    dataset = write_dataset(tmp_path / "movielens", frame)
    resources = embedded_resources(dataset, tmp_path / "state")
    first = materialize(all_assets, selection=["movielens_ratings", "eval_transitions", "sequence_tuning"],
                        resources=resources, run_config=small_run_config(5, 100))
    again = materialize(all_assets, selection=["sequence_tuning"], resources=resources)  # another instance
    assert first.success and again.success
    for result in (first, again):
        assert result.asset_materializations_for_node("sequence_tuning")[0].metadata["validation_pairs"].value == 100
    chosen = [r.asset_materializations_for_node("sequence_tuning")[0].metadata["chosen"].value for r in (first, again)]
    assert chosen[0] == chosen[1]
