"""Benchmark: building the 3,000-pair evaluation set, the study's pandas way vs rcmd_pipeline's.

    python benchmarks/bench_eval_transitions.py --data benchmarks/work/ml32m [--repeat 3] [--json PATH]

Each run is a fresh Python process (``--child``), so its peak memory is its own ``ru_maxrss``, which
it reports at the end. Runs alternate between the implementations; the parquet file is read once
beforehand so every run finds it in the OS page cache. Time is wall-clock from the start of the
work (reading the file included, imports excluded and reported separately) to having the 3,000
pairs.

* ``study``: the study's procedure, verbatim (pandas).
* ``rcmd_pipeline``: ``read_ratings(folder, ("userId", "movieId", "timestamp"))`` then
  ``build_eval_transitions(..., TransitionSettings(min_movie_ratings=1000, eval_size=3000))``.
* ``reference`` (once, not timed against the others): the study's procedure with every tie broken
  (user sort by (userId, date, movieId), recency sort by (date, userId, movieId)). rcmd_pipeline
  documents exactly this order, so it must equal the reference row for row.

The check compares the study's and rcmd_pipeline's 3,000 pairs. The study leaves ties unbroken:
its stable (userId, date) sort keeps same-second ratings of a user in file order, and its final
``sort_values('date')`` is unstable, so (1) the pairs of the smallest ("boundary") second in the
set may be a different subset, and (2) after the boundary, a pair may differ only where a user
rated several of the kept movies in the same second (which one counts as "previous" is a matter of
tie order). The check verifies both claims against the file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from machine import print_machine

REPO = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = ("study", "rcmd_pipeline")
MIN_MOVIE_RATINGS = 1000
EVAL_SIZE = 3000


# --------------------------------------------------------------------------- child process

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run_study(dataset_path: str):
    import os  # noqa: F811 - the study's own imports

    import pandas as pd

    t0 = time.perf_counter()
    # ---- the study's cells, verbatim ----
    df_ratings = pd.read_parquet(os.path.join(dataset_path, 'ratings.parquet'))
    df_ratings['date'] = df_ratings.pop('timestamp').pipe(lambda x: pd.to_datetime(x, unit='s'))
    s_movieId = df_ratings['movieId'].unique()  # noqa: F841 - computed (and timed) as in the study
    movie_id_1000 = df_ratings['movieId'].value_counts(normalize=False).pipe(lambda x: x.loc[x >= 1000]).index
    df_ratings = df_ratings.loc[df_ratings['movieId'].isin(movie_id_1000)].sort_values(['userId', 'date'])
    df_ratings['prev_movieId'] = df_ratings['movieId'].shift(1)
    df_ratings['prev_movieId'] = df_ratings['prev_movieId'].fillna(0).astype('int')
    df_ratings = df_ratings.loc[df_ratings['userId'] == df_ratings['userId'].shift(1)]
    df_ratings_3000 = df_ratings.sort_values('date', ascending=False).iloc[:3000][['prev_movieId', 'movieId']]
    # -------------------------------------
    seconds = time.perf_counter() - t0
    # Untimed: recover each pair's user and second through the index labels (unique row numbers).
    rows = df_ratings.loc[df_ratings_3000.index]
    epoch = ((rows['date'] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy()
    return seconds, {"userId": rows["userId"].to_numpy(), "prev_movieId": df_ratings_3000["prev_movieId"].to_numpy(),
                     "movieId": df_ratings_3000["movieId"].to_numpy(), "timestamp": epoch}


def _run_reference(dataset_path: str):
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_parquet(os.path.join(dataset_path, "ratings.parquet"), columns=["userId", "movieId", "timestamp"])
    counts = df["movieId"].value_counts()
    df = df.loc[df["movieId"].isin(counts.index[counts >= MIN_MOVIE_RATINGS])]
    df = df.sort_values(["userId", "timestamp", "movieId"], kind="stable")
    df["prev_movieId"] = df["movieId"].shift(1).fillna(0).astype("int64")
    df = df.loc[df["userId"] == df["userId"].shift(1)]
    top = df.sort_values(["timestamp", "userId", "movieId"], ascending=False, kind="stable").iloc[:EVAL_SIZE]
    seconds = time.perf_counter() - t0
    return seconds, {c: top[c].to_numpy() for c in ("userId", "prev_movieId", "movieId", "timestamp")}


def _run_rcmd(dataset_path: str):
    from rcmd_pipeline.evaluation.transitions import TransitionSettings, build_eval_transitions
    from rcmd_pipeline.resources.movielens import read_ratings

    t0 = time.perf_counter()
    ratings = read_ratings(Path(dataset_path), ("userId", "movieId", "timestamp"))
    pairs = build_eval_transitions(
        ratings["userId"].to_numpy(), ratings["movieId"].to_numpy(), ratings["timestamp"].to_numpy(),
        TransitionSettings(min_movie_ratings=MIN_MOVIE_RATINGS, eval_size=EVAL_SIZE),
    )
    seconds = time.perf_counter() - t0
    return seconds, {c: pairs[c].to_numpy() for c in ("userId", "prev_movieId", "movieId", "timestamp")}


def child(impl: str, data: str, result: str) -> None:
    t_start = time.perf_counter()
    import numpy as np
    import pandas  # noqa: F401 - imports are timed separately from the work

    if impl == "rcmd_pipeline":
        import rcmd_pipeline.evaluation.transitions  # noqa: F401
        import rcmd_pipeline.resources.movielens  # noqa: F401
    import_seconds = time.perf_counter() - t_start
    rss_after_imports = _peak_mb()
    run = {"study": _run_study, "rcmd_pipeline": _run_rcmd, "reference": _run_reference}[impl]
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, pairs = run(data)
    after = resource.getrusage(resource.RUSAGE_SELF)  # includes the untimed extraction, which is tiny
    peak = _peak_mb()
    np.savez(result, **{k: np.asarray(v, dtype=np.int64) for k, v in pairs.items()})
    print("RESULT " + json.dumps({"implementation": impl, "seconds": seconds, "import_seconds": import_seconds,
                                  "rss_after_imports_mb": rss_after_imports, "peak_mb": peak,
                                  "cpu_user_s": after.ru_utime - before.ru_utime,
                                  "cpu_sys_s": after.ru_stime - before.ru_stime,
                                  "minor_page_faults": after.ru_minflt - before.ru_minflt,
                                  "pairs": int(len(pairs["movieId"]))}), flush=True)


# --------------------------------------------------------------------------- parent process

def run_child(impl: str, data: Path, workdir: Path, tag: str) -> dict:
    result = workdir / f"{impl}-{tag}.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", impl, "--data", str(data), "--result", str(result)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{impl} run failed (exit code {proc.returncode})")
    out = json.loads(line[len("RESULT "):])
    out["process_seconds"] = wall
    out["result_file"] = str(result)
    return out


def _load(path: str) -> dict:
    import numpy as np

    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _rows(p: dict, mask=None) -> Counter:
    import numpy as np

    idx = np.arange(len(p["movieId"])) if mask is None else np.flatnonzero(mask)
    return Counter(zip(p["userId"][idx].tolist(), p["prev_movieId"][idx].tolist(),
                       p["movieId"][idx].tolist(), p["timestamp"][idx].tolist(), strict=True))


def _pairs(rows: Counter) -> Counter:
    out: Counter = Counter()
    for (_, prev, movie, _), n in rows.items():
        out[(prev, movie)] += n
    return out


def _same(a: dict, b: dict) -> bool:
    import numpy as np

    return all(np.array_equal(a[c], b[c]) for c in ("userId", "prev_movieId", "movieId", "timestamp"))


def compare(study: dict, rcmd: dict, data: Path) -> dict:
    """The study's pairs vs rcmd_pipeline's, and why any of them differ."""
    import numpy as np
    import pyarrow.parquet as pq

    boundary_s, boundary_r = int(study["timestamp"].min()), int(rcmd["timestamp"].min())
    boundary = min(boundary_s, boundary_r)
    rows_s, rows_r = _rows(study), _rows(rcmd)
    after_s, after_r = _rows(study, study["timestamp"] > boundary), _rows(rcmd, rcmd["timestamp"] > boundary)
    only_s, only_r = after_s - after_r, after_r - after_s  # full rows (user, prev, movie, second)

    # Per (user, second), the number of pairs does not depend on tie order: it must agree.
    per_second_s: Counter = Counter()
    per_second_r: Counter = Counter()
    for (u, _, _, t), n in after_s.items():
        per_second_s[(u, t)] += n
    for (u, _, _, t), n in after_r.items():
        per_second_r[(u, t)] += n

    # Explain every differing row from the file: the user must have several kept ratings in the
    # pair's second, or in the second of the rating just before it.
    users = sorted({u for (u, _, _, _) in list(only_s) + list(only_r)})
    explained, unexplained = 0, []
    if users:
        movie_counts = np.bincount(pq.read_table(data / "ratings.parquet", columns=["movieId"]).column(0).to_numpy())
        hist = pq.read_table(data / "ratings.parquet", columns=["userId", "movieId", "timestamp"],
                             filters=[("userId", "in", users)])
        hu, hm, ht = (hist.column(c).to_numpy() for c in ("userId", "movieId", "timestamp"))
        kept = movie_counts[hm] >= MIN_MOVIE_RATINGS
        hu, ht = hu[kept], ht[kept]
        for row in list(only_s) + list(only_r):
            u, _, _, t = row
            times = ht[hu == u]
            tie_here = int(np.sum(times == t)) >= 2
            before = times[times < t]
            tie_before = len(before) > 0 and int(np.sum(times == before.max())) >= 2
            if tie_here or tie_before:
                explained += 1
            else:
                unexplained.append(row)
    n_s, n_r = len(study["movieId"]), len(rcmd["movieId"])
    return {
        "pairs": [n_s, n_r],
        "boundary_second": boundary,
        "boundary_second_equal": boundary_s == boundary_r,
        "rows_at_boundary": int(np.sum(study["timestamp"] == boundary)),
        "rows_after_boundary": [int(np.sum(study["timestamp"] > boundary)), int(np.sum(rcmd["timestamp"] > boundary))],
        "exact_pairs_overall": sum((_pairs(rows_s) & _pairs(rows_r)).values()),
        "exact_rows_overall": sum((rows_s & rows_r).values()),
        "same_row_order": _same(study, rcmd),
        "pairs_after_boundary_equal": _pairs(after_s) == _pairs(after_r),
        "rows_after_boundary_equal": after_s == after_r,
        "rows_after_boundary_differing": [sum(only_s.values()), sum(only_r.values())],
        "users_with_differing_rows": len(users),
        "pair_count_per_user_second_equal": per_second_s == per_second_r,
        "differing_rows_explained_by_same_second_ties": explained,
        "differing_rows_unexplained": [list(map(int, r)) for r in unexplained],
    }


def _verdict(c: dict) -> str:
    ok_after = c["pairs_after_boundary_equal"] or (
        not c["differing_rows_unexplained"] and c["pair_count_per_user_second_equal"])
    return "OK" if c["boundary_second_equal"] and c["pairs"] == [EVAL_SIZE, EVAL_SIZE] and ok_after else "MISMATCH"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "benchmarks" / "work" / "ml32m",
                    help="folder holding ratings.parquet")
    ap.add_argument("--repeat", type=int, default=3, help="runs per implementation (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only", choices=IMPLEMENTATIONS, action="append", help="run just this implementation")
    ap.add_argument("--no-reference", action="store_true", help="skip the tie-broken reference run")
    ap.add_argument("--child", choices=(*IMPLEMENTATIONS, "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, str(args.data), args.result)
        return 0

    data = args.data.resolve()
    path = data / "ratings.parquet"
    if not path.is_file():
        raise SystemExit(f"{path} not found; generate it with: python benchmarks/make_ml32m_like.py --out {args.data}")
    impls = tuple(args.only or IMPLEMENTATIONS)
    info = print_machine()
    print(f"data: {path} ({path.stat().st_size / 2**20:.0f} MB)")
    with open(path, "rb") as f:  # warm the page cache so the first run is not special
        while f.read(1 << 24):
            pass

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        workdir = Path(tmp)
        for rep in range(args.repeat):
            for impl in impls:
                r = run_child(impl, data, workdir, str(rep))
                r["repeat"] = rep
                runs.append(r)
                print(f"  run {rep + 1}/{args.repeat} {impl:<14} {r['seconds']:7.2f} s  peak {r['peak_mb']:7.0f} MB"
                      f"  (imports {r['import_seconds']:.2f} s, process {r['process_seconds']:.2f} s)", flush=True)
        reference = None
        if not args.no_reference and "rcmd_pipeline" in impls:
            reference = run_child("reference", data, workdir, "0")
            print(f"  reference (study with ties broken): {reference['seconds']:.2f} s, "
                  f"peak {reference['peak_mb']:.0f} MB", flush=True)

        results = {impl: [_load(r["result_file"]) for r in runs if r["implementation"] == impl] for impl in impls}
        check: dict = {}
        if "rcmd_pipeline" in results:
            first = results["rcmd_pipeline"][0]
            check["rcmd_pipeline_identical_across_runs"] = all(_same(first, o) for o in results["rcmd_pipeline"])
            if reference is not None:
                check["rcmd_pipeline_equals_tie_broken_reference"] = _same(first, _load(reference["result_file"]))
        if "study" in results:
            s0 = results["study"][0]
            check["study_identical_across_runs"] = all(_same(s0, o) for o in results["study"])
        if "study" in results and "rcmd_pipeline" in results:
            check["study_vs_rcmd_pipeline"] = [compare(s, results["rcmd_pipeline"][0], data)
                                               for s in results["study"]]
    for r in runs + ([reference] if reference else []):
        r.pop("result_file", None)

    summary = {}
    for impl in impls:
        mine = [r for r in runs if r["implementation"] == impl]
        secs = [r["seconds"] for r in mine]
        summary[impl] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                         "median_peak_mb": statistics.median(r["peak_mb"] for r in mine),
                         "median_import_s": statistics.median(r["import_seconds"] for r in mine),
                         "median_rss_after_imports_mb": statistics.median(r["rss_after_imports_mb"] for r in mine)}

    comparisons = check.get("study_vs_rcmd_pipeline", [])
    verdict = ("OK" if comparisons and all(_verdict(c) == "OK" for c in comparisons) else
               "MISMATCH" if comparisons else "n/a")
    print()
    print(f"{'implementation':<15}{'median s':>10}{'min s':>9}{'max s':>9}{'median peak MB':>16}"
          f"{'imports s':>11}{'RSS after imports MB':>22}  check")
    for impl in impls:
        s = summary[impl]
        print(f"{impl:<15}{s['median_s']:>10.2f}{s['min_s']:>9.2f}{s['max_s']:>9.2f}{s['median_peak_mb']:>16.0f}"
              f"{s['median_import_s']:>11.2f}{s['median_rss_after_imports_mb']:>22.0f}  {verdict}")
    if len(impls) == 2:
        st, rc = summary["study"], summary["rcmd_pipeline"]
        print(f"speed-up {st['median_s'] / rc['median_s']:.1f}x, "
              f"peak memory {st['median_peak_mb'] / rc['median_peak_mb']:.1f}x lower")

    print()
    for key in ("rcmd_pipeline_identical_across_runs", "rcmd_pipeline_equals_tie_broken_reference",
                "study_identical_across_runs"):
        if key in check:
            print(f"{key.replace('_', ' ')}: {check[key]}")
    for i, c in enumerate(comparisons):
        print(f"study run {i + 1} vs rcmd_pipeline: {_verdict(c)}")
        print(f"  boundary second {c['boundary_second']} (same in both: {c['boundary_second_equal']}), "
              f"{c['rows_at_boundary']} pairs in it, {c['rows_after_boundary'][0]} pairs after it")
        print(f"  of the {EVAL_SIZE} (prev_movieId, movieId) pairs, {c['exact_pairs_overall']} match as a multiset "
              f"({c['exact_rows_overall']} with the same user and second too); same row order: {c['same_row_order']}")
        print(f"  after the boundary: pairs equal {c['pairs_after_boundary_equal']}, (user, prev, movie, second) rows "
              f"equal {c['rows_after_boundary_equal']}; differing rows study/rcmd {c['rows_after_boundary_differing']} "
              f"from {c['users_with_differing_rows']} user(s)")
        if c["rows_after_boundary_differing"] != [0, 0]:
            print(f"  every differing row explained by same-second ratings of its user: "
                  f"{not c['differing_rows_unexplained']} ({c['differing_rows_explained_by_same_second_ties']} "
                  f"explained, unexplained: {c['differing_rows_unexplained'][:5]}); pairs per (user, second) "
                  f"equal: {c['pair_count_per_user_second_equal']}")
    if comparisons:
        print("\nWhy pairs may differ: the study sorts by (userId, date) with pandas' stable multi-column sort, so a\n"
              "user's ratings in the same second stay in file order, and which of them counts as 'previous' depends\n"
              "on that order; rcmd_pipeline orders them by movieId. Its final sort_values('date') is unstable, so\n"
              "among the pairs of the boundary second (the oldest second in the set) it keeps an arbitrary subset;\n"
              "rcmd_pipeline keeps the highest (userId, movieId). Pairs after the boundary can therefore differ\n"
              "only for a user with several kept ratings in one second (or in the second just before the pair),\n"
              "and the number of pairs per (user, second) cannot differ; both are checked above against the file.")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "data": str(path), "repeat": args.repeat,
                                         "min_movie_ratings": MIN_MOVIE_RATINGS, "eval_size": EVAL_SIZE,
                                         "summary": summary, "check": check, "runs": runs,
                                         "reference": reference}, indent=2))
        print(f"\nwrote {args.json}")
    return 0 if verdict != "MISMATCH" else 1


if __name__ == "__main__":
    sys.exit(main())
