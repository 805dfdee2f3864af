"""The strategy registry: one entry gives a strategy its model, hit ratio, check, leaderboard row and CLI choice."""

from __future__ import annotations

import numpy as np
import pytest
from dagster import AssetKey, materialize

from rcmd_pipeline.assets.checks import evaluation_set_is_complete
from rcmd_pipeline.assets.strategies import strategy_checks
from rcmd_pipeline.cli import build_parser
from rcmd_pipeline.definitions import assets_for, defs
from rcmd_pipeline.evaluation.tuning import decode_selected
from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.registry import (
    DEFAULT_REGISTRY,
    EXTRA_STRATEGIES_ENV,
    OPTIONAL_STRATEGIES,
    REGISTRY,
    Needs,
    QueryContext,
    Strategy,
    all_parts,
    by_name,
    registry_from_environment,
)
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window
from rcmd_pipeline.serving import Recommendations
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config


class SmallestIds:
    """The toy strategy: the k smallest movie ids but the previous movie."""

    name = "toy"

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def recommend(self, prev_movie_ids, k):
        prev = np.asarray(prev_movie_ids, dtype=np.int64)
        out = np.full((len(prev), k), PAD, dtype=np.int64)
        for i, p in enumerate(prev):
            picks = self.ids[self.ids != p][:k]
            out[i, : len(picks)] = picks
        return out


TOY = Strategy(
    name="toy",
    summary="the smallest movie ids",
    needs=frozenset({Needs.CATALOG_IDS}),
    build=lambda inputs, params: {"ids": np.sort(np.unique(inputs.catalog_ids))},
    load=lambda state, ctx: SmallestIds(state["ids"]),
)


def test_every_registered_strategy_has_a_model_a_hit_ratio_and_a_check():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    checks = {key.name for key in graph.asset_check_keys}
    for strategy in REGISTRY:
        assert {f"{strategy.name}_model", f"hit_ratio_{strategy.name}"} <= keys, strategy.name
        model_parents = graph.get(AssetKey(f"hit_ratio_{strategy.name}")).parent_keys
        assert AssetKey(f"{strategy.name}_model") in model_parents  # lineage: model -> its evaluation
        if strategy.name != "random":
            assert f"{strategy.name}_beats_random" in checks
    board_parents = graph.get(AssetKey("strategy_leaderboard")).parent_keys
    assert {AssetKey(f"hit_ratio_{s.name}") for s in REGISTRY} <= board_parents
    ratings = AssetKey("movielens_ratings")
    assert ratings in graph.get(AssetKey("next_movie_model")).parent_keys  # ratings -> model
    assert {s.name for s in REGISTRY if s.is_study} == {"random", "series", "vector", "series_vector"}


def test_registry_refuses_a_repeated_name_or_an_unknown_part():
    with pytest.raises(ValueError, match="registered twice"):
        by_name([*REGISTRY, TOY, TOY])
    orphan = Strategy(name="orphan", summary="", needs=frozenset(), build=lambda i, p: {}, load=lambda s, c: None,
                      parts=("nowhere",))
    with pytest.raises(ValueError, match="unregistered part"):
        by_name([*REGISTRY, orphan])
    assert set(all_parts(by_name()["hybrid"])) == {"next_movie", "series", "vector", "popularity"}


def test_a_toy_strategy_gets_everything_from_one_registry_entry(tmp_path, small_dataset, monkeypatch, capsys):
    registry = (*DEFAULT_REGISTRY, *OPTIONAL_STRATEGIES, TOY)  # the optional seq_rerank too
    assets = assets_for(registry)
    names = {key.to_user_string() for a in assets for key in a.keys}
    assert {"toy_model", "hit_ratio_toy"} <= names
    checks = strategy_checks(registry)
    assert "toy_beats_random" in {spec.name for c in checks for spec in c.check_specs}

    data_dir = tmp_path / "state"
    result = materialize([*assets, *checks, evaluation_set_is_complete], resources=embedded_resources(
        small_dataset, data_dir), run_config=small_run_config())
    assert result.success
    toy = result.output_for_node("hit_ratio_toy")
    assert toy["strategy"] == "toy" and toy["n"] == 50
    # the toy's picks are the same for every query: the 10 smallest ids (12 movies), so its hits are exact
    pairs = result.output_for_node("eval_transitions")
    expected = [int(nxt in [m for m in range(1, 13) if m != prev][:10])
                for prev, nxt in zip(pairs["prev_movieId"], pairs["movieId"], strict=True)]
    assert toy["hits"].astype(int).tolist() == expected
    board = result.output_for_node("strategy_leaderboard").set_index("strategy")
    assert board.loc["toy", "hit_ratio"] == pytest.approx(sum(expected) / len(expected))
    samples = result.output_for_node("sample_recommendations")
    assert "toy" in set(samples["strategy"])
    # the leaderboard names the strategy selected on validation (by sequence_tuning), not the best on evaluation
    selected = decode_selected(result.output_for_node("sequence_tuning"))
    assert selected in ("seq_hybrid", "seq_rerank") and "seq_rerank" in board.index
    # the re-ranker reads the TMDB details' content neighbours: its stored state carries the content table
    rerank_state = result.output_for_node("seq_rerank_model")
    assert "content" in rerank_state["part_names"].tolist()
    details = result.output_for_node("tmdb_movie_info_kr")
    assert sorted(rerank_state["content_ids"].tolist()) == sorted(details["movieId"].tolist())
    board_meta = result.asset_materializations_for_node("strategy_leaderboard")[0].metadata
    assert board_meta["selected_on_validation"].value == selected
    assert board_meta["selected_hit_ratio"].value == pytest.approx(board.loc[selected, "hit_ratio"])
    evaluations = {e.check_name for e in result.get_asset_check_evaluations()}
    assert "toy_beats_random" in evaluations

    # the command line and the serving API offer it, answered from the stored toy_model
    assert build_parser(registry).parse_args(["similar", "1", "--strategy", "toy"]).strategy == "toy"
    with pytest.raises(Exception, match="invalid choice: 'toy'"):
        build_parser(REGISTRY).parse_args(["similar", "1", "--strategy", "toy"])
    capsys.readouterr()
    for name in ("RCMD_DATABASE_URL", "QDRANT_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RCMD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RCMD_DATASET_PATH", str(small_dataset))
    with Recommendations.from_environment(registry=registry) as rec:
        assert [r["movie_id"] for r in rec.similar(2, k=3, strategy="toy")] == [1, 3, 4]
        # learned strategies of the registry are answered from their stored models too
        assert len(rec.similar(2, k=3, strategy="next_movie")) == 3


def test_stored_models_answer_exactly_like_freshly_built_ones(tmp_path, small_dataset):
    """A model loaded from its asset recommends what the strategy built in memory recommends."""
    data_dir = tmp_path / "state"
    result = materialize(assets_for(), resources=embedded_resources(small_dataset, data_dir),
                         run_config=small_run_config(),
                         selection=["movielens_ratings", "eval_transitions", "popularity_model", "next_movie_model",
                                    "random_model"])
    assert result.success
    ratings = result.output_for_node("movielens_ratings")
    pairs = result.output_for_node("eval_transitions")
    users, movies, times = training_window(ratings["userId"], ratings["movieId"], ratings["timestamp"],
                                           leakage_cutoff(pairs))
    fresh = NextMovieRecommender(users, movies, times, fallback=PopularityRecommender(movies))
    named = by_name()
    stored = named["next_movie"].recommender(
        result.output_for_node("next_movie_model"),
        QueryContext(parts={"popularity": result.output_for_node("popularity_model")}))
    queries = np.arange(0, 15)
    assert (stored.recommend(queries, 10) == fresh.recommend(queries, 10)).all()


def test_optional_strategies_are_added_by_name_from_the_environment():
    assert REGISTRY == registry_from_environment({}) == DEFAULT_REGISTRY  # the tests run without the variable
    assert "seq_rerank" not in {s.name for s in DEFAULT_REGISTRY}
    added = registry_from_environment({EXTRA_STRATEGIES_ENV: " seq_rerank ,"})
    assert added == (*DEFAULT_REGISTRY, *OPTIONAL_STRATEGIES)
    by_name(registry_from_environment({EXTRA_STRATEGIES_ENV: "seq_rerank"}))  # its parts are all registered
    with pytest.raises(ValueError, match=r"RCMD_EXTRA_STRATEGIES='seq_rerank,toy': 'toy' is not an optional strategy.*"
                                         r"\['seq_rerank'\]"):
        registry_from_environment({EXTRA_STRATEGIES_ENV: "seq_rerank,toy"})
