"""Asset checks pass on a healthy pipeline and fail when what they guard is broken."""

import pandas as pd
from dagster import AssetCheckKey, AssetSelection, DagsterInstance, materialize

from rcmd_pipeline.assets.checks import beats_random
from rcmd_pipeline.definitions import all_assets, all_checks
from rcmd_pipeline.resources.movie_db import MovieDatabase
from rcmd_pipeline_tests.helpers import embedded_resources, materialize_all, small_run_config


def _evaluations(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _run_check(dataset, data_dir, asset: str, name: str, run_config=None, instance=None):
    selection = AssetSelection.checks(AssetCheckKey.from_user_string(f"{asset}:{name}"))
    result = materialize([*all_assets, *all_checks], selection=selection, instance=instance,
                         resources=embedded_resources(dataset, data_dir), run_config=run_config or {})
    return _evaluations(result)[name]


def test_every_check_passes_on_a_healthy_run(tmp_path, small_dataset):
    result = materialize_all(small_dataset, tmp_path / "state", small_run_config())
    evaluations = _evaluations(result)
    assert set(evaluations) == {spec.name for check in all_checks for spec in check.check_specs}
    failed = [name for name, ok in evaluations.items() if not ok]
    # The small synthetic data set has no real signal, so only structural checks are asserted here;
    # the demo test asserts that every strategy beats random there.
    assert not {"movie_series_exist", "evaluation_set_is_complete"} & set(failed)


def test_beats_random_fails_when_a_strategy_does_not_beat_random():
    base = {"strategy": "random", "hit_ratio": 0.03, "n": 3000}
    assert beats_random({"strategy": "vector", "hit_ratio": 0.05, "n": 3000}, base).passed
    failing = beats_random({"strategy": "vector", "hit_ratio": 0.03, "n": 3000}, base)
    assert not failing.passed and "not above random" in failing.description
    assert not beats_random({"strategy": "vector", "hit_ratio": 0.9, "n": 10}, base).passed  # other pairs


def test_coverage_check_fails_below_the_configured_share(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, small_run_config())
    pairs = pd.read_parquet(data_dir / "assets" / "eval_transitions.parquet")
    assert {5, 10} & set(pairs.prev_movieId) | set(pairs.movieId), "movies without overview are evaluated"
    config = {"ops": {"movie_overview_embeddings_evaluated_movies_have_vectors": {"config": {"min_share": 1.0}}}}
    assert not _run_check(small_dataset, data_dir, "movie_overview_embeddings", "evaluated_movies_have_vectors",
                          config)
    config["ops"]["movie_overview_embeddings_evaluated_movies_have_vectors"]["config"]["min_share"] = 0.5
    assert _run_check(small_dataset, data_dir, "movie_overview_embeddings", "evaluated_movies_have_vectors",
                      config)


def test_coverage_check_warns_instead_of_failing_before_any_evaluation(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    result = materialize([*all_assets, *all_checks], resources=embedded_resources(small_dataset, data_dir),
                         selection=AssetSelection.assets("movielens_links", "tmdb_movie_info_kr",
                                                         "movie_overview_embeddings"))
    assert result.success
    evaluation = [e for e in result.get_asset_check_evaluations()
                  if e.check_name == "evaluated_movies_have_vectors"][0]
    assert not evaluation.passed and evaluation.severity.value == "WARN"


def test_series_reference_check_fails_when_a_series_row_is_missing(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, small_run_config())
    assert _run_check(small_dataset, data_dir, "movie_table", "movie_series_exist")
    db = MovieDatabase(url=f"sqlite:///{data_dir / 'rcmd.sqlite'}")
    db.replace_series(db.read_table("series").iloc[1:])
    assert not _run_check(small_dataset, data_dir, "movie_table", "movie_series_exist")


def test_evaluation_set_check_fails_when_the_set_is_short_or_duplicated(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    with DagsterInstance.ephemeral() as instance:  # the check reads the configured size from the instance
        materialize_all(small_dataset, data_dir, small_run_config(), instance=instance)
        check = ("eval_transitions", "evaluation_set_is_complete")
        assert _run_check(small_dataset, data_dir, *check, instance=instance)
        stored = data_dir / "assets" / "eval_transitions.parquet"
        pairs = pd.read_parquet(stored)
        pairs.iloc[:-1].to_parquet(stored, index=False)
        assert not _run_check(small_dataset, data_dir, *check, instance=instance)
        pd.concat([pairs.iloc[:-1], pairs.iloc[:1]]).to_parquet(stored, index=False)
        assert not _run_check(small_dataset, data_dir, *check, instance=instance)
