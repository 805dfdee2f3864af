"""Killing a CLI run at a chosen moment, and cleaning up after it as the daemon would (fault tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter


def kill_when(proc: subprocess.Popen, reached: Callable[[], object], timeout: float = 120,
              poll: float = 0.002) -> None:
    """SIGKILL the run's whole process group as soon as ``reached()`` is true (or leave it to end)."""
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if reached():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(poll)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fail_killed_runs(home: Path) -> None:
    """What the daemon's run monitoring does for a run whose worker died (``test_daemon.py`` shows it
    with a real daemon; none runs in these tests): mark the run failed and free the concurrency-pool
    slots its steps held, so the next run's TMDB and embedding steps are not left waiting for them."""
    with DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
            instance.report_run_failed(run, "run worker killed (SIGKILL)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
