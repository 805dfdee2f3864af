"""``RCMD_DATA_DIR`` on an object store: ``s3://bucket/prefix`` against a real S3-compatible server.

The server is moto in server mode (``ThreadedMotoServer``) on 127.0.0.1, reached over HTTP through
``AWS_ENDPOINT_URL`` with dummy credentials, exactly as s3fs would reach MinIO or AWS. Nothing of the
project is mocked: the resources are those ``rcmd_pipeline.definitions.build_resources`` picks from
the environment.

1. The whole graph on the small synthetic data set: every stored asset value and the embedding
   cache are objects in the bucket, equal to those of a run on a local folder; the embedded vector
   store and the SQLite file go to ``RCMD_LOCAL_DIR`` (with a warning naming QDRANT_URL and
   RCMD_DATABASE_URL); a second run keeps every value (``kept_from_run``) and rewrites no object.
2. Kill and resume with the live TMDB client against ``fake_tmdb_server``: ``dagster asset
   materialize`` SIGKILLed while fetching TMDB, again while embedding, then run to the end. TMDB
   answers and embedded chunks are objects as they arrive; no id is fetched twice, no text is
   embedded twice, and the outputs equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install -e '.[dev]'")
boto3 = pytest.importorskip("boto3", reason="boto3 (a dependency of moto) is not installed")
pytest.importorskip("s3fs", reason="s3fs is not installed: pip install -e '.[s3]'")

from rcmd_pipeline import storage  # noqa: E402
from rcmd_pipeline.definitions import all_assets, all_checks, build_resources  # noqa: E402
from rcmd_pipeline.embedding_cache import EmbeddingCache  # noqa: E402
from rcmd_pipeline.resources.tmdb import HttpTmdbClient  # noqa: E402
from rcmd_pipeline_tests.comparisons import assert_same_scores  # noqa: E402
from rcmd_pipeline_tests.fake_openai_server import free_port  # noqa: E402
from rcmd_pipeline_tests.fake_tmdb_server import FakeTmdbServer, movie_body  # noqa: E402
from rcmd_pipeline_tests.helpers import small_run_config, synthetic_ratings, write_dataset  # noqa: E402
from rcmd_pipeline_tests.killed_runs import fail_killed_runs, kill_when  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "rcmd-state"
MOVIES = list(range(1, 13))  # the small data set: MovieLens ids 1-12, TMDB ids 1001-1012
WITH_OVERVIEW = [m for m in MOVIES if m % 5]  # helpers.write_dataset's snapshot: movies 5 and 10 have no overview
PASSED_ON = ("RCMD_", "OPENAI_", "QDRANT_", "TMDB_", "DAGSTER_", "AWS_")
AWS_SECRET = "s3-secret-7Qx2vR9"  # a dummy credential: it must appear in no log
CHUNK = 2  # texts per embedding chunk in the CLI runs: several parts, so a kill lands between two


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on a free port of 127.0.0.1, one bucket, the AWS variables set for this module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test-key-id",
           "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=BUCKET)
        try:
            yield client
        finally:
            server.stop()


def _objects(client, prefix: str) -> dict[str, tuple[str, object]]:
    """``{key relative to prefix: (ETag, LastModified)}`` of every object under ``prefix/``."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            out[item["Key"][len(prefix) + 1:]] = (item["ETag"], item["LastModified"])
    return out


def _environment(patch: pytest.MonkeyPatch, dataset: Path, data_dir: str, local_dir: Path) -> None:
    """The embedded defaults (no TMDB, OpenAI, Qdrant or database URL), state under ``data_dir``."""
    for name in [n for n in os.environ if n.startswith(("RCMD_", "OPENAI_", "QDRANT_", "TMDB_"))]:
        patch.delenv(name)
    patch.setenv("RCMD_DATASET_PATH", str(dataset))
    patch.setenv("RCMD_DATA_DIR", data_dir)
    patch.setenv("RCMD_LOCAL_DIR", str(local_dir))


def _materialize(instance: DagsterInstance):
    return materialize([*all_assets, *all_checks], instance=instance, resources=build_resources(os.environ),
                       run_config=small_run_config())


def _outputs(state: str | Path) -> dict:
    """The values a user compares, read from ``state`` (a local folder or an ``s3://`` prefix)."""
    assets = storage.state_path(state, "assets")
    hit_ratios = {}
    for path in storage.listing(assets, "hit_ratio_*.pickle"):
        value = pickle.loads(path.read_bytes())
        hit_ratios[path.stem] = {k: value[k] for k in ("strategy", "k", "n", "hit_ratio", "hits", "recommendations")}
    models = {path.stem: storage.load_npz(path) for path in storage.listing(assets, "*_model.npz")}
    return {
        "tmdb": storage.read_parquet(assets / "tmdb_movie_info_kr.parquet").to_pandas(),
        "embeddings": storage.load_npz(assets / "movie_overview_embeddings.npz"),
        "eval_transitions": storage.read_parquet(assets / "eval_transitions.parquet").to_pandas(),
        "models": models,
        "hit_ratios": hit_ratios,
        "leaderboard": storage.read_parquet(assets / "strategy_leaderboard.parquet",
                                            columns=["strategy", "hit_ratio"]).to_pandas(),
    }


def _assert_same_outputs(got: dict, want: dict) -> None:
    pd.testing.assert_frame_equal(got["tmdb"], want["tmdb"])
    np.testing.assert_array_equal(got["embeddings"]["movieId"], want["embeddings"]["movieId"])
    assert sorted(got["embeddings"]["movieId"].tolist()) == WITH_OVERVIEW
    np.testing.assert_allclose(got["embeddings"]["vector"], want["embeddings"]["vector"], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(got["eval_transitions"], want["eval_transitions"])
    assert sorted(got["models"]) == sorted(want["models"]) and want["models"]
    for name, arrays in want["models"].items():
        assert sorted(got["models"][name]) == sorted(arrays), name
        for key, array in arrays.items():
            if array.dtype.kind == "f":
                np.testing.assert_allclose(got["models"][name][key], array, rtol=0, atol=1e-6, err_msg=f"{name}.{key}")
            else:
                np.testing.assert_array_equal(got["models"][name][key], array, err_msg=f"{name}.{key}")
    assert_same_scores(got, want)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("s3data") / "movielens", synthetic_ratings())


@pytest.fixture(scope="module")
def on_local_disk(dataset, tmp_path_factory) -> dict:
    """The same graph with RCMD_DATA_DIR a local folder: what the object-store runs must equal."""
    state = tmp_path_factory.mktemp("local") / "state"
    with pytest.MonkeyPatch.context() as patch:
        _environment(patch, dataset, str(state), state)
        assert _materialize(DagsterInstance.ephemeral()).success
    return _outputs(state)


@pytest.fixture(scope="module")
def on_s3(s3, dataset, on_local_disk, tmp_path_factory) -> dict:
    """One in-process run with RCMD_DATA_DIR=s3://rcmd-state/graph, then a second one on the same instance."""
    local = tmp_path_factory.mktemp("s3local") / "local"
    instance = DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        _environment(patch, dataset, f"s3://{BUCKET}/graph", local)
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("rcmd_pipeline").addHandler(handler)
        try:
            first = _materialize(instance)
        finally:
            logging.getLogger("rcmd_pipeline").removeHandler(handler)
        assert first.success
        objects = _objects(s3, "graph")
        outputs = _outputs(f"s3://{BUCKET}/graph")
        second = _materialize(instance)
        assert second.success
    return {"first": first, "second": second, "objects": objects, "after": _objects(s3, "graph"),
            "outputs": outputs, "local": local, "warnings": [r.getMessage() for r in records]}


def test_asset_values_and_the_embedding_cache_are_objects_in_the_bucket(on_s3, on_local_disk, tmp_path_factory):
    objects = on_s3["objects"]
    stored = {key for key in objects if key.startswith("assets/")}
    # every asset with a stored value, as on a local disk: Parquet frames, .npz arrays, pickles
    assert {"assets/movielens_ratings.parquet", "assets/tmdb_movie_info_kr.parquet",
            "assets/movie_overview_embeddings.npz", "assets/eval_transitions.parquet",
            "assets/strategy_leaderboard.parquet", "assets/hit_ratio_vector.pickle",
            "assets/next_movie_model.npz"} <= stored
    parts = [key for key in objects if key.startswith("embedding_cache/part-") and key.endswith(".parquet")]
    assert parts, sorted(objects)
    cached = EmbeddingCache(f"s3://{BUCKET}/graph/embedding_cache").load()
    assert len(cached) == len(WITH_OVERVIEW)
    # ... no temporary file was left behind, and nothing else went to the bucket
    assert all(key.startswith(("assets/", "embedding_cache/part-")) for key in objects), sorted(objects)
    assert not any(key.endswith(".tmp") for key in objects)
    # the values equal those of a run on a local folder
    _assert_same_outputs(on_s3["outputs"], on_local_disk)
    # what cannot live in a bucket went to RCMD_LOCAL_DIR, and the log said so
    local = on_s3["local"]
    assert (local / "rcmd.sqlite").is_file() and (local / "vectors").is_dir()
    assert not (local / "assets").exists() and not (local / "embedding_cache").exists()
    warning = next((w for w in on_s3["warnings"] if "object store" in w), "")
    assert "QDRANT_URL" in warning and "RCMD_DATABASE_URL" in warning and "RCMD_LOCAL_DIR" in warning, \
        on_s3["warnings"]


def test_a_second_run_keeps_every_value_and_rewrites_no_object(on_s3):
    first, second = on_s3["first"], on_s3["second"]
    kept, redone = [], []
    for materialization in second.get_asset_materialization_events():
        event = materialization.event_specific_data.materialization
        (kept if "kept_from_run" in event.metadata else redone).append(event.asset_key.to_user_string())
    assert kept and not redone, f"redone on an unchanged second run: {redone}"
    assert {m.event_specific_data.materialization.metadata["kept_from_run"].value
            for m in second.get_asset_materialization_events()} == {first.run_id}
    assert on_s3["after"] == on_s3["objects"], "an unchanged run rewrote objects in the bucket"


# --------------------------------------------------------------------------- 2. kill and resume

CACHE = "tmdb_cache/ko-KR/"


def _start_cli(dataset: Path, data_dir: str, local: Path, home: Path, log: Path, tmdb_url: str) -> subprocess.Popen:
    """``dagster asset materialize --select '*'`` with the live TMDB client and state in the bucket."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PASSED_ON)}
    env.update({k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION")})
    env.update(RCMD_DATASET_PATH=str(dataset), RCMD_DATA_DIR=data_dir, RCMD_LOCAL_DIR=str(local),
               DAGSTER_HOME=str(home), TMDB_READ_ACCESS_TOKEN="test-token", TMDB_BASE_URL=tmdb_url,
               TMDB_REQUESTS_PER_SECOND="4")  # 12 movies in about 3 s: time to kill the run midway
    config = {"execution": {"config": {"in_process": {}}},
              "ops": {**small_run_config()["ops"], "movie_overview_embeddings": {"config": {"chunk_size": CHUNK}}}}
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
               "rcmd_pipeline.definitions", "--select", "*", "--config-json", json.dumps(config)]
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _cached_ids(client, prefix: str) -> set[int]:
    return {int(key[len(CACHE):-len(".json")]) for key in _objects(client, prefix)
            if key.startswith(CACHE) and key.endswith(".json")}


@pytest.mark.slow
def test_a_run_killed_twice_resumes_from_the_bucket_without_fetching_or_embedding_again(s3, dataset, on_s3,
                                                                                        tmp_path):
    prefix, url = "resumed", f"s3://{BUCKET}/resumed"
    local, home, log = tmp_path / "local", tmp_path / "home", tmp_path / "run.log"
    snapshot = dataset / "tmdb" / "ko-KR"
    every_id = {1000 + m for m in MOVIES}
    # TMDB serves the very bodies of the snapshot the in-process run read: the outputs must be the same
    with FakeTmdbServer({i: (snapshot / f"{i}.json").read_bytes() for i in every_id}, bearer="test-token") as tmdb:
        # 1. killed while fetching TMDB: what arrived is in the bucket
        proc = _start_cli(dataset, url, local, home, log, tmdb.url)
        kill_when(proc, lambda: len(_cached_ids(s3, prefix)) >= 3, poll=0.01)
        assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before it was killed"
        cached = _cached_ids(s3, prefix)
        assert 3 <= len(cached) < len(every_id), cached
        assert max(tmdb.counts().values()) == 1
        fail_killed_runs(home)

        # 2. resumed, killed while embedding: only the missing movies are asked for
        tmdb.reset_log()
        proc = _start_cli(dataset, url, local, home, log, tmdb.url)
        kill_when(proc, lambda: any(k.startswith("embedding_cache/part-") for k in _objects(s3, prefix)), poll=0.01)
        assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before it was killed"
        asked = tmdb.counts()
        assert set(asked) == every_id - cached and max(asked.values()) == 1, (sorted(asked), sorted(cached))
        assert _cached_ids(s3, prefix) == every_id
        saved = len(EmbeddingCache(f"{url}/embedding_cache").load())
        assert 1 <= saved < len(WITH_OVERVIEW), saved
        print(f"killed with {len(cached)} of {len(every_id)} TMDB answers, then with {saved} of "
              f"{len(WITH_OVERVIEW)} vectors in the bucket")
        fail_killed_runs(home)

        # 3. resumed to the end: TMDB is not asked again, only the texts not saved are embedded
        tmdb.reset_log()
        proc = _start_cli(dataset, url, local, home, log, tmdb.url)
        proc.wait(timeout=240)
        text = log.read_text(errors="replace")
        assert proc.returncode == 0 and "RUN_SUCCESS" in text, text[-3000:]
        assert tmdb.total() == 0, tmdb.counts()
        assert AWS_SECRET not in text, "the S3 secret key appears in the runs' output"
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("movie_overview_embeddings"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        tmdb_event = instance.get_latest_materialization_event(AssetKey("tmdb_movie_info_kr"))
        tmdb_meta = {k: v.value for k, v in tmdb_event.asset_materialization.metadata.items()}
    assert (meta["embedded"], meta["reused"]) == (len(WITH_OVERVIEW) - saved, saved)
    assert (tmdb_meta["served_from_cache"], tmdb_meta["fetched"]) == (len(MOVIES), 0)
    _assert_same_outputs(_outputs(url), on_s3["outputs"])
    # the caches and values are objects; only the vector store and SQLite are on this machine
    assert sorted(p.name for p in local.iterdir()) == ["rcmd.sqlite", "vectors"]
    assert not any(key.endswith(".tmp") for key in _objects(s3, prefix))


def test_tmdb_answers_and_not_found_markers_are_objects_and_the_next_fetch_asks_nothing(s3):
    bodies = {2001: movie_body(2001), 2002: movie_body(2002)}  # 2003 is unknown: TMDB answers 404
    items = [(1, 2001), (2, 2002), (3, 2003)]
    with FakeTmdbServer(bodies, bearer="test-token") as tmdb:
        client = HttpTmdbClient(base_url=tmdb.url, read_access_token="test-token", requests_per_second=100.0)
        _, first = client.fetch_details(items, f"s3://{BUCKET}/tmdb-unit/ko-KR")
        assert (first.fetched, first.not_found, first.from_cache) == (2, 1, 0)
        assert set(_objects(s3, "tmdb-unit/ko-KR")) == {"2001.json", "2002.json", "not_found/2003"}
        tmdb.reset_log()
        records, second = client.fetch_details(items, f"s3://{BUCKET}/tmdb-unit/ko-KR")
    assert tmdb.total() == 0
    assert (second.fetched, second.not_found, second.from_cache) == (0, 1, 2)
    assert records[1]["title"] == movie_body(2001)["title"]
