"""Secrets never show: runs with TMDB, OpenAI, Qdrant and database credentials set, then a scan of
everything a run leaves behind or prints.

Each test sets distinctive fake secrets in the environment, builds the resources the way
``rcmd_pipeline.definitions`` does (:func:`build_resources` on ``os.environ``: secrets become
``EnvVar``), materializes part of the TMDB → tables → embeddings → vectors chain with a real
instance (a temporary ``DAGSTER_HOME``) against servers on 127.0.0.1 — ``FakeTmdbServer`` and a
fake OpenAI-compatible embeddings server, both of which echo the presented credential in their
error bodies as a careless proxy might — and then looks for every secret (and its last ten
characters) in:

* every event log record of the run (``str(record)``, its serialized form, failure texts); the
  instance also stores the HTTP clients' DEBUG log lines there (``python_logs``), as an operator
  might configure to see them in the UI,
* every materialization's and asset check's metadata values,
* the stored run (``run_config``, tags), its run record, job snapshot and execution plan snapshot,
* every file under the test's ``tmp_path`` (the instance's SQLite storage and compute logs, the
  pipeline's state: TMDB cache, embedding cache, vector store, SQLite database),
* Python logging captured at DEBUG (urllib3, requests, openai, httpx, httpcore, qdrant_client,
  sqlalchemy, dagster, rcmd_pipeline),
* stdout/stderr of the process (Dagster's console log), the resources' ``repr``/``str``,
* the raised exception (``str``, ``repr``, the formatted traceback and every chained exception).

The PostgreSQL variant (a password in ``RCMD_DATABASE_URL``; a SQLite URL cannot carry one) runs
when ``RCMD_TEST_POSTGRES_URL`` is set (trust auth there accepts any password), e.g.

    RCMD_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \\
        python -m pytest -q rcmd_pipeline_tests/test_secrets.py
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
from dagster import (
    DagsterEventType,
    Definitions,
    EnvVar,
    instance_for_test,
    materialize,
    serialize_value,
)

from rcmd_pipeline.assets.checks import movie_series_exist
from rcmd_pipeline.definitions import all_assets, build_resources, rcmd_full_pipeline
from rcmd_pipeline.resources.embedder import EmbedderAuthError, OpenAIEmbedder
from rcmd_pipeline.resources.movie_db import MovieDatabase, MovieDatabaseError
from rcmd_pipeline.resources.tmdb import HttpTmdbClient, TmdbAuthError
from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore, QdrantServerStore, VectorStoreConnectionError
from rcmd_pipeline_tests.fake_openai_server import FakeOpenAIServer
from rcmd_pipeline_tests.fake_tmdb_server import INVALID_KEY_BODY, FakeTmdbServer, Fault, movie_body
from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset

# Distinctive fake secrets. The OpenAI key deliberately lacks the "sk-" shape (OpenAI-compatible
# gateways use any key), so only exact redaction can hide it, not the shape pattern.
TMDB_TOKEN = "eyJhbGciOiJIUzI1NiJ9.tmdbTOKEN-Zq8vK3wXp5"
TMDB_KEY = "f3c1a9tmdbKEY7b2e5d8c0a4"
OPENAI_KEY = "gw-OPENAIkey-R7tY2uI9oP4aS6dF"
QDRANT_KEY = "qdr-QDRANTkey-M5nB8vC1xZ3lW0"
DB_PASSWORD = "DBpassw0rd-H6jK9lQ2wEr4"

MOVIES = 12
TMDB_IDS = [1000 + m for m in range(1, MOVIES + 1)]  # helpers.write_dataset links movieId m to tmdbId 1000 + m
CONFIG_VARIABLES = ("TMDB_READ_ACCESS_TOKEN", "TMDB_API_KEY", "TMDB_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                    "QDRANT_URL", "QDRANT_API_KEY", "RCMD_DATABASE_URL", "RCMD_EMBEDDING_MODEL",
                    "RCMD_EMBEDDING_DIMENSIONS", "RCMD_TMDB_SNAPSHOT_DIR", "RCMD_QDRANT_COLLECTION",
                    "TMDB_REQUESTS_PER_SECOND", "TMDB_MAX_AGE_DAYS", "OPENAI_LOG")
LOGGERS = ("urllib3", "requests", "openai", "httpx", "httpcore", "httpx2", "httpcore2", "qdrant_client", "dagster",
           "rcmd_pipeline")
MANAGED_LOGGERS = ("urllib3", "openai", "httpx", "httpx2", "httpcore", "httpcore2", "qdrant_client", "rcmd_pipeline")
CHAIN = ["movielens_links", "tmdb_movie_info_kr", "movie_table", "series_table", "movie_overview_embeddings",
         "movie_vectors"]


# --------------------------------------------------------------------------- scanning


def fragments(value: str) -> tuple[str, ...]:
    """The secret and its last ten characters (a truncated or partly masked copy is a leak too)."""
    return value, value[-10:]


def leaks(sources: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """One line per (source, secret) where the secret or a fragment of it appears, with context."""
    found = []
    for source, text in sources.items():
        for name, value in secrets.items():
            for piece in fragments(value):
                at = text.find(piece)
                if at >= 0:
                    context = text[max(0, at - 150): at + len(piece) + 150].replace(piece, f"<{name}>")
                    found.append(f"{name} in {source}: ...{context}...")
                    break
    return found


def assert_no_secret(sources: dict[str, str], secrets: dict[str, str]) -> None:
    assert sources, "nothing was scanned"
    found = leaks(sources, secrets)
    assert not found, "secrets leaked:\n" + "\n".join(found)


def error_texts(error) -> list[str]:
    """A SerializableErrorInfo as Dagster shows it, with its cause/context chain."""
    out = []
    while error is not None:
        out.append(error.to_string())
        error = error.cause or error.context
    return out


def run_sources(instance, run_id: str) -> dict[str, str]:
    """Everything the instance keeps about a run, as text."""
    sources: dict[str, str] = {}
    for i, record in enumerate(instance.all_logs(run_id)):
        event = record.dagster_event
        kind = event.event_type_value if event else "log"
        texts = [str(record), serialize_value(record), record.user_message or "", record.message or ""]
        if event is not None:
            data = event.event_specific_data
            for name in ("error", "user_failure_data"):
                value = getattr(data, name, None)
                if name == "error" and value is not None:
                    texts += error_texts(value)
                elif value is not None:
                    texts.append(repr(value))
            materialization = event.step_materialization_data.materialization \
                if event.event_type == DagsterEventType.ASSET_MATERIALIZATION else None
            if materialization is not None:
                texts += [f"{key}: {entry.value!r}" for key, entry in materialization.metadata.items()]
            if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                texts += [f"{key}: {entry.value!r}" for key, entry in data.metadata.items()]
        sources[f"event log #{i} ({kind})"] = "\n".join(texts)
    run = instance.get_run_by_id(run_id)
    sources["run"] = serialize_value(run)
    sources["run.run_config"] = json.dumps(run.run_config, default=str) + repr(run.run_config)
    sources["run.tags"] = repr(run.tags)
    sources["run record"] = repr(instance.get_run_record_by_id(run_id))
    sources["job snapshot"] = serialize_value(instance.get_job_snapshot(run.job_snapshot_id))
    sources["execution plan snapshot"] = serialize_value(
        instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id))
    return sources


def file_sources(root: Path) -> dict[str, str]:
    """Every file under ``root`` as bytes decoded one to one (SQLite files, parquet, JSON, logs)."""
    return {f"file {path.relative_to(root)}": path.read_bytes().decode("latin-1")
            for path in sorted(root.rglob("*")) if path.is_file()}


def logging_sources(caplog) -> dict[str, str]:
    lines = [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records]
    return {"python logging (messages)": "\n".join(lines), "python logging (formatted)": caplog.text}


def exception_sources(exc: BaseException) -> dict[str, str]:
    """The exception as shown (traceback) and every chained exception, even a suppressed context."""
    sources = {"raised exception (traceback)": "".join(traceback.format_exception(exc))}
    seen, current, depth = set(), exc, 0
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sources[f"raised exception chain #{depth}"] = f"{type(current).__name__}: {current!s} / {current!r}"
        current, depth = current.__cause__ or current.__context__, depth + 1
    return sources


def resource_sources(resources: dict) -> dict[str, str]:
    return {f"resource {name} repr/str": f"{value!r}\n{value!s}" for name, value in resources.items()}


def failure_texts(instance, run_id: str) -> str:
    """The error texts of the run's failed steps, as the UI shows them."""
    texts = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        texts += error_texts(record.dagster_event.step_failure_data.error)
    return "\n".join(texts)


def only_run_id(instance) -> str:
    (run,) = instance.get_runs()
    return run.run_id


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def env(monkeypatch, tmp_path) -> Path:
    """A small MovieLens folder, state under tmp_path, every credential variable unset."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dataset = write_dataset(tmp_path / "movielens", synthetic_ratings(users=30, movies=MOVIES))
    monkeypatch.setenv("RCMD_DATASET_PATH", str(dataset))
    monkeypatch.setenv("RCMD_DATA_DIR", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture
def instance(tmp_path):
    """A real instance in tmp_path that also stores the HTTP clients' DEBUG logs in the run's event
    log (as an operator would configure ``python_logs`` to see them in the UI)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    python_logs = {"managed_python_loggers": list(MANAGED_LOGGERS), "python_log_level": "DEBUG"}
    with instance_for_test(overrides={"python_logs": python_logs}, temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def debug_logs(caplog):
    # SQL statements, not every row the instance's own storage reads (they would drown the output).
    # (set_level also sets the capture handler's level: the last call must be the DEBUG one.)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def openai_server():
    with FakeOpenAIServer(key=OPENAI_KEY) as server:
        yield server


def tmdb_bodies() -> dict[int, dict]:
    bodies = {tmdb_id: movie_body(tmdb_id) for tmdb_id in TMDB_IDS}
    for tmdb_id in TMDB_IDS[:3]:  # one series, so series_table and the check have something to do
        bodies[tmdb_id]["belongs_to_collection"] = {"id": 900, "name": "시리즈"}
    return bodies


def run(instance, selection, resources, run_config=None, raise_on_error=False, checks=()):
    return materialize([*all_assets, *checks], selection=selection, resources=resources, instance=instance,
                       run_config=run_config or {}, raise_on_error=raise_on_error)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, monkeypatch):
    """RCMD_DATABASE_URL: unset (the SQLite default: no password to leak), or PostgreSQL with a
    password, in a schema of its own dropped afterwards."""
    if request.param == "sqlite":
        yield {}
        return
    base = os.environ.get("RCMD_TEST_POSTGRES_URL", "").strip()
    if not base:
        pytest.skip("RCMD_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/test): "
                    "the database password part needs a PostgreSQL server (a SQLite URL carries no password)")
    sa = pytest.importorskip("sqlalchemy")
    admin = sa.create_engine(base)
    schema = f"rcmd_secrets_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(base).set(password=DB_PASSWORD).update_query_dict({"options": f"-csearch_path={schema}"})
    monkeypatch.setenv("RCMD_DATABASE_URL", url.render_as_string(hide_password=False))
    try:
        yield {"RCMD_DATABASE_URL password": DB_PASSWORD}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def resource_config_defaults(job_snapshot) -> dict[str, dict]:
    """Each resource's configured values as stored in a job snapshot (what the UI shows)."""
    (mode,) = job_snapshot.mode_def_snaps
    return {r.name: json.loads(r.config_field_snap.default_value_as_json_str or "null")
            for r in mode.resource_def_snaps}


# --------------------------------------------------------------------------- 1. a successful run


def test_a_full_chain_run_with_every_credential_set_shows_none_of_them(env, instance, debug_logs, capfd,
                                                                         monkeypatch, openai_server, database):
    secrets = {"TMDB_READ_ACCESS_TOKEN": TMDB_TOKEN, "TMDB_API_KEY": TMDB_KEY, "OPENAI_API_KEY": OPENAI_KEY,
               "QDRANT_API_KEY": QDRANT_KEY, **database}
    with FakeTmdbServer(tmdb_bodies(), bearer=TMDB_TOKEN) as tmdb:
        monkeypatch.setenv("TMDB_READ_ACCESS_TOKEN", TMDB_TOKEN)
        monkeypatch.setenv("TMDB_API_KEY", TMDB_KEY)  # set too: the token wins, the key is never sent
        monkeypatch.setenv("TMDB_BASE_URL", tmdb.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
        monkeypatch.setenv("QDRANT_API_KEY", QDRANT_KEY)  # no QDRANT_URL: the embedded store on tmp_path
        resources = build_resources(os.environ)
        assert isinstance(resources["vector_store"], EmbeddedQdrantStore)
        assert Path(resources["vector_store"].path).is_relative_to(env)
        result = run(instance, CHAIN, resources, checks=[movie_series_exist])
        requests = tmdb.requests()
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["tmdb_movie_info_kr"]["fetched"].value == MOVIES
    assert meta["movie_overview_embeddings"]["embedded"].value == MOVIES
    assert meta["movie_vectors"]["points"].value == MOVIES
    if database:
        assert meta["movie_table"]["database"].value.startswith("postgresql+psycopg2://postgres:***@")
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]

    # TMDB got the token in the Authorization header, never in a URL; the API key was not sent at all.
    assert len(requests) == MOVIES
    assert all(r.headers.get("authorization") == f"Bearer {TMDB_TOKEN}" for r in requests)
    assert all(r.query == {"language": "ko-KR"} and r.answer == "200" for r in requests)
    assert [r["headers"]["authorization"] for r in openai_server.requests] == [f"Bearer {OPENAI_KEY}"]

    # The DEBUG capture did see the HTTP clients (else "no secret in the logs" would prove nothing).
    logged = "\n".join(f"{r.name}: {r.getMessage()}" for r in debug_logs.records)
    assert "/3/movie/1001?language=ko-KR HTTP/1.1" in logged  # urllib3's request line: no credential in it
    assert any(r.name.startswith("openai") for r in debug_logs.records)
    assert any(r.name.startswith(("httpx", "httpcore")) for r in debug_logs.records)  # openai's HTTP client

    stored = "\n".join(r.user_message for r in instance.all_logs(result.run_id) if r.user_message)
    assert "/3/movie/1001?language=ko-KR HTTP/1.1" in stored  # library DEBUG lines reached the event log
    assert "HTTP Request: POST " in stored and "/v1/embeddings" in stored

    out, err = capfd.readouterr()
    assert "RUN_SUCCESS" in out + err  # Dagster's console log went through the captured streams
    sources = {**run_sources(instance, result.run_id), **file_sources(env), **logging_sources(debug_logs),
               **resource_sources(resources), "stdout": out, "stderr": err,
               "result events": "\n".join(map(str, result.all_events))}
    assert_no_secret(sources, secrets)

    # The stored job snapshot (what the UI shows as the resources' config) names the variables.
    run_record = instance.get_run_by_id(result.run_id)
    shown = resource_config_defaults(instance.get_job_snapshot(run_record.job_snapshot_id))
    assert shown["tmdb"]["read_access_token"] == {"env": "TMDB_READ_ACCESS_TOKEN"}
    assert shown["tmdb"]["api_key"] == {"env": "TMDB_API_KEY"}
    assert shown["embedder"]["api_key"] == {"env": "OPENAI_API_KEY"}
    if database:
        assert shown["movie_db"]["url"] == {"env": "RCMD_DATABASE_URL"}
    assert run_record.run_config == {}


def test_an_api_key_only_goes_in_the_query_string_and_is_logged_nowhere(env, instance, debug_logs, capfd,
                                                                        monkeypatch):
    """TMDB v3 takes a bare key only as ``api_key=``: the client logs paths without query strings,
    urllib3's request line is redacted, and a server message quoting the key is redacted."""
    echo = json.dumps({"success": False, "status_code": 22,
                       "status_message": f"Invalid parameters: api_key={TMDB_KEY} was given with key {TMDB_KEY}"})
    faults = {TMDB_IDS[0]: [Fault("status", status=400, body=echo.encode())]}
    with FakeTmdbServer(tmdb_bodies(), api_key=TMDB_KEY, faults=faults) as tmdb:
        monkeypatch.setenv("TMDB_API_KEY", TMDB_KEY)
        monkeypatch.setenv("TMDB_BASE_URL", tmdb.url)
        resources = build_resources(os.environ)
        assert isinstance(resources["tmdb"].api_key, EnvVar) and resources["tmdb"].read_access_token is None
        result = run(instance, ["movielens_links", "tmdb_movie_info_kr"], resources,
                     run_config={"ops": {"tmdb_movie_info_kr": {"config": {"max_failed_share": 0.5}}}})
        requests = tmdb.requests()
    assert result.success
    assert len(requests) == MOVIES
    assert all(r.query == {"language": "ko-KR", "api_key": TMDB_KEY} for r in requests)  # by TMDB's design
    assert all("authorization" not in r.headers for r in requests)

    meta = result.asset_materializations_for_node("tmdb_movie_info_kr")[0].metadata
    assert meta["failed"].value == 1 and "api_key=***" in meta["failures"].value  # the echo, redacted

    urllib3_lines = [r.getMessage() for r in debug_logs.records if r.name.startswith("urllib3")]
    assert any("/3/movie/1002?language=ko-KR&api_key=*** HTTP/1.1" in line for line in urllib3_lines)
    messages = [record.user_message for record in instance.all_logs(result.run_id) if record.user_message]
    tmdb_lines = [m for m in messages if "/3/movie" in m and "TMDB" in m]  # the client's own lines
    assert tmdb_lines and all("?" not in m and "api_key" not in m for m in tmdb_lines), tmdb_lines
    assert any(f"{tmdb.url}/3/movie/<id>" in m for m in tmdb_lines)
    assert any("/3/movie/1002?language=ko-KR&api_key=*** HTTP/1.1" in m for m in messages)  # urllib3, stored

    out, err = capfd.readouterr()
    sources = {**run_sources(instance, result.run_id), **file_sources(env), **logging_sources(debug_logs),
               **resource_sources(resources), "stdout": out, "stderr": err}
    assert_no_secret(sources, {"TMDB_API_KEY": TMDB_KEY})


def test_connection_errors_that_quote_the_url_with_the_api_key_are_redacted(env, instance, debug_logs, capfd,
                                                                             monkeypatch):
    """requests' ConnectionError text quotes the URL with its query (``...?language=ko-KR&api_key=...``)."""
    monkeypatch.setenv("TMDB_API_KEY", TMDB_KEY)
    resources = build_resources(os.environ)
    resources["tmdb"] = HttpTmdbClient(base_url="http://127.0.0.1:1", api_key=EnvVar("TMDB_API_KEY"),
                                       max_retries=0, timeout_seconds=2.0)
    result = run(instance, ["movielens_links", "tmdb_movie_info_kr"], resources)
    assert not result.success
    shown = failure_texts(instance, result.run_id)
    assert f"{MOVIES} of {MOVIES} TMDB requests failed" in shown
    failure_meta = "\n".join(str(record) for record in
                             instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE))
    assert "api_key=***" in failure_meta  # the reasons table quotes requests' message, URL redacted
    out, err = capfd.readouterr()
    sources = {**run_sources(instance, result.run_id), **file_sources(env), **logging_sources(debug_logs),
               "stdout": out, "stderr": err}
    assert_no_secret(sources, {"TMDB_API_KEY": TMDB_KEY})


# --------------------------------------------------------------------------- 2. failures


def failed_run(instance, selection, resources, expected: type[BaseException]) -> tuple[BaseException, str]:
    """Materialize with raise_on_error: the user's exception, and the run id it failed."""
    with pytest.raises(expected) as info:
        run(instance, selection, resources, raise_on_error=True)
    return info.value, only_run_id(instance)


def scan_failure(instance, run_id, exc, env_dir, caplog, capfd, secrets, resources) -> str:
    out, err = capfd.readouterr()
    sources = {**run_sources(instance, run_id), **exception_sources(exc), **file_sources(env_dir),
               **logging_sources(caplog), **resource_sources(resources), "stdout": out, "stderr": err}
    assert_no_secret(sources, secrets)
    shown = failure_texts(instance, run_id)
    assert shown, "the run has no step failure event"
    return shown


def test_a_rejected_tmdb_token_fails_the_run_without_showing_it(env, instance, debug_logs, capfd, monkeypatch):
    # TMDB's 401 body, plus the credential echoed back (a proxy might): it must be redacted.
    body = dict(INVALID_KEY_BODY, status_message=f"Invalid API key: got Bearer {TMDB_TOKEN}")
    with FakeTmdbServer(tmdb_bodies(), bearer="the-right-token",
                        default_fault=Fault("status", status=401, body=json.dumps(body).encode())) as tmdb:
        monkeypatch.setenv("TMDB_READ_ACCESS_TOKEN", TMDB_TOKEN)
        monkeypatch.setenv("TMDB_BASE_URL", tmdb.url)
        resources = build_resources(os.environ)
        exc, run_id = failed_run(instance, ["movielens_links", "tmdb_movie_info_kr"], resources, TmdbAuthError)
        requests = tmdb.requests()
    assert requests and requests[0].headers["authorization"] == f"Bearer {TMDB_TOKEN}"
    assert "TMDB_READ_ACCESS_TOKEN" in str(exc) and "HTTP 401" in str(exc)
    shown = scan_failure(instance, run_id, exc, env, debug_logs, capfd, {"TMDB_READ_ACCESS_TOKEN": TMDB_TOKEN},
                         resources)
    assert "TmdbAuthError" in shown and "Check TMDB_READ_ACCESS_TOKEN" in shown and "***" in shown


def test_a_rejected_openai_key_fails_the_run_without_showing_it(env, instance, debug_logs, capfd, monkeypatch):
    with FakeOpenAIServer(key="the-right-key") as server:  # its 401 body quotes the key presented
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        resources = build_resources(os.environ)
        exc, run_id = failed_run(instance, ["movielens_links", "tmdb_movie_info_kr", "movie_overview_embeddings"],
                                 resources, EmbedderAuthError)
    assert [r["status"] for r in server.requests] == [401]
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "OPENAI_API_KEY" in str(exc) and "HTTP 401" in str(exc)
    shown = scan_failure(instance, run_id, exc, env, debug_logs, capfd, {"OPENAI_API_KEY": OPENAI_KEY}, resources)
    assert "EmbedderAuthError" in shown and "Check OPENAI_API_KEY" in shown


def test_an_unreachable_database_names_the_variable_and_masks_the_password(env, instance, debug_logs, capfd,
                                                                           monkeypatch):
    pytest.importorskip("psycopg2")
    monkeypatch.setenv("RCMD_DATABASE_URL", f"postgresql+psycopg2://u:{DB_PASSWORD}@127.0.0.1:1/x")
    resources = build_resources(os.environ)
    exc, run_id = failed_run(instance, ["movielens_links", "tmdb_movie_info_kr", "movie_table"], resources,
                             MovieDatabaseError)
    shown = scan_failure(instance, run_id, exc, env, debug_logs, capfd, {"RCMD_DATABASE_URL password": DB_PASSWORD},
                         resources)
    for text in (str(exc), shown):
        assert "RCMD_DATABASE_URL" in text and "postgresql+psycopg2://u:***@127.0.0.1:1/x" in text


class _QdrantRejectingServer:
    """Answers every request 401 with a body that quotes the api-key header it got."""

    def __init__(self):
        self.keys: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.keys.append(self.headers.get("api-key", ""))
                data = json.dumps({"status": {"error": f"Invalid api-key: {self.headers.get('api-key')}"},
                                   "time": 0.0}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")  # qdrant-client, http://
@pytest.mark.parametrize("qdrant", ["unreachable", "rejecting"])
def test_a_qdrant_server_failure_names_the_variable_and_not_the_key(env, instance, debug_logs, capfd, monkeypatch,
                                                                   openai_server, qdrant):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("QDRANT_API_KEY", QDRANT_KEY)
    selection = ["movielens_links", "tmdb_movie_info_kr", "movie_overview_embeddings", "movie_vectors"]
    if qdrant == "unreachable":
        monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:1")
        resources = build_resources(os.environ)
        exc, run_id = failed_run(instance, selection, resources, VectorStoreConnectionError)
        assert "Cannot reach the Qdrant server at http://127.0.0.1:1 (QDRANT_URL)" in str(exc)
    else:
        with _QdrantRejectingServer() as server:
            monkeypatch.setenv("QDRANT_URL", server.url)
            resources = build_resources(os.environ)
            exc, run_id = failed_run(instance, selection, resources, VectorStoreConnectionError)
        assert server.keys and set(server.keys) == {QDRANT_KEY}  # the key was sent, as a header
        assert "(QDRANT_URL) refused the request (401): check QDRANT_API_KEY" in str(exc)
    assert isinstance(resources["vector_store"], QdrantServerStore)
    assert isinstance(resources["vector_store"].api_key, EnvVar)
    shown = scan_failure(instance, run_id, exc, env, debug_logs, capfd,
                         {"QDRANT_API_KEY": QDRANT_KEY, "OPENAI_API_KEY": OPENAI_KEY}, resources)
    assert "VectorStoreConnectionError" in shown and "QDRANT_URL" in shown


# --------------------------------------------------------------------------- 3. config as the UI shows it


def test_the_resources_config_shows_variable_names_not_values(env, monkeypatch):
    secret_url = f"postgresql+psycopg2://rcmd:{DB_PASSWORD}@db.example:5432/rcmd"
    values = {"TMDB_READ_ACCESS_TOKEN": TMDB_TOKEN, "TMDB_API_KEY": TMDB_KEY, "OPENAI_API_KEY": OPENAI_KEY,
              "QDRANT_URL": "https://qdrant.example:6333", "QDRANT_API_KEY": QDRANT_KEY,
              "RCMD_DATABASE_URL": secret_url}
    secrets = {"TMDB_READ_ACCESS_TOKEN": TMDB_TOKEN, "TMDB_API_KEY": TMDB_KEY, "OPENAI_API_KEY": OPENAI_KEY,
               "QDRANT_API_KEY": QDRANT_KEY, "RCMD_DATABASE_URL password": DB_PASSWORD}

    # A mapping other than the process environment gives literal values: still never in a repr.
    literal = build_resources({**os.environ, **values})
    assert literal["tmdb"].read_access_token == TMDB_TOKEN and literal["movie_db"].url == secret_url
    assert "postgresql+psycopg2://rcmd:***@db.example:5432/rcmd" in repr(literal["movie_db"])
    assert_no_secret(resource_sources(literal), secrets)

    # The process environment (what definitions.py uses): EnvVar everywhere a secret goes.
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    resources = build_resources(os.environ)
    assert resources["tmdb"].read_access_token == EnvVar("TMDB_READ_ACCESS_TOKEN")
    assert resources["tmdb"].api_key == EnvVar("TMDB_API_KEY")
    assert isinstance(resources["embedder"], OpenAIEmbedder)
    assert resources["embedder"].api_key == EnvVar("OPENAI_API_KEY")
    assert isinstance(resources["vector_store"], QdrantServerStore)
    assert resources["vector_store"].api_key == EnvVar("QDRANT_API_KEY")
    assert isinstance(resources["movie_db"], MovieDatabase) and resources["movie_db"].url == EnvVar("RCMD_DATABASE_URL")
    for resource in resources.values():
        for field in ("read_access_token", "api_key", "url"):
            value = getattr(resource, field, None)
            if isinstance(value, EnvVar):
                assert type(value) is EnvVar and value.env_var_name in values  # not a resolved string
    assert_no_secret(resource_sources(resources), secrets)

    job = Definitions(assets=all_assets, jobs=[rcmd_full_pipeline], resources=resources) \
        .resolve_job_def("rcmd_full_pipeline")
    snapshot = job.get_job_snapshot()
    shown = resource_config_defaults(snapshot)
    assert shown["tmdb"]["read_access_token"] == {"env": "TMDB_READ_ACCESS_TOKEN"}
    assert shown["tmdb"]["api_key"] == {"env": "TMDB_API_KEY"}
    assert shown["embedder"]["api_key"] == {"env": "OPENAI_API_KEY"}
    assert shown["vector_store"]["api_key"] == {"env": "QDRANT_API_KEY"}
    assert shown["movie_db"]["url"] == {"env": "RCMD_DATABASE_URL"}
    assert_no_secret({"job snapshot": serialize_value(snapshot),
                      "config schema snapshot": serialize_value(job.get_config_schema_snapshot()),
                      "resource config shown": json.dumps(shown)}, secrets)


URL_CREDENTIAL = "URLcred-T4yU7iO0pA3s"


@pytest.mark.parametrize("variable, url", [
    ("QDRANT_URL", f"https://admin:{URL_CREDENTIAL}@qdrant.example:6333"),  # user info (a proxy's basic auth)
    ("OPENAI_BASE_URL", f"https://gateway.example/v1?api-key={URL_CREDENTIAL}"),  # a gateway's key in the query
], ids=["QDRANT_URL", "OPENAI_BASE_URL"])
def test_credentials_inside_service_urls_are_not_shown(env, monkeypatch, variable, url):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv(variable, url)
    resources = build_resources(os.environ)
    if variable == "QDRANT_URL":  # what the project's own messages show: masked
        assert resources["vector_store"].describe() == "Qdrant server https://***@qdrant.example:6333 (QDRANT_URL)"
    else:
        assert resources["embedder"].model_id() == "openai-compatible/gateway.example/text-embedding-ada-002"
    snapshot = Definitions(assets=all_assets, jobs=[rcmd_full_pipeline], resources=resources) \
        .resolve_job_def("rcmd_full_pipeline").get_job_snapshot()
    assert_no_secret({"job snapshot": serialize_value(snapshot), **resource_sources(resources)},
                     {f"credential in {variable}": URL_CREDENTIAL})
