"""Skip what is up to date: an unchanged re-run keeps every asset; a change redoes only what depends on it."""

from __future__ import annotations

import json

from dagster import AssetKey, DagsterInstance

from rcmd_pipeline.assets.versioning import INPUTS_VERSION, KEPT_FROM_RUN
from rcmd_pipeline_tests.helpers import materialize_all, small_run_config


def _kept(result) -> dict[str, bool]:
    """asset -> whether this run kept its stored value (did no work)."""
    return {e.asset_key.to_user_string(): KEPT_FROM_RUN in e.materialization.metadata
            for e in result.get_asset_materialization_events()}


def test_an_unchanged_rerun_keeps_every_asset_and_its_metadata(tmp_path, small_dataset):
    instance = DagsterInstance.ephemeral()
    first = materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance)
    assert not any(_kept(first).values())
    stored = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "assets").iterdir()}

    second = materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance)
    kept = _kept(second)
    assert kept and all(kept.values()), sorted(name for name, k in kept.items() if not k)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "assets").iterdir()} == stored  # nothing rewritten
    # the kept run repeats the numbers the UI plots, and says which run computed them
    board = second.asset_materializations_for_node("strategy_leaderboard")[0].metadata
    assert board[KEPT_FROM_RUN].value == first.run_id
    for name in ("hit_ratio_random", "hit_ratio_next_movie"):
        before = first.asset_materializations_for_node(name)[0].metadata
        after = second.asset_materializations_for_node(name)[0].metadata
        assert after["hit_ratio"] == before["hit_ratio"] and after[INPUTS_VERSION] == before[INPUTS_VERSION]
    # the data versions did not move, so nothing shows as stale
    for key in ("eval_transitions", "hit_ratio_hybrid", "strategy_leaderboard"):
        records = instance.fetch_materializations(AssetKey(key), limit=2).records
        versions = {r.event_log_entry.asset_materialization.tags["dagster/data_version"] for r in records}
        assert len(versions) == 1, key


def test_a_changed_overview_redoes_what_depends_on_it_and_keeps_the_rest(tmp_path, small_dataset):
    instance = DagsterInstance.ephemeral()
    materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance)
    body_path = small_dataset / "tmdb" / "ko-KR" / "1001.json"
    body = json.loads(body_path.read_text(encoding="utf-8"))
    body["overview"] = "완전히 새로운 줄거리: 장난감들이 우주로 떠난다"
    body_path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")

    second = materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance)
    kept = _kept(second)
    for name in ("tmdb_movie_info_kr", "movie_table", "movie_overview_embeddings", "movie_vectors",
                 "hit_ratio_vector", "strategy_leaderboard"):
        assert kept[name] is False, name
    for name in ("movielens_ratings", "eval_transitions", "popularity_model", "next_movie_model", "random_model",
                 "hit_ratio_random", "hit_ratio_popularity", "hit_ratio_next_movie"):
        assert kept[name] is True, name
    embedded = second.asset_materializations_for_node("movie_overview_embeddings")[0].metadata
    assert embedded["embedded"].value == 1


def test_new_run_config_recomputes_the_evaluation_set(tmp_path, small_dataset):
    instance = DagsterInstance.ephemeral()
    materialize_all(small_dataset, tmp_path, small_run_config(eval_size=50), instance=instance)
    second = materialize_all(small_dataset, tmp_path, small_run_config(eval_size=40), instance=instance,
                             selection=["eval_transitions", "hit_ratio_random", "random_model"])
    kept = _kept(second)
    assert kept == {"eval_transitions": False, "random_model": True, "hit_ratio_random": False}
    assert second.output_for_node("hit_ratio_random")["n"] == 40


def test_changed_code_recomputes_instead_of_keeping(tmp_path, small_dataset, monkeypatch):
    from rcmd_pipeline.assets import versioning

    instance = DagsterInstance.ephemeral()
    selection = ["movielens_ratings", "eval_transitions", "random_model", "hit_ratio_random"]
    materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance, selection=selection)
    monkeypatch.setattr(versioning, "package_version", lambda: "a new release of the code")
    second = materialize_all(small_dataset, tmp_path, small_run_config(), instance=instance, selection=selection)
    kept = _kept(second)
    assert {name: kept[name] for name in selection} == {name: False for name in selection}
