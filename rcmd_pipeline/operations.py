"""Running the pipeline unattended: the nightly schedule's timing and retries, rate-limit pools,
freshness policies and the run-failure alert.

- ``RCMD_NIGHTLY_CRON``: cron string of the ``nightly_reembedding`` schedule (default ``0 3 * * *``,
  in Asia/Seoul). Tests set ``* * * * *`` to see a tick within a minute.
- ``RCMD_FRESHNESS_FAIL_HOURS``: how old the last materialization of ``movie_vectors`` and
  ``strategy_leaderboard`` may be before the UI shows them as not fresh (default 26: one missed
  night plus slack).
- ``RCMD_ALERT_WEBHOOK_URL``: where a failed run is announced, as Slack-compatible JSON
  ``{"text": ...}``. Unset: the sensor only logs. The URL is a secret (Slack's contains a token).

Pools: every step that calls TMDB (``tmdb_api``) or the embedding API (``embeddings_api``) claims a
slot of a Dagster concurrency pool; ``concurrency: pools: default_limit: 1`` in ``dagster.yaml``
makes one such step run at a time across all runs, so a manual run during the nightly one does not
double the request rate.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from dagster import (
    AssetKey,
    DagsterEventType,
    DefaultSensorStatus,
    FreshnessPolicy,
    RunFailureSensorContext,
    apply_freshness_policy,
    map_asset_specs,
    run_failure_sensor,
)
from dagster._utils.schedules import is_valid_cron_string

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import REDACTED, redact

TMDB_POOL = "tmdb_api"
EMBEDDINGS_POOL = "embeddings_api"

NIGHTLY_CRON_ENV = "RCMD_NIGHTLY_CRON"
DEFAULT_NIGHTLY_CRON = "0 3 * * *"
NIGHTLY_TIMEZONE = "Asia/Seoul"
# Read by the run-retry daemon (``run_retries: enabled: true`` in dagster.yaml): a failed or killed
# nightly run is re-executed once, from the failed step, so finished steps (TMDB answers, paid-for
# embeddings, which are cached anyway) are not redone.
NIGHTLY_RUN_TAGS = {"dagster/max_retries": "1", "dagster/retry_strategy": "FROM_FAILURE"}

FRESHNESS_HOURS_ENV = "RCMD_FRESHNESS_FAIL_HOURS"
DEFAULT_FRESHNESS_HOURS = 26.0
FRESHNESS_ASSETS = (AssetKey("movie_vectors"), AssetKey("strategy_leaderboard"))

ALERT_WEBHOOK_ENV = "RCMD_ALERT_WEBHOOK_URL"
# Variables whose whole value is a credential (the webhook URL's path is Slack's token), and URL
# variables whose password or query may hold one; none of these ever leaves in an alert.
SECRET_ENVS = ("TMDB_API_KEY", "TMDB_READ_ACCESS_TOKEN", "OPENAI_API_KEY", "QDRANT_API_KEY", ALERT_WEBHOOK_ENV)
URL_ENVS = ("TMDB_BASE_URL", "OPENAI_BASE_URL", "QDRANT_URL", "RCMD_DATABASE_URL", "RCMD_DAGSTER_PG_URL")
_CREDENTIAL_IN_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
_CREDENTIAL_IN_QUERY = re.compile(r"(?i)\b(api_key|apikey|token|access_token|password|key)=[^&\s\"']+")
MAX_ERROR_LINE = 300


def nightly_cron(environ: Mapping[str, str] = os.environ) -> str:
    """The nightly schedule's cron string: ``RCMD_NIGHTLY_CRON`` or 03:00 every day."""
    value = env_text(NIGHTLY_CRON_ENV, environ)
    if not value:
        return DEFAULT_NIGHTLY_CRON
    if not is_valid_cron_string(value):
        raise ValueError(f"{NIGHTLY_CRON_ENV} must be a cron string such as '0 3 * * *', got {value!r}")
    return value


def freshness_fail_window(environ: Mapping[str, str] = os.environ) -> timedelta:
    """How old the served index and the leaderboard may get: ``RCMD_FRESHNESS_FAIL_HOURS`` (default 26)."""
    text = env_text(FRESHNESS_HOURS_ENV, environ)
    if not text:
        return timedelta(hours=DEFAULT_FRESHNESS_HOURS)
    try:
        hours = float(text)
    except ValueError:
        hours = float("nan")
    if not hours * 60 >= 1:  # also false for nan; Dagster refuses windows under a minute
        raise ValueError(f"{FRESHNESS_HOURS_ENV} must be a number of hours of at least 1/60 (e.g. 26), got {text!r}")
    return timedelta(hours=hours)


def freshness_policy(environ: Mapping[str, str] = os.environ) -> FreshnessPolicy:
    """Fail when the last materialization is older than the window, warn at three quarters of it.

    Dagster's freshness daemon (part of ``dagster-daemon run`` and ``dagster dev``) evaluates it;
    the UI shows the state on the asset page and in the asset health views."""
    fail = freshness_fail_window(environ)
    warn = fail * 0.75 if fail * 0.75 >= timedelta(minutes=1) else None
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def with_freshness_policies(assets: Sequence, environ: Mapping[str, str] = os.environ) -> list:
    """``assets`` with :func:`freshness_policy` on the served index and the leaderboard (the two
    outputs a user looks at after a night)."""
    policy = freshness_policy(environ)
    return list(map_asset_specs(
        lambda spec: apply_freshness_policy(spec, policy) if spec.key in FRESHNESS_ASSETS else spec, assets))


# --------------------------------------------------------------------------- alerting

def secrets_in_environment(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of :data:`SECRET_ENVS` and the passwords and queries of :data:`URL_ENVS` that are
    set, longest first."""
    found = set()
    for name in (*SECRET_ENVS, *URL_ENVS):
        value = env_text(name, environ)
        if not value:
            continue
        if name in SECRET_ENVS:
            found.add(value)
        try:
            parts = urlsplit(value)
            if parts.password:
                found.add(parts.password)
            if parts.query:
                found.add(parts.query)
        except ValueError:
            pass
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def scrub(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``text`` without any secret of the environment, URL credential or ``key=...`` query value."""
    text = redact(text, secrets_in_environment(environ))
    text = _CREDENTIAL_IN_URL.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _CREDENTIAL_IN_QUERY.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def _first_line(text: str) -> str:
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    return line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 1] + "…"


def failure_message(run_id: str, job_name: str, failed_steps: Sequence[tuple[str, str]], run_error: str,
                    environ: Mapping[str, str] = os.environ) -> str:
    """The alert's text: run id, job, each failed step with its error's first line, and the run's
    own failure message when given (e.g. why its worker died); never a secret."""
    lines = [f"Dagster run failed: job {job_name}, run {run_id}"]
    for step, error in failed_steps:
        lines.append(f"• step {step}: {_first_line(error) or 'no message'}")
    if run_error:
        lines.append(f"• {_first_line(run_error)}")
    elif not failed_steps:
        lines.append("• the run failed before any step failed")
    return scrub("\n".join(lines), environ)


def post_alert(url: str, text: str, timeout: float = 10.0) -> int:
    """POST Slack-compatible ``{"text": text}`` to ``url``; the HTTP status. Errors never quote the URL."""
    try:
        response = requests.post(url, json={"text": text}, timeout=timeout)
    except requests.RequestException as exc:
        raise RuntimeError(f"the alert webhook ({ALERT_WEBHOOK_ENV}) could not be reached: "
                           f"{type(exc).__name__}") from None
    if response.status_code >= 400:
        raise RuntimeError(f"the alert webhook ({ALERT_WEBHOOK_ENV}) answered HTTP {response.status_code}")
    return response.status_code


def _step_errors(context: RunFailureSensorContext) -> list[tuple[str, str]]:
    out = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        error = data.error.message if data is not None and data.error is not None else (event.message or "")
        if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
            error = data.user_failure_data.description
        out.append((event.step_key or "?", error))
    return out


def _run_error(context: RunFailureSensorContext) -> tuple[list[tuple[str, str]], str]:
    """For a run that failed outside any step (its worker killed, a timeout): the steps it left
    unfinished, and the engine's explanation (e.g. "... was terminated by signal 9 (SIGKILL)")
    instead of Dagster's generic "marked as failed from outside the execution context"."""
    run_id = context.dagster_run.run_id
    records = context.instance.all_logs(run_id)
    started, ended, explanation = [], set(), ""
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            started.append(event.step_key)
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE,
                                  DagsterEventType.STEP_SKIPPED):
            ended.add(event.step_key)
        elif event.event_type == DagsterEventType.ENGINE_EVENT and run_id in (event.message or "") \
                and ("terminated" in event.message or "exited" in event.message or "timed out" in event.message):
            explanation = event.message
    message = context.failure_event.message or ""
    if explanation:
        message = explanation
    unfinished = [(step, "interrupted, did not finish") for step in dict.fromkeys(started) if step not in ended]
    return unfinished, message


@run_failure_sensor(
    name="run_failure_alert",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Posts each failed run of this code location (run id, job, failed step, the error's first "
                f"line, never a secret) to {ALERT_WEBHOOK_ENV} as Slack-compatible JSON; only logs when unset.",
)
def run_failure_alert(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    steps = _step_errors(context)
    unfinished, run_error = _run_error(context) if not steps else ([], "")
    text = failure_message(run.run_id, run.job_name, steps or unfinished, run_error)
    url = env_text(ALERT_WEBHOOK_ENV)
    if not url:
        context.log.info(f"{ALERT_WEBHOOK_ENV} is not set, no alert sent for run {run.run_id}:\n{text}")
        return
    post_alert(url, text)
    context.log.info(f"alert sent for run {run.run_id}")
