"""Faults of a nightly, unattended run: a bad night must cost a retry, never data.

Every fault is real: local HTTP servers that stop answering, answer 429/500 or refuse connections;
a Qdrant URL and a PostgreSQL URL on ports nothing listens on; a file-size limit that makes the
disk "full" in the middle of a vector-store build; a database that refuses a row in the middle of
a load; and whole ``dagster asset materialize`` runs killed with SIGKILL at each stage. No project
code is mocked or patched.

1. TMDB stops answering midway: the asset fails saying how many failed and that the fetched ones
   are kept; the re-run asks TMDB only for the others.
2. The embedder answers 429 for a while (the run succeeds), or 500 for good after the first chunk
   (the run fails; the re-run sends only the texts not embedded before).
3. The vector store or the database is unreachable (the message names the variable, without the
   secret), or a rebuild / a load fails midway (what is served stays exactly as it was).
4. A run killed at a stage, then re-run, ends with exactly the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from rcmd_pipeline.definitions import all_assets
from rcmd_pipeline.embedding_cache import EmbeddingCache, embedding_text
from rcmd_pipeline.resources.embedder import OpenAIEmbedder
from rcmd_pipeline.resources.movie_db import MovieDatabase
from rcmd_pipeline.resources.tmdb import HttpTmdbClient
from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore, QdrantServerStore
from rcmd_pipeline_tests.comparisons import assert_same_scores
from rcmd_pipeline_tests.fake_openai_server import free_port
from rcmd_pipeline_tests.fake_tmdb_server import FakeTmdbServer, Fault, drop, movie_body
from rcmd_pipeline_tests.faulty_embeddings_server import FaultyEmbeddingsServer, unit_vector
from rcmd_pipeline_tests.helpers import embedded_resources, small_run_config, synthetic_ratings, write_dataset
from rcmd_pipeline_tests.killed_runs import fail_killed_runs, kill_when

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "movie_emb_kr"
MOVIES = list(range(1, 13))  # the small data set: MovieLens ids 1-12, TMDB ids 1001-1012
WITH_OVERVIEW = [m for m in MOVIES if m % 5]  # helpers.write_dataset's snapshot: movies 5 and 10 have no overview
TMDB = ["movielens_links", "tmdb_movie_info_kr"]
EMBED = [*TMDB, "movie_overview_embeddings"]
VECTORS = [*EMBED, "movie_vectors"]
CATALOG = [*TMDB, "movie_table", "series_table"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "movielens", synthetic_ratings())


def _run(dataset: Path, data_dir: Path, selection: list[str], run_config: dict | None = None, **overrides):
    """Materialize ``selection`` with the embedded defaults, some resources replaced; never raises."""
    resources = embedded_resources(dataset, data_dir)
    resources.update(overrides)
    return materialize(all_assets, selection=selection, resources=resources, run_config=run_config or {},
                       raise_on_error=False)


def _failures(result) -> dict[str, str]:
    """``{step: everything its failure says}``: the error, its causes, and a Failure's description."""
    out = {}
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.event_specific_data
        text = str(data.error)
        if data.user_failure_data is not None:
            text = f"{data.user_failure_data.description}\n{text}"
        out[event.step_key] = text
    return out


def _headline(text: str) -> str:
    """The first line of a failure that is not Dagster's wrapper or a traceback: what went wrong."""
    for line in text.splitlines():
        if line.strip() and not line.startswith((" ", "Stack Trace", "The above exception", "dagster._core")):
            return line
    return text.splitlines()[0] if text else ""


def _every_text(result) -> str:
    """All the run's event messages and errors: what the UI and the logs would show."""
    parts = []
    for event in result.all_events:
        parts.append(event.message or "")
        data = event.event_specific_data
        if getattr(data, "error", None) is not None:
            parts.append(str(data.error))
    return "\n".join(parts)


def _meta(result, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


# --------------------------------------------------------------------------- 1. TMDB stops answering


def _tmdb_client(server: FakeTmdbServer, max_retries: int) -> HttpTmdbClient:
    return HttpTmdbClient(base_url=server.url, read_access_token="token", requests_per_second=500.0,
                          max_concurrency=4, max_retries=max_retries, timeout_seconds=5.0,
                          backoff_base_seconds=0.05, backoff_max_seconds=0.2)


def _stop_once_served(server: FakeTmdbServer, healthy: set[int], done: threading.Event) -> None:
    """Stop the server (new connections are then refused) once every healthy id got its 200 and some
    other id was dropped: TMDB answered the first movies, then went away."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = server.requests()
        if healthy <= {r.tmdb_id for r in log if r.answer == "200"} and any(r.answer == "drop" for r in log):
            server.stop()
            done.set()
            return
        time.sleep(0.002)


@pytest.mark.parametrize("fault", ["dropped", "refused"])
def test_tmdb_stopping_midway_keeps_what_was_fetched_and_the_rerun_asks_only_for_the_rest(tmp_path, dataset, fault):
    data_dir = tmp_path / "state"
    healthy = {1000 + m for m in MOVIES[:7]}
    rest = {1000 + m for m in MOVIES[7:]}
    bodies = {1000 + m: movie_body(1000 + m) for m in MOVIES}
    # the first 7 movies answer; the others get their connection closed without an answer, every time
    server = FakeTmdbServer(bodies, faults={tmdb_id: [drop()] * 100 for tmdb_id in rest}).start()
    stopped = threading.Event()
    if fault == "refused":  # ... and then the whole server goes away: connections are refused
        threading.Thread(target=_stop_once_served, args=(server, healthy, stopped), daemon=True).start()
    try:
        first = _run(dataset, data_dir, TMDB, tmdb=_tmdb_client(server, max_retries=4))
    finally:
        server.stop()
    assert not first.success
    message = _failures(first)["tmdb_movie_info_kr"]
    assert "5 of 12 TMDB requests failed" in message
    assert "the 7 movies fetched so far are kept in the cache and the next run fetches only the rest" in message
    failed = [e for e in first.all_events if e.event_type_value == "STEP_FAILURE"][0]
    reasons = failed.event_specific_data.user_failure_data.metadata["failures"].value
    print(f"TMDB {fault}: {_headline(message)}\n{reasons}")
    if fault == "refused":
        assert stopped.is_set() and "refused" in reasons.lower(), reasons
    cache = data_dir / "tmdb_cache" / "ko-KR"
    assert sorted(p.name for p in cache.glob("*.json")) == sorted(f"{i}.json" for i in healthy)
    assert not (data_dir / "assets" / "tmdb_movie_info_kr.parquet").exists()
    for tmdb_id in healthy:  # byte for byte what TMDB sent
        assert json.loads((cache / f"{tmdb_id}.json").read_bytes()) == bodies[tmdb_id]

    with FakeTmdbServer(bodies) as healthy_server:  # TMDB is back
        second = _run(dataset, data_dir, TMDB, tmdb=_tmdb_client(healthy_server, max_retries=4))
        counts = dict(healthy_server.counts())
    assert second.success
    assert counts == {tmdb_id: 1 for tmdb_id in rest}, "only the movies not fetched before are asked for, once"
    meta = _meta(second, "tmdb_movie_info_kr")
    assert (meta["served_from_cache"], meta["fetched"], meta["failed"], meta["dagster/row_count"]) == (7, 5, 0, 12)


def _refreshing_client(base_url: str) -> HttpTmdbClient:
    return HttpTmdbClient(base_url=base_url, read_access_token="token", requests_per_second=500.0, max_retries=1,
                          backoff_base_seconds=0.01, max_age_days=30.0)


PROXY_404 = Fault("status", status=404, content_type="text/html",
                  body=b"<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1></body></html>")


@pytest.mark.parametrize("cause", ["base_url_with_version", "proxy_404_page"])
def test_a_night_of_404s_does_not_wipe_the_catalogue(tmp_path, dataset, cause):
    data_dir = tmp_path / "state"
    nightly = [*CATALOG, "movie_overview_embeddings"]
    bodies = {1000 + m: movie_body(1000 + m) for m in MOVIES}
    with FakeTmdbServer(bodies) as server:
        assert _run(dataset, data_dir, nightly, tmdb=_refreshing_client(server.url)).success
        vectors = len(EmbeddingCache(data_dir / "embedding_cache").load())
        movies, _ = _tables(data_dir)
        assert len(movies) == 12
        # a month later every cached body is due for its refresh, and every answer is a 404: either
        # TMDB_BASE_URL now ends in /3 (requests go to /3/3/movie/<id>, which TMDB, like the fake server,
        # answers with its not-found body) or a proxy in front of TMDB answers its own 404 page
        aged = time.time() - 31 * 86400
        for path in (data_dir / "tmdb_cache" / "ko-KR").glob("*.json"):
            os.utime(path, (aged, aged))
        if cause == "base_url_with_version":
            bad = _run(dataset, data_dir, nightly, tmdb=_refreshing_client(server.url + "/3"))
        else:
            with FakeTmdbServer(bodies, default_fault=PROXY_404) as proxy:
                bad = _run(dataset, data_dir, nightly, tmdb=_refreshing_client(proxy.url))
        after_bad, _ = _tables(data_dir)
        kept = len(list((data_dir / "tmdb_cache" / "ko-KR").glob("*.json")))
        vectors_kept = len(EmbeddingCache(data_dir / "embedding_cache").load())
        fixed = _run(dataset, data_dir, CATALOG, tmdb=_refreshing_client(server.url))  # the cause is fixed
        after_fix, _ = _tables(data_dir)
    print(f"404 night ({cause}): run success={bad.success}, movie rows {len(movies)} -> {len(after_bad)}, "
          f"cached bodies left {kept}, cached vectors {vectors} -> {vectors_kept}; "
          f"after the fix: success={fixed.success}, movie rows {len(after_fix)}")
    assert len(after_bad) == 12, "a bad night must cost a retry, never the catalogue"
    assert kept == 12, "what TMDB sent before is not forgotten because of one night's answers"
    assert vectors_kept == vectors == 12, "paid-for vectors are not thrown away"
    assert fixed.success and len(after_fix) == 12


# --------------------------------------------------------------------------- 2. the embedder


def _embedder(server: FaultyEmbeddingsServer, max_retries: int) -> OpenAIEmbedder:
    return OpenAIEmbedder(api_key="k", base_url=server.url, model="fake", max_retries=max_retries,
                          timeout_seconds=10.0, backoff_base_seconds=0.01, backoff_max_seconds=0.05)


def _texts(data_dir: Path) -> dict[int, str]:
    """movieId -> the text embedded for it (movies with an overview only)."""
    details = pd.read_parquet(data_dir / "assets" / "tmdb_movie_info_kr.parquet")
    texts = {int(m): embedding_text(t, o) for m, t, o in zip(details["movieId"], details["title"],
                                                               details["overview"], strict=True)}
    return {m: t for m, t in texts.items() if t}


def test_embedder_rate_limiting_for_a_while_is_waited_out(tmp_path, dataset):
    data_dir = tmp_path / "state"
    with FaultyEmbeddingsServer(dim=8, rate_limited_first=3, retry_after="0") as server:
        result = _run(dataset, data_dir, EMBED, embedder=_embedder(server, max_retries=5))
    assert result.success, _failures(result)
    assert server.statuses() == [429, 429, 429, 200]
    meta = _meta(result, "movie_overview_embeddings")
    assert (meta["embedded"], meta["reused"], meta["skipped"], meta["dimension"]) == (len(WITH_OVERVIEW), 0, 2, 8)
    texts = _texts(data_dir)
    assert sorted(texts) == WITH_OVERVIEW
    assert sorted(server.inputs(200)) == sorted(texts.values())


def test_embedder_failing_for_good_keeps_the_paid_chunks_and_the_rerun_sends_only_the_rest(tmp_path, dataset):
    data_dir = tmp_path / "state"
    config = {"ops": {"movie_overview_embeddings": {"config": {"chunk_size": 3}}}}
    broken = FaultyEmbeddingsServer(dim=8, fail_after_ok=1).start()  # the first chunk, then 500 for good
    try:
        first = _run(dataset, data_dir, EMBED, config, embedder=_embedder(broken, max_retries=2))
    finally:
        broken.stop()
    assert not first.success
    message = _failures(first)["movie_overview_embeddings"]
    print(f"embedder 500: {_headline(message)}")
    assert "gave up after 3 attempts" in message and "HTTP 500" in message
    assert broken.statuses() == [200, 500, 500, 500]
    paid = broken.inputs(200)
    assert len(paid) == 3
    assert len(EmbeddingCache(data_dir / "embedding_cache").load()) == 3, "the paid chunk is on disk"
    assert not (data_dir / "assets" / "movie_overview_embeddings.npz").exists()

    # the service comes back where it was (the cache key holds the endpoint: same host and port)
    with FaultyEmbeddingsServer(port=broken.port, dim=8) as healthy:
        second = _run(dataset, data_dir, EMBED, config, embedder=_embedder(healthy, max_retries=2))
    assert second.success, _failures(second)
    texts = _texts(data_dir)
    resent = healthy.inputs(None)
    assert not set(resent) & set(paid), "nothing is paid for twice"
    assert sorted(resent) == sorted(set(texts.values()) - set(paid))
    assert [len(r.inputs) for r in healthy.records] == [3, 3, 1]
    meta = _meta(second, "movie_overview_embeddings")
    assert (meta["embedded"], meta["reused"]) == (7, 3)
    frame = dict(np.load(data_dir / "assets" / "movie_overview_embeddings.npz"))
    for movie_id, vector in zip(frame["movieId"], frame["vector"], strict=True):
        np.testing.assert_allclose(np.asarray(vector), unit_vector(texts[int(movie_id)], 8), atol=1e-6)


# --------------------------------------------------------------------------- 3a. the vector store


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_unreachable_qdrant_server_names_qdrant_url_and_never_the_key(tmp_path, dataset):
    port = free_port()
    store = QdrantServerStore(url=f"http://127.0.0.1:{port}", api_key="qdrant-secret-42", timeout=5)
    result = _run(dataset, tmp_path / "state", VECTORS, vector_store=store)
    assert not result.success
    failures = _failures(result)
    assert list(failures) == ["movie_vectors"], "the embeddings before it are done and kept"
    print(f"qdrant unreachable: {_headline(failures['movie_vectors'])}")
    assert "QDRANT_URL" in failures["movie_vectors"]
    assert f"127.0.0.1:{port}" in failures["movie_vectors"]
    assert "qdrant-secret-42" not in _every_text(result)
    assert (tmp_path / "state" / "assets" / "movie_overview_embeddings.npz").exists()


REBUILD = {"ops": {"movie_vectors": {"config": {"rebuild": True}}}}


def _served(data_dir: Path) -> dict:
    """What a reader of the embedded store sees: info, every vector, every movie's 3 neighbours."""
    with EmbeddedQdrantStore(path=str(data_dir / "vectors")).open() as session:
        info = session.info(COLLECTION)
        vectors = session.retrieve(COLLECTION, np.array(MOVIES))
        ids, scores = session.neighbours(COLLECTION, np.array(MOVIES), 3)
    folders = sorted(p.name for p in (data_dir / "vectors" / COLLECTION).iterdir() if p.is_dir())
    return {"info": info, "vectors": vectors, "ids": ids, "scores": scores, "folders": folders}


def _assert_served_unchanged(before: dict, after: dict) -> None:
    assert after["info"] == before["info"]
    assert after["folders"] == before["folders"], "no half-built generation is left behind"
    assert sorted(after["vectors"]) == sorted(before["vectors"])
    for movie_id, vector in before["vectors"].items():
        np.testing.assert_array_equal(after["vectors"][movie_id], vector)
    np.testing.assert_array_equal(after["ids"], before["ids"])
    np.testing.assert_allclose(after["scores"], before["scores"], rtol=0, atol=1e-6)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_failed_rebuild_leaves_the_served_collection_as_it_was(tmp_path, dataset, capfd):
    data_dir = tmp_path / "state"
    assert _run(dataset, data_dir, VECTORS).success
    before = _served(data_dir)
    assert before["info"]["points"] == len(WITH_OVERVIEW) and before["info"]["generation"] == 1

    # (1) bad input: a NaN in the stored embeddings is refused before the store is touched
    stored = data_dir / "assets" / "movie_overview_embeddings.npz"
    good = stored.read_bytes()
    frame = dict(np.load(stored))
    frame["vector"][3] = np.nan
    with open(stored, "wb") as out:
        np.savez(out, **frame)
    result = _run(dataset, data_dir, ["movie_vectors"])
    assert not result.success and "non-finite" in _failures(result)["movie_vectors"]
    _assert_served_unchanged(before, _served(data_dir))

    # (2) the disk fills up in the middle of the build: the engine fails after the new generation's
    # folder was created and partly written (a file-size limit makes writes fail with EFBIG)
    stored.write_bytes(good)
    capfd.readouterr()  # empty pytest's capture file: it must stay under the limit too
    print(f"NaN: {_headline(_failures(result)['movie_vectors'])}")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))
    try:  # unchanged points would keep the served generation: ask for a rebuild
        result = _run(dataset, data_dir, ["movie_vectors"], REBUILD)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not result.success
    assert "File too large" in _failures(result)["movie_vectors"]
    assert f"{COLLECTION}/g000002/" in _failures(result)["movie_vectors"], "it failed inside the new generation"
    print(f"disk full: {_headline(_failures(result)['movie_vectors'])}")
    _assert_served_unchanged(before, _served(data_dir))

    # space again: the retry builds the next generation with the same points
    result = _run(dataset, data_dir, ["movie_vectors"], REBUILD)
    assert result.success, _failures(result)
    after = _served(data_dir)
    assert after["info"]["generation"] == 2 and after["info"]["points"] == before["info"]["points"]
    assert after["folders"] == ["g000002"]
    np.testing.assert_array_equal(after["ids"], before["ids"])


# --------------------------------------------------------------------------- 3b. the database


def test_unreachable_database_names_rcmd_database_url_with_the_password_masked(tmp_path, dataset):
    db = MovieDatabase(url="postgresql+psycopg2://u:pw@127.0.0.1:1/x")
    result = _run(dataset, tmp_path / "state", [*TMDB, "movie_table"], movie_db=db)
    assert not result.success
    message = _failures(result)["movie_table"]
    print(f"database unreachable: {_headline(message)}")
    assert "RCMD_DATABASE_URL" in message
    assert "postgresql+psycopg2://u:***@127.0.0.1:1/x" in message
    assert "u:pw@" not in _every_text(result)


def _tables(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    db = MovieDatabase(url=f"sqlite:///{data_dir / 'rcmd.sqlite'}")
    return db.read_table("movie"), db.read_table("series")


def test_a_load_failing_midway_leaves_the_tables_unchanged(tmp_path, dataset):
    data_dir = tmp_path / "state"
    assert _run(dataset, data_dir, CATALOG).success
    movies, series = _tables(data_dir)
    assert len(movies) == 12 and len(series) == 3
    # The database refuses one row of the next load, the last one inserted (after the DELETE and 11
    # inserts of the same transaction): a trigger emulates Oracle's VARCHAR2(500 CHAR) limit, which
    # SQLite does not enforce, and TMDB now sends movie 12 with a 600-character title.
    with sqlite3.connect(data_dir / "rcmd.sqlite") as conn:
        conn.execute("CREATE TRIGGER movie_title_limit BEFORE INSERT ON movie WHEN length(NEW.movie_title) > 500 "
                     "BEGIN SELECT RAISE(ABORT, 'ORA-12899: value too large for column MOVIE_TITLE'); END")
    snapshot = dataset / "tmdb" / "ko-KR" / "1012.json"
    body = json.loads(snapshot.read_text(encoding="utf-8"))
    body["title"] = "아주 긴 제목 " * 75
    snapshot.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")

    result = _run(dataset, data_dir, CATALOG)
    assert not result.success
    message = _failures(result)["movie_table"]
    print(f"load refused midway: {_headline(message)}")
    assert "ORA-12899" in message and "rolled back: the previous contents are unchanged" in message
    after_movies, after_series = _tables(data_dir)
    pd.testing.assert_frame_equal(after_movies, movies)  # regtime included: not one row touched
    pd.testing.assert_frame_equal(after_series, series)

    with sqlite3.connect(data_dir / "rcmd.sqlite") as conn:  # the DBA widens the column: the retry loads
        conn.execute("DROP TRIGGER movie_title_limit")
    assert _run(dataset, data_dir, CATALOG).success
    retried, _ = _tables(data_dir)
    changed = movies.set_index("movie_id").compare(retried.set_index("movie_id"))
    assert changed.index.tolist() == [12]


# --------------------------------------------------------------------------- 4. SIGKILL at each stage

CLI_CONFIG = {"execution": {"config": {"in_process": {}}}, **small_run_config()}
SECRET_PREFIXES = ("RCMD_", "OPENAI_", "QDRANT_", "TMDB_", "DAGSTER_")
STAGES = {  # the first file each stage writes, relative to RCMD_DATA_DIR
    "tmdb": "assets/tmdb_movie_info_kr.parquet",
    "embeddings": "embedding_cache/part-*.parquet",
    "catalog": "rcmd.sqlite",
    "vectors": f"vectors/{COLLECTION}/g0*",
}


def _start_cli(dataset: Path, state: Path, home: Path, log: Path, config: dict | None = None) -> subprocess.Popen:
    """``dagster asset materialize --select '*'`` in its own process group, output to ``log``."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIXES)}
    env.update(RCMD_DATASET_PATH=str(dataset), RCMD_DATA_DIR=str(state), DAGSTER_HOME=str(home))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "*",
               "--config-json", json.dumps({**CLI_CONFIG, "ops": {**CLI_CONFIG.get("ops", {}), **(config or {})}})]
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0 and "RUN_SUCCESS" in text, text[-3000:]


def _last_step_started(log: Path) -> str:
    steps = [line.split(" - ")[6] for line in log.read_text(errors="replace").splitlines()
             if " - STEP_START - " in line and len(line.split(" - ")) > 7]
    return steps[-1] if steps else "(none)"


def _left_behind(state: Path) -> str:
    """What a killed run left in the state folder (for the test's output)."""
    assets = sorted(p.stem for p in (state / "assets").glob("*.*")) if (state / "assets").is_dir() else []
    parts = [f"assets {assets}", f"{len(EmbeddingCache(state / 'embedding_cache').load())} cached vectors"]
    collection = state / "vectors" / COLLECTION
    if collection.is_dir():
        parts.append(f"vectors {sorted(p.name for p in collection.iterdir())}")
    if (state / "rcmd.sqlite").exists():
        with sqlite3.connect(state / "rcmd.sqlite") as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            parts.append("tables " + str({t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                                          for t in tables}))
    return "; ".join(parts)


def _final_outputs(state: Path) -> dict:
    assets = state / "assets"
    movies, series = _tables(state)
    embeddings = dict(np.load(assets / "movie_overview_embeddings.npz"))
    hit_ratios = {}
    for path in sorted(assets.glob("hit_ratio_*.pickle")):
        value = pd.read_pickle(path)
        hit_ratios[path.stem] = {k: value[k] for k in ("strategy", "k", "n", "hit_ratio", "hits", "recommendations")}
    return {
        "movie": movies.drop(columns="regtime"),
        "series": series.drop(columns="regtime"),
        "embeddings": {int(m): np.asarray(v) for m, v in zip(embeddings["movieId"], embeddings["vector"], strict=True)},
        "served": _served(state),
        "eval_transitions": pd.read_parquet(assets / "eval_transitions.parquet"),
        "hit_ratios": hit_ratios,
        "leaderboard": pd.read_parquet(assets / "strategy_leaderboard.parquet")[["strategy", "hit_ratio"]],
    }


def _assert_same_outputs(got: dict, want: dict) -> None:
    pd.testing.assert_frame_equal(got["movie"], want["movie"])
    pd.testing.assert_frame_equal(got["series"], want["series"])
    assert sorted(got["embeddings"]) == sorted(want["embeddings"]) == WITH_OVERVIEW
    for movie_id, vector in want["embeddings"].items():
        np.testing.assert_allclose(got["embeddings"][movie_id], vector, rtol=0, atol=1e-6)
    served, wanted = got["served"], want["served"]
    assert {k: served["info"][k] for k in ("points", "dimension", "model")} == {
        k: wanted["info"][k] for k in ("points", "dimension", "model")}
    assert sorted(served["vectors"]) == sorted(wanted["vectors"])
    for movie_id, vector in wanted["vectors"].items():
        np.testing.assert_allclose(served["vectors"][movie_id], vector, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(served["ids"], wanted["ids"])
    assert len(served["folders"]) == 1, f"one generation left, not {served['folders']}"
    pd.testing.assert_frame_equal(got["eval_transitions"], want["eval_transitions"])
    assert_same_scores(got, want)


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("cli") / "movielens", synthetic_ratings())


@pytest.fixture(scope="module")
def uninterrupted(cli_dataset, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    log = root / "run.log"
    _finish(_start_cli(cli_dataset, root / "state", root / "home", log), log)
    return _final_outputs(root / "state")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_run_killed_at_a_stage_and_rerun_ends_like_an_uninterrupted_run(tmp_path, cli_dataset, uninterrupted,
                                                                           stage):
    state, home, log = tmp_path / "state", tmp_path / "home", tmp_path / "run.log"
    proc = _start_cli(cli_dataset, state, home, log)
    kill_when(proc, lambda: any(state.glob(STAGES[stage])))
    assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before {stage} was reached"
    assert "RUN_SUCCESS" not in log.read_text(errors="replace")
    saved = len(EmbeddingCache(state / "embedding_cache").load())
    print(f"killed at {stage} during step {_last_step_started(log)}: {_left_behind(state)}")
    fail_killed_runs(home)

    _finish(_start_cli(cli_dataset, state, home, log), log)  # the next night (or a manual retry)
    _assert_same_outputs(_final_outputs(state), uninterrupted)
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("movie_overview_embeddings"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (meta["embedded"], meta["reused"]) == (len(WITH_OVERVIEW) - saved, saved), \
        "the re-run embeds exactly what the killed run had not saved"


@pytest.mark.slow
def test_a_nightly_run_killed_while_rebuilding_keeps_serving_the_previous_night(tmp_path, cli_dataset, uninterrupted):
    state, home, log = tmp_path / "state", tmp_path / "home", tmp_path / "run.log"
    _finish(_start_cli(cli_dataset, state, home, log), log)  # last night: a good run
    last_night = _final_outputs(state)
    assert last_night["served"]["info"]["generation"] == 1
    # tonight: killed while the next generation is built (asked for: unchanged points keep the generation)
    proc = _start_cli(cli_dataset, state, home, log, REBUILD["ops"])
    kill_when(proc, lambda: (state / "vectors" / COLLECTION / "g000002").exists())
    assert proc.returncode == -signal.SIGKILL, "the run ended before the rebuild started"
    print(f"nightly run killed during step {_last_step_started(log)}: {_left_behind(state)}")
    fail_killed_runs(home)
    # what readers see the morning after: last night's collection and tables, untouched
    now = _final_outputs(state)
    served, before = now["served"], last_night["served"]
    assert served["info"] == before["info"]
    np.testing.assert_array_equal(served["ids"], before["ids"])
    for movie_id, vector in before["vectors"].items():
        np.testing.assert_array_equal(served["vectors"][movie_id], vector)
    pd.testing.assert_frame_equal(now["movie"], last_night["movie"])
    pd.testing.assert_frame_equal(now["series"], last_night["series"])

    _finish(_start_cli(cli_dataset, state, home, log), log)  # the retry
    _assert_same_outputs(_final_outputs(state), uninterrupted)

