"""The whole graph on the demo data, the definitions, and the CLI against a persistent instance."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from rcmd_pipeline import cli, settings
from rcmd_pipeline.definitions import defs
from rcmd_pipeline.recommenders.registry import REGISTRY
from rcmd_pipeline_tests.helpers import materialize_all, small_run_config

EXPECTED_ASSETS = {"movielens_ratings", "movielens_links", "movielens_movies", "tmdb_movie_info_kr",
                   "movie_table", "series_table", "movie_overview_embeddings", "movie_vectors", "eval_transitions",
                   "hit_ratio_random", "hit_ratio_series", "hit_ratio_vector", "hit_ratio_series_vector",
                   "hit_ratio_popularity", "hit_ratio_next_movie", "hit_ratio_hybrid", "strategy_leaderboard",
                   "sample_recommendations"}
ROOT = settings.PROJECT_ROOT


def test_definitions_load_with_every_asset_grouped_and_described():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert EXPECTED_ASSETS <= keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name != "default", f"{key} has no group"
        assert node.description, f"{key} has no description for the UI"
    assert defs.resolve_job_def("rcmd_full_pipeline")
    assert graph.get(AssetKey("eval_transitions")).parent_keys == {AssetKey("movielens_ratings")}


def test_materialize_every_asset_on_the_demo_data_with_the_study_defaults(tmp_path, monkeypatch, capsys):
    result = materialize_all(settings.DEMO_DATASET_DIR, tmp_path)
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    pairs = meta["eval_transitions"]
    assert pairs["pair_count"].value == 3000
    assert pairs["user_count"].value > 100 and pairs["movie_count"].value > 50
    assert pairs["first_time"].value < pairs["last_time"].value
    random_meta = meta["hit_ratio_random"]
    assert random_meta["n"].value == 3000 and random_meta["k"].value == 10
    # 10 of ~300 movies at random: about 3% of the pairs, far from what a real strategy reaches
    assert 0.0 <= random_meta["hit_ratio"].value < 0.08
    assert random_meta["queries_per_second"].value > 0
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == sorted(
        [f"{k}.parquet" for k in ("movielens_ratings", "movielens_links", "movielens_movies", "eval_transitions",
                                  "tmdb_movie_info_kr", "strategy_leaderboard", "sample_recommendations")]
        + ["movie_overview_embeddings.npz"]  # vectors as one contiguous (n, dimension) array
        + [f"hit_ratio_{s}.pickle" for s in ("random", "series", "vector", "series_vector", "popularity",
                                              "next_movie", "hybrid", "seq_rules", "item_knn", "slist",
                                              "seq_hybrid")]
        + [f"{s.name}_model.npz" for s in REGISTRY]  # every strategy's learned state, as arrays
        + ["sequence_tuning.npz"]  # the values chosen on the validation window
        + ["eval_queries.npz"]  # the evaluation pairs with their users' histories, built once
    )
    tmdb_meta = meta["tmdb_movie_info_kr"]
    assert tmdb_meta["requested"].value == 303 and tmdb_meta["failed"].value == 0
    assert tmdb_meta["with_overview"].value == 293  # ten demo movies have no Korean overview, as on TMDB
    assert meta["movie_table"]["dagster/row_count"].value == 303
    assert meta["series_table"]["dagster/row_count"].value >= 45
    series_meta = meta["hit_ratio_series"]
    # users in the demo go on within a series: the series strategy beats random by far
    assert series_meta["hit_ratio"].value > random_meta["hit_ratio"].value + 0.05
    assert meta["movie_vectors"]["points"].value == 293
    for name in ("vector", "series_vector"):
        assert meta[f"hit_ratio_{name}"]["hit_ratio"].value > random_meta["hit_ratio"].value + 0.05, name
    board = result.output_for_node("strategy_leaderboard").set_index("strategy")
    assert len(board) == len(REGISTRY) == 11
    # the bar: the best new strategy beats the study's best (vector) with p < 0.01
    best = board.index[0]
    assert best in {"popularity", "next_movie", "hybrid", "seq_rules", "item_knn", "slist", "seq_hybrid"}, board
    assert board.loc[best, "hit_ratio"] > board.loc["vector", "hit_ratio"]
    assert board.loc["vector", "p_value_vs_best"] < 0.01
    assert board.loc["random", "gain_over_random"] == 0.0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert len(checks) == 13 and all(checks.values()), checks
    # the strategies that read the user's history, tuned on validation, beat next_movie on the demo
    assert board.loc["seq_hybrid", "hit_ratio"] > board.loc["next_movie", "hit_ratio"]
    assert meta["sequence_tuning"]["validation_pairs"].value == 3000
    board_meta = meta["strategy_leaderboard"]
    assert board_meta["leaderboard_chart"].value.startswith("![leaderboard chart](data:image/png;base64,")
    assert "| seq_hybrid |" in board_meta["hit_ratio_by_history_length"].value
    samples = result.output_for_node("sample_recommendations")
    toy_story_series = samples[(samples.query_movieId == 1) & (samples.strategy == "series")]
    assert toy_story_series.movieId.tolist()[:3] == [201588, 78499, 3114]  # Toy Story 4, 3, 2: newest first
    assert "토이 스토리 4 (2019)" in toy_story_series.title.tolist()

    # the three rcmd commands on the demo state just built
    for name in ("RCMD_DATABASE_URL", "QDRANT_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RCMD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RCMD_DATASET_PATH", str(settings.DEMO_DATASET_DIR))
    capsys.readouterr()
    assert cli.main(["similar", "1", "--json"]) == 0
    similar = json.loads(capsys.readouterr().out)
    assert {m["movie_id"] for m in similar[:3]} == {3114, 78499, 201588}  # Toy Story 2, 3, 4 first
    assert cli.main(["search", "장난감들이 살아 움직이는 이야기", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {1, 3114, 78499, 201588} & {m["movie_id"] for m in found[:5]}
    assert cli.main(["user", "1", "-k", "5"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) >= 5


def test_materializing_twice_gives_the_same_evaluation_set_and_score(tmp_path, small_dataset):
    first = materialize_all(small_dataset, tmp_path / "a", small_run_config())
    second = materialize_all(small_dataset, tmp_path / "b", small_run_config())
    assert (tmp_path / "a/assets/eval_transitions.parquet").read_bytes() == (
        tmp_path / "b/assets/eval_transitions.parquet").read_bytes()
    assert first.output_for_node("hit_ratio_random")["hit_ratio"] == second.output_for_node(
        "hit_ratio_random")["hit_ratio"]


def test_state_of_other_data_never_lands_in_the_demo_state(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(settings.DATASET_ENV, raising=False)
    assert settings.data_dir() == settings.STATE_ROOT / "demo"
    monkeypatch.setenv(settings.DATASET_ENV, str(tmp_path / "ml-32m"))
    other = settings.data_dir()
    assert other.parent == settings.STATE_ROOT and other.name.startswith("ml-32m-")
    monkeypatch.setenv(settings.DATA_DIR_ENV, str(tmp_path / "state"))
    assert settings.data_dir() == tmp_path / "state"


def _cli_env(tmp_path: Path) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RCMD_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), RCMD_DATA_DIR=str(tmp_path / "state"))
    return env


@pytest.mark.slow
def test_cli_materialize_is_recorded_in_the_persistent_instance(tmp_path, small_dataset):
    env = _cli_env(tmp_path)
    env["RCMD_DATASET_PATH"] = str(small_dataset)
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "*",
         "--config-json", json.dumps(small_run_config())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS]
        for name in EXPECTED_ASSETS:
            assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name


@pytest.mark.slow
def test_definitions_validate_from_the_project_root_without_flags(tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "definitions", "validate"], cwd=ROOT, env=_cli_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful" in done.stderr + done.stdout


def test_the_executor_is_chosen_by_the_size_of_the_ratings_file(tmp_path):
    from rcmd_pipeline.definitions import AUTO_MULTIPROCESS_BYTES, executor_choice, executor_from_environment

    small, large = tmp_path / "small", tmp_path / "large"
    for folder, size in ((small, 1000), (large, AUTO_MULTIPROCESS_BYTES)):
        folder.mkdir()
        with open(folder / "ratings.csv", "wb") as f:  # only its size is looked at (a sparse file here)
            f.truncate(size)
    assert executor_choice({"RCMD_DATASET_PATH": str(small)}) == "in_process"
    assert executor_choice({"RCMD_DATASET_PATH": str(large)}) == "multiprocess"
    assert executor_choice({"RCMD_DATASET_PATH": str(tmp_path / "missing")}) == "in_process"
    assert executor_choice({}) == "in_process"  # the demo
    assert executor_choice({"RCMD_DATASET_PATH": str(large), "RCMD_EXECUTOR": "in_process"}) == "in_process"
    assert executor_choice({"RCMD_DATASET_PATH": str(small), "RCMD_EXECUTOR": " multiprocess "}) == "multiprocess"
    with pytest.raises(ValueError, match="RCMD_EXECUTOR must be one of auto, in_process, multiprocess; got 'threads'"):
        executor_choice({"RCMD_EXECUTOR": "threads"})
    default = executor_from_environment({"RCMD_DATASET_PATH": str(large)}).config_schema.default_value
    assert default == {"multiprocess": {"max_concurrent": None, "start_method": {
        "forkserver": {"preload_modules": ["rcmd_pipeline.definitions"]}}}}
    assert executor_from_environment({"RCMD_DATASET_PATH": str(small)}).config_schema.default_value == \
        {"in_process": {}}


@pytest.mark.slow
def test_cli_materialize_with_a_process_per_step_forked_from_a_preloaded_server(tmp_path, small_dataset):
    env = _cli_env(tmp_path)
    env.update(RCMD_DATASET_PATH=str(small_dataset), RCMD_EXECUTOR="multiprocess")
    dagster = Path(sys.executable).with_name("dagster")
    selection = ["movielens_links", "movielens_movies", "movielens_ratings"]
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", ",".join(selection)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        events = instance.all_logs(run.run_id)
        run_pid = next(e.dagster_event.pid for e in events
                       if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_START)
        step_pids = {e.step_key: e.dagster_event.pid for e in events
                     if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START}
        assert sorted(step_pids) == sorted(selection)
        assert run_pid not in step_pids.values() and len(set(step_pids.values())) == 3, "a process per step"
        for name in selection:
            assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name
