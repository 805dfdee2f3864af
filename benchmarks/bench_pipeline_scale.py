"""The whole pipeline at MovieLens-32M scale: a cold run, an unchanged re-run, a nightly run after 1 % changed.

    python benchmarks/bench_pipeline_scale.py                      # full scale (~84k movies, 32 M ratings)
    python benchmarks/bench_pipeline_scale.py --scale 0.02         # smoke test, a couple of minutes
    python benchmarks/bench_pipeline_scale.py --csv                # read ratings.csv instead of the parquet
    python benchmarks/bench_pipeline_scale.py --runs unchanged,nightly   # reuse the last cold run's state

What it does, with one command:

1. builds or reuses the seeded data set (``make_scale_data.py``: ratings, links, movies and an
   84k-file TMDB-shaped snapshot with Korean overviews) and restores any overview changed earlier;
2. starts ``scale_embeddings_server.py`` (OpenAI-compatible, deterministic 1536-d vectors) on
   127.0.0.1 and points ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` at it; every other external system
   is the embedded default (TMDB snapshot, SQLite, the in-process Qdrant engine);
3. with a fresh ``DAGSTER_HOME`` (a copy of ``.dagster_home/dagster.yaml``) and a fresh
   ``RCMD_DATA_DIR`` under ``benchmarks/work/pipeline-scale/``, runs what a user types:
   ``cold``: ``dagster asset materialize -m rcmd_pipeline.definitions --select '*'``;
   ``unchanged``: the same command again; ``nightly``: ``--change-overviews`` of the overviews
   rewritten, then ``dagster job execute -m rcmd_pipeline.definitions -j nightly_reembedding_job``;
4. samples the dagster command's whole process tree every 0.2 s with psutil (RSS and CPU time of
   each process) and reads the run's event log from the instance afterwards: each step's
   STEP_START .. STEP_SUCCESS/FAILURE window and the pid that logged it (Dagster's multiprocess
   executor runs each step in its own process; the in-process executor logs the run's pid). A
   step's peak RSS is the largest RSS of its pid and that pid's children sampled in its window, so
   the figure is right for both executors; with the in-process executor it is the whole run
   process's RSS during the step (memory kept from earlier steps included), which is what the
   machine must have;
5. prints a table (wall time and peak RSS per step and run, the gap outside steps, texts sent to
   the embeddings server, failed checks) and writes every figure, the machine and the commands to
   ``benchmarks/work/pipeline-scale/<data set>/results-<time>.json``.

A run that fails is reported (its exit code, the failing step and the step's error, the log file),
the next runs still happen, and the benchmark exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import make_scale_data  # noqa: E402  (benchmarks/ is not a package)
from machine import print_machine  # noqa: E402

WORK = HERE / "work" / "pipeline-scale"
RUN_KINDS = ("cold", "unchanged", "nightly")
SAMPLE_SECONDS = 0.2
PSS_EVERY = 5  # PSS once a second
BENCH_KEY = "scale-bench-local-key"  # the local server accepts any non-empty key
# Targets of issue 13 (a quiet 2-core machine), printed beside the figures.
TARGETS = {"cold": 240.0, "unchanged": 60.0, "nightly": 90.0, "step_peak_mb": 2048.0, "movie_vectors_unchanged": 5.0}
# Variables that would send the pipeline to a real external system: removed from the runs' environment.
CLEARED_ENV = ("TMDB_READ_ACCESS_TOKEN", "TMDB_API_KEY", "TMDB_BASE_URL", "RCMD_TMDB_SNAPSHOT_DIR", "QDRANT_URL",
               "QDRANT_API_KEY", "RCMD_QDRANT_COLLECTION", "RCMD_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
               "RCMD_EMBEDDING_MODEL", "RCMD_EMBEDDING_DIMENSIONS", "RCMD_EMBEDDING_NAMESPACE")


# --------------------------------------------------------------------------- process-tree sampling


class TreeSampler:
    """Samples RSS and CPU time of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, root_pid: int, interval: float = SAMPLE_SECONDS):
        self.root_pid, self.interval = root_pid, interval
        # (epoch seconds, {pid: (rss bytes, cpu seconds, ppid, pss bytes or -1)}); PSS (reading smaps_rollup
        # costs more) every PSS_EVERY-th sample: RSS counts a file page mapped twice twice, PSS once
        self.samples: list[tuple[float, dict[int, tuple[int, float, int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        tick = 0
        while not self._stop.is_set():
            started = time.monotonic()
            with_pss, tick = tick % PSS_EVERY == 0, tick + 1
            snapshot: dict[int, tuple[int, float, int, int]] = {}
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    with p.oneshot():
                        cpu = p.cpu_times()
                        pss = p.memory_full_info().pss if with_pss else -1
                        snapshot[p.pid] = (p.memory_info().rss, cpu.user + cpu.system, p.ppid(), pss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if snapshot:
                self.samples.append((time.time(), snapshot))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def window(self, start: float, end: float, pid: int | None) -> dict:
        """Peak RSS (MB), RSS at the start (MB) and CPU seconds of ``pid`` and its descendants (all when
        None) in [start, end]."""
        peak, peak_pss, first, n = 0, 0, None, 0
        # CPU per process: its last sampled CPU time less what it had at the window's first sample (0 for
        # a process that started later), summed; so processes that start and end inside the window (a
        # process per step) count too. What a process spends after its last sample (< 0.2 s) is missed.
        cpu_base: dict[int, float] = {}
        cpu_last: dict[int, float] = {}
        for t, snap in self.samples:
            if t < start - self.interval or t > end + self.interval:
                continue
            pids = set(snap) if pid is None else _with_descendants(pid, snap)
            if not pids:
                continue
            n += 1
            rss = sum(snap[p][0] for p in pids)
            peak = max(peak, rss)
            if all(snap[p][3] >= 0 for p in pids):
                peak_pss = max(peak_pss, sum(snap[p][3] for p in pids))
            for p in pids:
                cpu_base.setdefault(p, snap[p][1] if first is None else 0.0)
                cpu_last[p] = snap[p][1]
            first = rss if first is None else first
        cpu = sum(cpu_last[p] - cpu_base[p] for p in cpu_last)
        return {"peak_rss_mb": round(peak / 2**20, 1) if n else None,
                "peak_pss_mb": round(peak_pss / 2**20, 1) if peak_pss else None,
                "start_rss_mb": round(first / 2**20, 1) if n else None,
                "cpu_s": round(cpu, 2) if n > 1 else None, "samples": n}


def _with_descendants(pid: int, snap: dict[int, tuple[int, float, int, int]]) -> set[int]:
    if pid not in snap:
        return set()
    out, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (_, _, ppid, _) in snap.items():
            if ppid == parent and child not in out:
                out.add(child)
                frontier.append(child)
    return out


# --------------------------------------------------------------------------- the embeddings server


@dataclass
class Server:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(dimension: int, state: Path) -> Server:
    """Start the server, on the port of the previous invocation on this state when it is free.

    The embedding cache of an OpenAI-compatible server is keyed (today) by its host and port, so
    the same port keeps an ``--runs unchanged`` invocation from re-embedding everything.
    """
    port_file = state / "embeddings_server.port"
    wanted = int(port_file.read_text()) if port_file.exists() else 0
    for port in ([wanted, 0] if wanted else [0]):
        ready = state / f".server-port.{os.getpid()}"
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(HERE / "scale_embeddings_server.py"), "--port", str(port),
                                 "--dimension", str(dimension), "--port-file", str(ready)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ready.exists() and proc.poll() is None:
            time.sleep(0.05)
        if ready.exists():
            got = int(ready.read_text())
            ready.unlink()
            if wanted and got != wanted:
                print(f"note: port {wanted} of the previous invocation is taken; the embedding cache key changes "
                      "with the port, so the next run may re-embed every overview", flush=True)
            port_file.write_text(str(got))
            return Server(proc, got)
        err = proc.stderr.read() if proc.poll() is not None else ""
        proc.kill()
        proc.wait()
        if port == 0:
            raise SystemExit(f"the embeddings server did not start: {err.strip()[-500:]}")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- one dagster run


@dataclass
class RunResult:
    kind: str
    repeat: int
    command: list[str]
    exit_code: int | None = None
    command_wall_s: float = 0.0
    timed_out: bool = False
    run_id: str | None = None
    run_status: str | None = None
    run_wall_s: float | None = None
    run_pid: int | None = None
    steps: list[dict] = field(default_factory=list)
    outside_steps_s: float | None = None
    tree_peak_rss_mb: float | None = None
    tree_cpu_s: float | None = None
    texts_embedded: int | None = None
    embedding_requests: int | None = None
    overviews_changed: int | None = None
    failed_checks: list[dict] = field(default_factory=list)
    asset_metadata: dict = field(default_factory=dict)
    failure: str | None = None
    run_errors: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.run_status in (None, "SUCCESS")


def _numeric_metadata(metadata: dict) -> dict:
    out = {}
    for key, value in (metadata or {}).items():
        raw = getattr(value, "value", value)
        if isinstance(raw, bool) or isinstance(raw, (int, float)):
            out[key] = raw
        elif isinstance(raw, str) and len(raw) <= 120:
            out[key] = raw
    return out


def _error_text(error) -> str:
    """``Class: message`` of a SerializableErrorInfo and of its causes, one per line (no stacks)."""
    parts, seen = [], 0
    while error is not None and seen < 5:
        message = " ".join((error.message or "").split())
        parts.append(message if message.startswith(error.cls_name or "") else f"{error.cls_name}: {message}")
        error, seen = error.cause or getattr(error, "context", None), seen + 1
    return "\n  caused by ".join(parts)[:3000]


def read_run(home: Path, result: RunResult, sampler: TreeSampler, since: float) -> None:
    """Fill ``result`` from the run the command created (the newest, created after ``since``) and the tree."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(limit=1)
        if not records or records[0].create_timestamp.timestamp() < since - 1:
            result.failure = "the command recorded no run in DAGSTER_HOME (it failed before starting one)"
            return
        run = records[0].dagster_run
        result.run_id, result.run_status = run.run_id, run.status.value
        logs = instance.all_logs(run.run_id)
    steps: dict[str, dict] = {}
    run_start = run_end = None
    for entry in logs:
        event = entry.dagster_event
        if event is None:
            continue
        kind, ts, key = event.event_type, entry.timestamp, entry.step_key
        if kind == DagsterEventType.RUN_START:
            run_start, result.run_pid = ts, event.pid
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED):
            run_end = ts
            if kind == DagsterEventType.RUN_FAILURE:
                result.run_errors.append(entry.user_message or event.message or "run failed")
        elif kind == DagsterEventType.ENGINE_EVENT:
            data = event.event_specific_data
            error = getattr(data, "error", None) or entry.error_info
            if error is not None:  # e.g. a step process that died before it could log STEP_START
                result.run_errors.append(_error_text(error))
        elif key and kind == DagsterEventType.STEP_WORKER_STARTING:
            steps.setdefault(key, {"step": key})["worker_starting"] = ts
        elif key and kind == DagsterEventType.STEP_START:
            step = steps.setdefault(key, {"step": key})
            step["start"], step["pid"] = ts, event.pid
        elif key and kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step = steps.setdefault(key, {"step": key})
            step["end"] = ts
            step["status"] = "success" if kind == DagsterEventType.STEP_SUCCESS else "failure"
            if kind == DagsterEventType.STEP_FAILURE:
                error = getattr(event.event_specific_data, "error", None)
                step["error"] = _error_text(error) if error else (entry.user_message or "")[:2000]
        elif key and kind == DagsterEventType.STEP_SKIPPED:
            steps.setdefault(key, {"step": key})["status"] = "skipped"
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization
            result.asset_metadata[mat.asset_key.to_user_string()] = _numeric_metadata(mat.metadata)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                result.failed_checks.append({
                    "asset": evaluation.asset_key.to_user_string(), "check": evaluation.check_name,
                    "severity": getattr(evaluation.severity, "value", str(evaluation.severity)),
                    "description": (evaluation.description or "")[:300]})
    if run_start is not None and run_end is not None:
        result.run_wall_s = round(run_end - run_start, 2)
    windows = []
    for step in sorted(steps.values(), key=lambda s: s.get("start", s.get("worker_starting", 0))):
        start, end = step.get("start"), step.get("end")
        if start is not None and end is not None:
            step["wall_s"] = round(end - start, 2)
            step.update(sampler.window(start, end, step.get("pid")))
            step["in_run_process"] = step.get("pid") == result.run_pid
            if step.get("peak_rss_mb") is not None:  # what the step added on top of what its process held
                step["rss_growth_mb"] = round(step["peak_rss_mb"] - step["start_rss_mb"], 1)
            windows.append((start, end))
        if step.get("worker_starting") is not None and start is not None:
            step["process_start_s"] = round(start - step["worker_starting"], 2)
        result.steps.append(step)
    if run_start is not None and run_end is not None:
        covered, last = 0.0, run_start
        for s, e in sorted(windows):  # union of the step windows
            s, e = max(s, last), max(e, last)
            covered += e - s
            last = e
        result.outside_steps_s = round((run_end - run_start) - covered, 2)
    for step in result.steps:
        if "start" not in step and step.get("worker_starting") is not None:
            step["status"] = "died before it started"
    failed = [s for s in result.steps if s.get("status") == "failure"]
    problems = [f"step {s['step']} failed: {s.get('error') or '?'}" for s in failed]
    problems += [f"step {s['step']} {s['status']}" for s in result.steps if s.get("status") == "died before it started"]
    if result.run_status == "FAILURE" and result.run_errors:
        problems += [f"run error: {e}" for e in result.run_errors[-3:]]
    if problems:
        result.failure = "\n    ".join(problems)


def run_dagster(kind: str, repeat: int, command: list[str], env: dict, home: Path, log_path: Path,
                server: Server, timeout: float) -> RunResult:
    result = RunResult(kind=kind, repeat=repeat, command=command, log=str(log_path))
    before = server.stats()
    started = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with TreeSampler(proc.pid) as sampler:
            try:
                result.exit_code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                result.timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the process group we started, nothing else
                result.exit_code = proc.wait()
    result.command_wall_s = round(time.time() - started, 2)
    whole = sampler.window(started, started + result.command_wall_s, None)
    result.tree_peak_rss_mb, result.tree_cpu_s = whole["peak_rss_mb"], whole["cpu_s"]
    after = server.stats()
    result.texts_embedded = after["inputs"] - before["inputs"]
    result.embedding_requests = after["requests"] - before["requests"]
    try:
        read_run(home, result, sampler, started)
    except Exception as exc:  # the figures of a broken instance are lost, not the benchmark
        result.failure = (result.failure or "") + f" (reading the event log failed: {type(exc).__name__}: {exc})"
    if result.timed_out:
        result.failure = f"timed out after {timeout:.0f} s and was killed; " + (result.failure or "")
    elif result.exit_code != 0 and (not result.failure or result.run_id is None):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        result.failure = (result.failure + "; " if result.failure else "") + \
            f"exit code {result.exit_code}; log tail: " + " | ".join(tail)
    return result


# --------------------------------------------------------------------------- reporting


def _cell(values: list[float | None], fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    return format(statistics.median(vals), fmt)


def print_table(results: list[RunResult], kinds: list[str]) -> str:
    """A markdown table: per step, wall s and peak RSS MB for each run kind (median over repeats)."""
    by_kind = {k: [r for r in results if r.kind == k] for k in kinds}
    order: list[str] = []
    for r in results:
        for s in r.steps:
            if s["step"] not in order:
                order.append(s["step"])
    head = "| step | " + " | ".join(f"{k} s | {k} MB" for k in kinds) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(kinds)]

    def row(label: str, get_s, get_mb, get_growth=lambda r: None) -> None:
        cells = []
        for k in kinds:
            rs = by_kind[k]
            mb = _cell([get_mb(r) for r in rs], ",.0f")
            growth = _cell([get_growth(r) for r in rs], "+,.0f")
            cells += [_cell([get_s(r) for r in rs], ".1f"), mb if growth == "—" else f"{mb} ({growth})"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def step_of(r: RunResult, name: str) -> dict:
        return next((s for s in r.steps if s["step"] == name), {})

    row("**command (what a user waits)**", lambda r: r.command_wall_s, lambda r: r.tree_peak_rss_mb)
    row("CPU s of the whole tree (s column)", lambda r: r.tree_cpu_s, lambda r: None)
    row("run (RUN_START → end)", lambda r: r.run_wall_s, lambda r: None)
    row("outside steps (process starts, gaps)", lambda r: r.outside_steps_s, lambda r: None)
    for name in order:
        row(f"`{name}`", lambda r, n=name: step_of(r, n).get("wall_s"),
            lambda r, n=name: step_of(r, n).get("peak_rss_mb"),
            lambda r, n=name: step_of(r, n).get("rss_growth_mb") if step_of(r, n).get("in_run_process") else None)
    text = "\n".join(lines)
    print(text)
    print("(MB: peak RSS of the step's process; for a step run inside the run's process (in-process executor) the "
          "growth over its window follows in parentheses, since the peak includes what earlier steps left.)")
    for k in kinds:
        for r in by_kind[k]:
            status = "ok" if r.ok else f"FAILED:\n    {r.failure}\n "
            timed = [s for s in r.steps if "wall_s" in s]
            own = sum(1 for s in timed if not s.get("in_run_process"))
            starts = [s["process_start_s"] for s in timed if "process_start_s" in s]
            where = (f"{own} of {len(timed)} steps in a process of their own"
                     + (f" (median {statistics.median(starts):.1f} s from launch to STEP_START)" if starts else ""))
            print(f"{k} #{r.repeat}: {status}; {where}; {r.texts_embedded} texts in {r.embedding_requests} "
                  "embedding requests"
                  + (f"; {r.overviews_changed} overviews changed before it" if r.overviews_changed is not None else "")
                  + (f"; failed checks: {', '.join(c['check'] for c in r.failed_checks)}" if r.failed_checks else "")
                  + f"; log {r.log}")
    return text


def print_targets(results: list[RunResult]) -> None:
    print("\nTargets of issue 13 (quiet 2-core machine):")
    for kind in RUN_KINDS:
        walls = [r.command_wall_s for r in results if r.kind == kind and r.ok]
        if walls:
            m = statistics.median(walls)
            verdict = "met" if m <= TARGETS[kind] else "NOT met"
            print(f"  {kind:<10} {m:7.1f} s   target ≤ {TARGETS[kind]:.0f} s   {verdict}")
    peaks = [(s.get("peak_rss_mb") or 0, s["step"], r.kind) for r in results for s in r.steps]
    if peaks:
        mb, step, kind = max(peaks)
        print(f"  largest step peak RSS {mb:,.0f} MB ({step}, {kind})   target ≤ {TARGETS['step_peak_mb']:,.0f} MB   "
              f"{'met' if mb <= TARGETS['step_peak_mb'] else 'NOT met'}")
        pss = [(s.get("peak_pss_mb") or 0, s["step"], r.kind) for r in results for s in r.steps]
        mb, step, kind = max(pss)
        print(f"  largest step peak PSS {mb:,.0f} MB ({step}, {kind}; sampled once a second: a file page "
              "mapped twice counts once)")
    mv = [s.get("wall_s") for r in results if r.kind == "unchanged" for s in r.steps if s["step"] == "movie_vectors"]
    mv = [v for v in mv if v is not None]
    if mv:
        m = statistics.median(mv)
        print(f"  movie_vectors unchanged {m:.1f} s   target ≤ {TARGETS['movie_vectors_unchanged']:.0f} s   "
              f"{'met' if m <= TARGETS['movie_vectors_unchanged'] else 'NOT met'}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="share of MovieLens 32M (default 1; 0.02 for a smoke test)")
    ap.add_argument("--csv", action="store_true", help="read the ratings from ratings.csv instead of ratings.parquet")
    ap.add_argument("--runs", default=",".join(RUN_KINDS),
                    help="which runs, in order, from cold,unchanged,nightly (default all three); without cold the "
                    "state of the previous invocation is reused")
    ap.add_argument("--skip-cold", action="store_true", help="same as leaving cold out of --runs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="repeat the sequence N times; each repeat with cold starts from fresh state (median shown)")
    ap.add_argument("--dimension", type=int, default=1536, help="vector size of the embeddings server (default 1536)")
    ap.add_argument("--change-overviews", type=float, default=0.01, metavar="SHARE",
                    help="share of overviews rewritten before the nightly run (default 0.01)")
    ap.add_argument("--nightly-job", default="nightly_reembedding_job", help="the job the nightly run executes")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (default 3600)")
    ap.add_argument("--json", type=Path,
                    help="results file (default benchmarks/work/pipeline-scale/<data>/results-<time>.json)")
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    if args.skip_cold:
        kinds = [k for k in kinds if k != "cold"]
    unknown = [k for k in kinds if k not in RUN_KINDS]
    if unknown or not kinds:
        ap.error(f"--runs takes cold, unchanged, nightly; got {args.runs!r}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    machine = print_machine()
    out = make_scale_data.default_out(args.scale)
    t0 = time.perf_counter()
    folders = make_scale_data.ensure_dataset(out, args.scale, with_csv=args.csv)
    dataset = folders["csv" if args.csv else "parquet"]
    print(f"data set {dataset} ready in {time.perf_counter() - t0:.1f} s", flush=True)

    label = dataset.name
    base = WORK / label
    state = base / "state"
    home, data_dir, logs = state / "dagster_home", state / "data", state / "logs"
    if "cold" not in kinds and not (home / "dagster.yaml").exists():
        raise SystemExit(f"no state from an earlier cold run in {state}: include cold in --runs")
    state.mkdir(parents=True, exist_ok=True)

    dagster = str(Path(sys.executable).with_name("dagster"))
    commands = {
        "cold": [dagster, "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "*"],
        "unchanged": [dagster, "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "*"],
        "nightly": [dagster, "job", "execute", "-m", "rcmd_pipeline.definitions", "-j", args.nightly_job],
    }
    server = start_server(args.dimension, state)
    print(f"embeddings server {server.url} ({args.dimension}-d), pid {server.proc.pid}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update({"DAGSTER_HOME": str(home), "RCMD_DATA_DIR": str(data_dir), "RCMD_DATASET_PATH": str(dataset),
                "OPENAI_API_KEY": BENCH_KEY, "OPENAI_BASE_URL": server.url, "PYTHONUNBUFFERED": "1"})
    shown_env = {k: env[k] for k in ("DAGSTER_HOME", "RCMD_DATA_DIR", "RCMD_DATASET_PATH", "OPENAI_BASE_URL")}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or base / f"results-{stamp}.json"
    results: list[RunResult] = []
    try:
        for repeat in range(1, args.repeat + 1):
            for kind in kinds:
                changed = None
                if kind == "cold":
                    for folder in (home, data_dir):
                        shutil.rmtree(folder, ignore_errors=True)
                    home.mkdir(parents=True)
                    data_dir.mkdir(parents=True)
                    shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
                    make_scale_data.reset_overviews(out)
                elif kind == "nightly":
                    changed = make_scale_data.change_overviews(out, args.change_overviews)
                logs.mkdir(parents=True, exist_ok=True)
                log_path = logs / f"{stamp}-{repeat}-{kind}.log"
                print(f"\n=== {kind} run #{repeat}: {' '.join(commands[kind][1:])}", flush=True)
                result = run_dagster(kind, repeat, commands[kind], env, home, log_path, server, args.timeout)
                result.overviews_changed = changed
                results.append(result)
                print(f"=== {kind} #{repeat}: exit {result.exit_code}, {result.command_wall_s:.1f} s, "
                      f"run {result.run_status}, {result.texts_embedded} texts embedded"
                      + (f"; FAILED: {result.failure}" if not result.ok else ""), flush=True)
    finally:
        server.stop()
        record = {"machine": machine, "scale": args.scale, "dataset": str(dataset), "csv": args.csv,
                  "dimension": args.dimension, "runs": kinds, "repeat": args.repeat,
                  "change_overviews": args.change_overviews, "environment": shown_env,
                  "commands": {k: " ".join(v[1:]) for k, v in commands.items() if k in kinds},
                  "dagster_yaml": (ROOT / ".dagster_home" / "dagster.yaml").read_text(),
                  "started_utc": stamp, "results": [r.__dict__ for r in results]}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str))

    print(f"\nWall time (s) and peak RSS (MB) per step, {label}, scale {args.scale:g}"
          + (f", median of {args.repeat}" if args.repeat > 1 else "") + ":\n")
    print_table(results, kinds)
    print_targets(results)
    print(f"\nresults: {json_path}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} runs FAILED: "
              + "; ".join(f"{r.kind} #{r.repeat} (exit {r.exit_code}): {r.failure}" for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
