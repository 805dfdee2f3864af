"""Benchmark: reading MovieLens-32M-sized ratings, as ``ratings.csv`` and ``ratings.parquet``.

    python benchmarks/bench_movielens_read.py [--data benchmarks/work/ml32m] [--repeat 3]
                                              [--cases csv,parquet,asset-csv,asset-parquet] [--json PATH]

Target (issue 13, item 5): every step under 2 GB peak RSS at this scale, ``ratings.csv`` included.

Inputs: ``<data>/ratings.parquet`` from ``make_ml32m_like.py`` (generated when missing: 32,000,204
ratings) and, beside it, ``<data>-csv/`` with the same ratings written as MovieLens writes them
(``ratings.csv``: ``userId,movieId,rating,timestamp`` with ratings like ``4.0``, about 0.8 GB),
plus a minimal ``links.csv`` and ``movies.csv`` naming every movie. Both are reused when present.

Cases, each run ``--repeat`` times in a fresh process, with the file read once beforehand so that
every run finds it in the OS page cache:

* ``csv`` / ``parquet``: ``rcmd_pipeline.resources.movielens.read_ratings(folder)`` in a child
  Python process; time is the call alone (imports excluded), peak RSS the process's ``ru_maxrss``.
* ``asset-csv`` / ``asset-parquet``: ``dagster asset materialize -m rcmd_pipeline.definitions
  --select movielens_ratings`` with ``RCMD_DATASET_PATH`` on that folder and a fresh temporary
  ``DAGSTER_HOME`` and ``RCMD_DATA_DIR`` per run (so the asset always reads: nothing to keep).
  Time is the whole command and, separately, the step as Dagster logs it; peak RSS is the largest
  single process of the command's tree (``wait4``'s ``ru_maxrss``, i.e. what ``/usr/bin/time -v``
  reports), which is the step's process; the tree's summed RSS is sampled with psutil as well.
* ``rerun-csv``: the same command a second time on the same instance and data folder, the file
  unchanged: the asset should keep its stored value without reading 32 M ratings (``kept``).

Each case prints the median of its runs. ``--compare TREE`` measures another project tree too
(e.g. the commit before, ``git archive <commit> | tar -x -C /tmp/before``), alternating runs, so
that a busy machine slows both alike.

Measured with ``--repeat 3 --compare`` (the tree before the streaming reader) on 2 cores, with other
jobs running (load average 10-15, so the seconds are inflated and only comparable pairwise),
32,000,204 ratings, ratings.csv 808 MB; peak RSS is stable from run to run:

| case | before: median time, peak RSS | after: median time, peak RSS |
|---|---|---|
| csv (read_ratings) | 61.9 s, 2,193 MB | 66.4 s, 1,237 MB |
| parquet (read_ratings) | 23.5 s, 1,416 MB | 14.4 s, 959 MB |
| asset-csv (step) | 38.2 s, 2,242 MB | 34.2 s, 1,292 MB |
| asset-parquet (step) | 18.4 s, 1,467 MB | 13.7 s, 1,025 MB |
| rerun-csv (step) | 27.1 s, 2,241 MB (read again) | 0.3 s, 246 MB (kept) |
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import print_machine

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "benchmarks" / "work" / "ml32m"
CASES = ("csv", "parquet", "asset-csv", "asset-parquet", "rerun-csv")
LIMIT_MB = 2048


# --------------------------------------------------------------------------- inputs

def ensure_parquet(data: Path) -> Path:
    path = data / "ratings.parquet"
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_ml32m_like.py"), "--out", str(data)],
                       check=True)
    return path


def ensure_csv_folder(parquet: Path, folder: Path) -> Path:
    """``ratings.csv`` (MovieLens' formatting) plus minimal links/movies files, written chunk by chunk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "ratings.csv"
    source = pq.ParquetFile(parquet)
    if not target.exists():
        t0 = time.perf_counter()
        tmp = folder / ".ratings.csv.tmp"
        with open(tmp, "wb") as out:
            out.write(b"userId,movieId,rating,timestamp\n")
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            for batch in source.iter_batches(batch_size=1 << 20):
                rating = batch.column("rating")
                whole = pc.cast(pc.floor(rating), pa.int64())
                half = pc.not_equal(pc.subtract(rating, pc.cast(whole, pa.float64())), 0.0)
                text = pc.binary_join_element_wise(pc.cast(whole, pa.string()),
                                                   pc.if_else(half, "5", "0"), ".")
                table = pa.table({"userId": batch.column("userId"), "movieId": batch.column("movieId"),
                                  "rating": text, "timestamp": batch.column("timestamp")})
                pacsv.write_csv(table, out, write_options=options)
        os.replace(tmp, target)
        print(f"wrote {target} ({target.stat().st_size / 2**20:,.0f} MB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
    if not (folder / "links.csv").exists() or not (folder / "movies.csv").exists():
        seen = np.zeros(1 << 20, dtype=bool)
        for batch in source.iter_batches(batch_size=1 << 22, columns=["movieId"]):
            seen[batch.column(0).to_numpy()] = True
        ids = np.flatnonzero(seen)
        (folder / "links.csv").write_text(
            "movieId,imdbId,tmdbId\n" + "".join(f"{m},{m:07d},{100000 + m}\n" for m in ids), encoding="utf-8")
        (folder / "movies.csv").write_text(
            "movieId,title,genres\n" + "".join(f"{m},Movie {m} (2000),Drama\n" for m in ids), encoding="utf-8")
    return folder


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# --------------------------------------------------------------------------- child: read_ratings

def child_read(folder: str) -> None:
    import resource

    t_import = time.perf_counter()
    from rcmd_pipeline.resources.movielens import read_ratings
    t0 = time.perf_counter()
    frame = read_ratings(Path(folder))
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds, "import_seconds": t0 - t_import, "rows": len(frame),
        "dtypes": {c: str(t) for c, t in frame.dtypes.items()},
        "frame_mb": frame.memory_usage(index=False, deep=True).sum() / 2**20,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


# --------------------------------------------------------------------------- parent

class TreeSampler:
    """Samples the summed RSS of a process and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak_sum_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_sum_mb = max(self.peak_sum_mb, total / 2**20)
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict, code: Path) -> tuple[float, float, float, str, str]:
    """(wall s, peak RSS of the largest process in the tree MB, sampled tree-sum MB, stdout, stderr)."""
    env = dict(env, PYTHONPATH=str(code))  # ahead of the editable install: --code can point elsewhere
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-4000:]}")
    return wall, usage.ru_maxrss / 1024, sampler.peak_sum_mb, stdout, stderr


def run_read(folder: Path, code: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-read", str(folder)]
    wall, peak, tree, stdout, _ = run_measured(cmd, dict(os.environ), code)
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(process_seconds=wall, peak_mb=peak, tree_sum_mb=tree)
    return result


STEP_RE = re.compile(r'Finished execution of step "movielens_ratings" in (?:(\d+)m)?([0-9.]+)(ms|s)')


def run_asset(folder: Path, code: Path, rerun: bool = False) -> dict:
    dagster = Path(sys.executable).with_name("dagster")
    with tempfile.TemporaryDirectory(prefix="bench_ml_") as tmp:
        home, state = Path(tmp, "home"), Path(tmp, "state")
        home.mkdir()
        env = dict(os.environ, DAGSTER_HOME=str(home), RCMD_DATA_DIR=str(state), RCMD_DATASET_PATH=str(folder))
        cmd = [str(dagster), "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "movielens_ratings"]
        if rerun:  # the measured run is the second one, on the same instance, with the file unchanged
            run_measured(cmd, env, code)
        wall, peak, tree, stdout, stderr = run_measured(cmd, env, code)
        stored = state / "assets" / "movielens_ratings.parquet"
        if not stored.exists():
            raise RuntimeError(f"the asset wrote nothing:\n{stderr[-3000:]}")
        match = STEP_RE.search(stdout + stderr)
        step = None
        if match:
            minutes, value, unit = match.groups()
            step = float(value) / (1000 if unit == "ms" else 1) + 60 * int(minutes or 0)
        else:
            Path(tmp).with_suffix(".unparsed.log").write_text(stderr)
        return {"process_seconds": wall, "step_seconds": step, "peak_mb": peak, "tree_sum_mb": tree,
                "stored_mb": stored.stat().st_size / 2**20, "kept": "kept the stored value" in stdout + stderr}


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], kind: str) -> dict:
    summary = {k: median(runs, k) for k in ("seconds", "process_seconds", "step_seconds", "peak_mb", "tree_sum_mb")}
    summary["max_peak_mb"] = max(r["peak_mb"] for r in runs)
    if kind == "read":
        summary["dtypes"] = runs[0]["dtypes"]
        summary["rows"] = runs[0]["rows"]
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"folder of ratings.parquet (default {DEFAULT_DATA})")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="project tree whose rcmd_pipeline is measured (default this one; e.g. an export of an "
                    "older commit, `git archive HEAD~3 | tar -x -C /tmp/old`, to compare)")
    ap.add_argument("--compare", type=Path, metavar="TREE",
                    help="also measure this project tree (e.g. the previous commit, exported as above), "
                    "alternating runs with --code so that both see the same machine load")
    ap.add_argument("--child-read", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_read:
        child_read(args.child_read)
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")

    parquet = ensure_parquet(args.data)
    csv_folder = ensure_csv_folder(parquet, args.data.with_name(args.data.name + "-csv"))
    folders = {"csv": csv_folder.resolve(), "parquet": args.data.resolve()}
    for path in (parquet, csv_folder / "ratings.csv"):
        warm(path)
    print(f"code: {args.code.resolve()}")
    machine = print_machine()
    print(f"ratings.csv {(csv_folder / 'ratings.csv').stat().st_size / 2**20:,.0f} MB, "
          f"ratings.parquet {parquet.stat().st_size / 2**20:,.0f} MB")

    trees = {"current": args.code.resolve()}
    if args.compare:
        trees = {"baseline": args.compare.resolve(), **trees}
        print(f"baseline: {trees['baseline']} (runs alternate with the current code's)")
    results = {}
    ok = True
    for case in cases:
        kind, fmt = case.split("-") if "-" in case else ("read", case)
        runs = {name: [] for name in trees}
        for i in range(args.repeat):
            for name, code in trees.items():
                run = (run_read(folders[fmt], code) if kind == "read"
                       else run_asset(folders[fmt], code, rerun=kind == "rerun"))
                runs[name].append(run)
                shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items() if k != "dtypes"}
                print(f"  {case} {name} run {i + 1}: {shown}", flush=True)
        for name in trees:
            summary = summarize(runs[name], kind)
            results.setdefault(name, {})[case] = {"median": summary, "runs": runs[name]}
            within = summary["max_peak_mb"] <= LIMIT_MB
            if name == "current":
                ok &= within
            step = summary["step_seconds"] or float("nan")
            timing = (f"read {summary['seconds']:.1f} s" if kind == "read"
                      else f"step {step:.1f} s, command {summary['process_seconds']:.1f} s")
            print(f"{case:>14} {name:>8}: median {timing}, peak RSS {summary['peak_mb']:,.0f} MB "
                  f"(max {summary['max_peak_mb']:,.0f}; tree sum {summary['tree_sum_mb']:,.0f} MB) "
                  f"{'OK' if within else 'OVER'} the {LIMIT_MB} MB limit", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine,
                                         "trees": {k: str(v) for k, v in trees.items()}, "results": results},
                                        indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
