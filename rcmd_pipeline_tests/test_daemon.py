"""The project under a real ``dagster-daemon run``, as in production (see README: Operations).

Each test makes a throw-away ``DAGSTER_HOME`` holding a copy of the project's ``.dagster_home/dagster.yaml``
(so the settings under test are the shipped ones), a small synthetic data set, and an OpenAI-compatible
embeddings server on 127.0.0.1 whose answers the test can hold back. The daemon runs from the project
root (the code location ``rcmd_pipeline`` of ``pyproject.toml``) in its own process group, killed whole at the end.

1. The nightly schedule fires: with ``RCMD_NIGHTLY_CRON='* * * * *'`` and the schedule turned on, a tick
   launches ``nightly_reembedding_job``, which succeeds and re-embeds only the overview that changed.
2. A run whose worker is SIGKILLed mid-embedding is marked failed within seconds, the failure alert is
   posted to a local webhook, the daemon retries it once from the failed step (after run monitoring
   frees the pool slot the dead run held), and no text embedded before the kill is embedded again.
3. Freshness: the daemon's freshness evaluation marks ``strategy_leaderboard`` failed when its last
   materialization is older than ``RCMD_FRESHNESS_FAIL_HOURS`` and ``movie_vectors`` passing when recent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    EventLogEntry,
    RunsFilter,
)
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.events import StepMaterializationData

from rcmd_pipeline import operations
from rcmd_pipeline_tests.daemon_helpers import (
    IN_PROCESS,
    SMALL_EVAL,
    Daemon,
    GatedEmbeddingsServer,
    WebhookReceiver,
    cli,
    make_home,
    materialize,
    project_env,
    wait_until,
)
from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset

pytestmark = pytest.mark.slow

SCHEDULE = "nightly_reembedding"
JOB = "nightly_reembedding_job"
EMBEDDINGS = AssetKey("movie_overview_embeddings")
WITH_OVERVIEW = 10  # helpers.write_dataset's small data set: movies 1-12, movies 5 and 10 without an overview


def _setup(tmp_path: Path, server: GatedEmbeddingsServer, **extra: str):
    dataset = write_dataset(tmp_path / "movielens", synthetic_ratings())
    home = make_home(tmp_path / "dagster_home")
    env = project_env(home, dataset, tmp_path / "state", OPENAI_API_KEY="sk-test-not-a-real-key",
                      OPENAI_BASE_URL=server.url, RCMD_EMBEDDING_MODEL="fake-embedding-a", **extra)
    return dataset, home, env


def _runs(home: Path, **filters) -> list:
    with DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs(filters=RunsFilter(**filters) if filters else None))


def _status(home: Path, run_id: str) -> DagsterRunStatus | None:
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        return run.status if run else None


def _events(home: Path, run_id: str, event_type: DagsterEventType | None = None) -> list:
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.all_logs(run_id, of_type=event_type) if event_type else instance.all_logs(run_id)
    return list(records)


def _finished(home: Path, run_id: str):
    status = _status(home, run_id)
    return status if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                DagsterRunStatus.CANCELED) else None


def _started_steps(home: Path, run_id: str) -> set[str]:
    return {e.step_key for e in _events(home, run_id, DagsterEventType.STEP_START)}


def test_schedule_tick_launches_the_nightly_job_which_re_embeds_only_what_changed(tmp_path):
    with GatedEmbeddingsServer() as server:
        dataset, home, env = _setup(tmp_path, server, RCMD_NIGHTLY_CRON="* * * * *")
        materialize(env, "*", {"ops": SMALL_EVAL})
        assert len(set(server.answered_inputs())) == WITH_OVERVIEW

        snapshot = dataset / "tmdb" / "ko-KR" / "1001.json"
        body = json.loads(snapshot.read_text(encoding="utf-8"))
        body["overview"] = "새로 고쳐 쓴 줄거리: 장난감들이 다시 모험을 떠난다"
        snapshot.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        before = time.time()

        # How an operator turns it on (README): the CLI from the project root, against the same DAGSTER_HOME.
        # No `-m`: schedule state is keyed by code location, and the daemon, `dagster dev` and `dg dev`
        # all load the location "rcmd_pipeline" from pyproject.toml (with `-m` it would be another one).
        cli(["dagster", "schedule", "start", SCHEDULE], env)
        with Daemon(env, tmp_path / "daemon.log") as daemon:
            # the first tick is at the next minute boundary, then the run (one process per step) starts
            runs = wait_until(lambda: _runs(home, tags={"dagster/schedule_name": SCHEDULE}), 150,
                              "the schedule's tick to launch a run", interval=2, on_timeout=daemon.log_tail)
            run = runs[-1]
            with DagsterInstance.from_config(str(home)) as instance:  # one tick, one run: turn it off now
                state = next(s for s in instance.all_instigator_state() if s.instigator_name == SCHEDULE)
                instance.update_instigator_state(state.with_status(type(state.status).STOPPED))
            assert run.job_name == JOB
            status = wait_until(lambda: _finished(home, run.run_id), 300, f"run {run.run_id} to finish",
                                interval=2, on_timeout=daemon.log_tail)
            assert status == DagsterRunStatus.SUCCESS, daemon.log_tail()

            with DagsterInstance.from_config(str(home)) as instance:
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
                event = instance.get_latest_materialization_event(EMBEDDINGS)
            assert any(run.run_id in tick.run_ids for tick in ticks), ticks
            assert event.run_id == run.run_id
            metadata = event.asset_materialization.metadata
            assert metadata["embedded"].value == 1
            assert metadata["reused"].value == WITH_OVERVIEW - 1
            assert [t for t in server.answered_inputs(after=before)] == [
                t for t in server.answered_inputs(after=before) if "새로 고쳐 쓴 줄거리" in t]
            assert len(server.answered_inputs(after=before)) == 1
            assert {"tmdb_movie_info_kr", "movie_vectors", "strategy_leaderboard"} <= _started_steps(home, run.run_id)


def test_killed_run_is_marked_failed_alerted_and_retried_from_failure_without_losing_embeddings(tmp_path):
    with GatedEmbeddingsServer() as server, WebhookReceiver() as webhook:
        _, home, env = _setup(tmp_path, server)
        materialize(env, "*", {"ops": SMALL_EVAL})
        state = tmp_path / "state"

        # Another model id: every text is embedded again, one request per text, so the step is slow
        # enough to be killed midway; the server answers the first three and holds the fourth.
        env.update(RCMD_EMBEDDING_MODEL="fake-embedding-b", RCMD_ALERT_WEBHOOK_URL=webhook.url)
        server.allow(3)
        with Daemon(env, tmp_path / "daemon.log") as daemon:
            config = {**IN_PROCESS, "ops": {"movie_overview_embeddings": {"config": {"chunk_size": 1}}}}
            launched = time.time()
            cli(["dagster", "job", "launch", "-j", JOB, "--config-json", json.dumps(config)], env)
            run = wait_until(lambda: _runs(home, job_name=JOB), 30, "the launched run")[0]
            wait_until(lambda: server.waiting() >= 1, 240, "the fourth embedding request",
                       on_timeout=daemon.log_tail)
            embedded_before_kill = server.answered_inputs(after=launched)
            assert len(embedded_before_kill) == 3

            # The run worker executes every step in-process: its pid is on each step's events.
            step_start = next(e for e in _events(home, run.run_id, DagsterEventType.STEP_START)
                              if e.step_key == "movie_overview_embeddings")
            worker = step_start.dagster_event.pid
            assert worker and worker != os.getpid()
            os.kill(worker, signal.SIGKILL)
            killed_at = time.monotonic()
            assert wait_until(lambda: _finished(home, run.run_id), 60, "the killed run to be marked failed",
                              on_timeout=daemon.log_tail) == DagsterRunStatus.FAILURE
            detected_after = time.monotonic() - killed_at
            engine = [e.message or "" for e in _events(home, run.run_id, DagsterEventType.ENGINE_EVENT)]
            assert any("terminated by signal 9" in m for m in engine), engine[-5:]

            server.open()
            retries = wait_until(lambda: _runs(home, tags={"dagster/parent_run_id": run.run_id}), 120,
                                 "the daemon's retry run", interval=2, on_timeout=daemon.log_tail)
            retry = retries[0]
            assert retry.tags.get("dagster/retry_number") == "1"
            assert wait_until(lambda: _finished(home, retry.run_id), 300, f"retry run {retry.run_id}",
                              interval=2, on_timeout=daemon.log_tail) == DagsterRunStatus.SUCCESS

            # From failure: TMDB (finished before the kill) is not fetched again, the embeddings step is re-run.
            retried_steps = _started_steps(home, retry.run_id)
            assert "tmdb_movie_info_kr" not in retried_steps
            assert "movie_overview_embeddings" in retried_steps
            # Nothing paid for is lost: the three texts embedded before the kill are never sent again.
            after_kill = server.answered_inputs(after=launched)[3:]
            assert not set(after_kill) & set(embedded_before_kill)
            assert len(set(embedded_before_kill) | set(after_kill)) == WITH_OVERVIEW
            with DagsterInstance.from_config(str(home)) as instance:
                event = instance.get_latest_materialization_event(EMBEDDINGS)
            assert event.run_id == retry.run_id
            assert event.asset_materialization.metadata["embedded"].value == WITH_OVERVIEW - 3
            assert state.joinpath("embedding_cache").is_dir()

            # The failure sensor (on by default under the daemon) posted the alert, without the API key.
            alert = wait_until(lambda: [b for b in webhook.bodies if run.run_id in b.get("text", "")], 90,
                               "the failure alert", on_timeout=daemon.log_tail)[0]
            assert JOB in alert["text"] and "terminated by signal 9" in alert["text"], alert
            assert "step movie_overview_embeddings: interrupted" in alert["text"], alert
            assert "sk-test-not-a-real-key" not in json.dumps(webhook.bodies)
            assert webhook.url.split("/services/")[1] not in json.dumps(webhook.bodies)
    print(f"killed run detected as failed after {detected_after:.1f} s")


def test_freshness_policy_fails_a_stale_leaderboard_and_passes_fresh_vectors(tmp_path):
    home = make_home(tmp_path / "dagster_home")
    dataset = write_dataset(tmp_path / "movielens", synthetic_ratings())
    env = project_env(home, dataset, tmp_path / "state", FRESHNESS_DAEMON_INTERVAL_SECONDS="2")
    hours = operations.freshness_fail_window().total_seconds() / 3600
    assert hours == 26
    now = time.time()
    with DagsterInstance.from_config(str(home)) as instance:
        for key, age_hours in ((AssetKey("strategy_leaderboard"), hours + 1), (AssetKey("movie_vectors"), 1)):
            event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "__ASSET_JOB",
                                 event_specific_data=StepMaterializationData(AssetMaterialization(key)))
            instance.store_event(EventLogEntry(error_info=None, level="INFO", user_message="", run_id="",
                                               timestamp=now - age_hours * 3600, dagster_event=event))

    keys = [AssetKey("strategy_leaderboard"), AssetKey("movie_vectors")]

    def states():
        with DagsterInstance.from_config(str(home)) as instance:
            found = instance.get_freshness_state_records(keys)
        return {k.to_user_string(): r for k, r in found.items()} if len(found) == len(keys) else None

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        found = wait_until(states, 120, "the freshness daemon's evaluation", interval=1, on_timeout=daemon.log_tail)
    assert found["strategy_leaderboard"].freshness_state == FreshnessState.FAIL
    assert found["movie_vectors"].freshness_state == FreshnessState.PASS
