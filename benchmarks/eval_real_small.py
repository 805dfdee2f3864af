"""Sequence-aware strategies against ``next_movie``: tuned on a validation window, scored once.

    python benchmarks/eval_real_small.py                      # real ratings_small + the demo
    python benchmarks/eval_real_small.py --data real          # only ../shared/data/real-movies-small
    python benchmarks/eval_real_small.py --data demo          # only data/demo (study defaults 1000/3000)
    python benchmarks/eval_real_small.py --scale benchmarks/work/ml32m/ratings.parquet   # fit time/RSS

For each data set: the study's evaluation pairs, the validation pairs before them
(``rcmd_pipeline.evaluation.tuning.validation_split``), every strategy's grid scored on validation
with models trained before the validation window, the chosen parameters retrained on everything
before the evaluation window and scored ONCE on it: HitRatio@10 with its Wilson 95% interval, the
exact McNemar p-value against ``next_movie``, and the split by history length. ``--scale`` times
each fit (default parameters, one process per fit for an honest peak RSS) on a 32M-row file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rcmd_pipeline.evaluation.metrics import hits_at_k  # noqa: E402
from rcmd_pipeline.evaluation.report import hit_ratio_interval, mcnemar_exact  # noqa: E402
from rcmd_pipeline.evaluation.tuning import tune, tune_blend, validation_split  # noqa: E402
from rcmd_pipeline.recommenders.history import HISTORY_BINS, build_queries, history_bin_labels  # noqa: E402
from rcmd_pipeline.recommenders.learned import (  # noqa: E402
    NextMovieRecommender,
    PopularityRecommender,
    training_window,
)
from rcmd_pipeline.recommenders.sequence import (  # noqa: E402
    SLIST,
    ItemKNN,
    PrevOnly,
    SequenceHybrid,
    SequentialRules,
    blend_lists,
)

REAL = ROOT.parent / "shared" / "data" / "real-movies-small" / "ratings_small.csv"
DEMO = ROOT / "data" / "demo" / "ratings.csv"
K = 10
MAX_LEN = 100_000  # whole histories: exclude_seen must see every earlier rating

QUERY_GRID = {"last_n": [1, 3, 10], "decay": ["harmonic", "linear"], "exclude_seen": [False, True]}
SPECS = {
    "seq_rules": (SequentialRules, {"max_gap": [1, 3, 10]}),
    "item_knn": (ItemKNN, {"window": [3, 10], "shrink": [0.0, 20.0]}),
    "slist": (SLIST, {"window": [2, 5], "alpha": [0.25, 0.5, 1.0], "reg": [1.0, 10.0, 100.0]}),
}
SLIST_ITEMS = {"min_count": 5, "max_items": 3000}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return (frame["userId"].to_numpy(np.int64), frame["movieId"].to_numpy(np.int64),
            frame["timestamp"].to_numpy(np.int64))


def _factory(cls, train, fit_keys, cache):
    """Fits cached by their fit parameters (SLIST: Gram matrices cached by window, solved per alpha/reg)."""

    def make(**params):
        fit_params = {k: params[k] for k in fit_keys}
        query_params = {k: v for k, v in params.items() if k not in fit_keys}
        key = (cls.name, tuple(sorted(fit_params.items())))
        if key not in cache:
            if cls is SLIST:
                gkey = ("grams", fit_params["window"])
                if gkey not in cache:
                    cache[gkey] = SLIST.grams(*train, window=fit_params["window"], **SLIST_ITEMS)
                cache[key] = SLIST.solve(cache[gkey], alpha=fit_params["alpha"], reg=fit_params["reg"])
            else:
                cache[key] = cls.fit(*train, **fit_params)
        return cls.from_state(cache[key], **query_params)

    return make


def _fit_final(cls, train, params):
    fit_keys = SPECS[cls.name][1]
    fit_params = {k: params[k] for k in fit_keys}
    query_params = {k: v for k, v in params.items() if k not in fit_keys}
    extra = SLIST_ITEMS if cls is SLIST else {}
    return cls.from_state(cls.fit(*train, **fit_params, **extra), **query_params)


def _next_movie(train):
    popularity = PopularityRecommender(train[1])
    return PrevOnly(NextMovieRecommender(*train, fallback=popularity), "next_movie"), PrevOnly(popularity)


def evaluate(label: str, users, movies, times, min_movie_ratings: int, eval_size: int) -> dict:
    started = time.perf_counter()
    split = validation_split(users, movies, times, min_movie_ratings, eval_size)
    before_eval = times < split.final_cutoff
    tuning_train = training_window(users, movies, times, split.tuning_cutoff)
    final_train = training_window(users, movies, times, split.final_cutoff)
    vq = build_queries(split.validation, users[before_eval], movies[before_eval], times[before_eval], MAX_LEN)
    eq = build_queries(split.evaluation, users, movies, times, MAX_LEN)
    v_actual = split.validation["movieId"].to_numpy(np.int64)
    e_actual = split.evaluation["movieId"].to_numpy(np.int64)

    chosen, val_hr, tables = {}, {}, {}
    val_parts, final_parts = {}, {}
    next_val, pop_val = _next_movie(tuning_train)
    next_final, pop_final = _next_movie(final_train)
    val_parts["next_movie"], final_parts["next_movie"] = next_val, next_final
    for name, (cls, fit_grid) in SPECS.items():
        cache: dict = {}
        result = tune(_factory(cls, tuning_train, list(fit_grid), cache), {**fit_grid, **QUERY_GRID}, vq, v_actual, K)
        chosen[name], val_hr[name], tables[name] = result.params, result.hit_ratio, result.table
        val_parts[name] = _factory(cls, tuning_train, list(fit_grid), cache)(**result.params)
        final_parts[name] = _fit_final(cls, final_train, result.params)
        print(f"  [{label}] tuned {name}: {result.params} validation HR@{K}={result.hit_ratio:.4f} "
              f"({len(result.table)} settings)", flush=True)

    depth = 50
    lists = {n: p.recommend_queries(vq, depth) for n, p in val_parts.items()}
    blend = tune_blend(lists, vq, v_actual, K, exclude_seen=True)
    chosen["seq_hybrid"], val_hr["seq_hybrid"] = blend.params, blend.hit_ratio
    hybrid = SequenceHybrid(final_parts, blend.params, depth=depth, exclude_seen=True)
    val_hr["next_movie"] = float(hits_at_k(next_val.recommend_queries(vq, K), v_actual, K).mean())
    val_hr["popularity"] = float(hits_at_k(pop_val.recommend_queries(vq, K), v_actual, K).mean())
    # on validation, the best single part as the blend's starting point (for the report)
    best_part = max((n for n in lists), key=lambda n: float(hits_at_k(
        blend_lists(vq, lists, {n: 1.0}, K, exclude_seen=True), v_actual, K).mean()))

    # ---- the one scoring on the evaluation window
    strategies = {"popularity": pop_final, **final_parts, "seq_hybrid": hybrid}
    hits = {n: hits_at_k(s.recommend_queries(eq, K), e_actual, K) for n, s in strategies.items()}
    bins = history_bin_labels(eq)
    base = hits["next_movie"]
    rows = []
    for name, h in hits.items():
        low, high = hit_ratio_interval(h)
        test = mcnemar_exact(h, base)
        row = {"strategy": name, "val_hr": val_hr.get(name, float("nan")), "hr": float(h.mean()), "low": low,
               "high": high, "x_next_movie": float(h.mean() / base.mean()) if base.mean() > 0 else float("nan"),
               "p_vs_next_movie": test["p_value"] if name != "next_movie" else float("nan"),
               "b": test["b"], "c": test["c"]}
        for _, _, bl in HISTORY_BINS:
            sel = bins == bl
            row[f"hr[{bl}]"] = float(h[sel].mean()) if sel.any() else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("hr", ascending=False).reset_index(drop=True)
    best_on_val = max((n for n in hits if n not in ("next_movie", "popularity")), key=lambda n: val_hr[n])
    summary = {
        "label": label, "ratings": int(len(users)), "min_movie_ratings": min_movie_ratings, "eval_size": eval_size,
        "tuning_cutoff": split.tuning_cutoff, "final_cutoff": split.final_cutoff,
        "validation_users": int(split.validation["userId"].nunique()),
        "evaluation_users": int(split.evaluation["userId"].nunique()),
        "history_bins_n": {bl: int((bins == bl).sum()) for _, _, bl in HISTORY_BINS},
        "chosen": chosen, "best_on_validation": best_on_val, "best_single_part_on_validation": best_part,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"summary": summary, "table": table}


def print_result(result: dict) -> None:
    s, table = result["summary"], result["table"]
    print(f"\n== {s['label']}: {s['ratings']:,} ratings, min_movie_ratings={s['min_movie_ratings']}, "
          f"eval_size={s['eval_size']} ({s['evaluation_users']} users in evaluation, {s['validation_users']} in "
          f"validation), {s['seconds']} s")
    print("pairs by earlier ratings:", s["history_bins_n"])
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    print("best on validation:", s["best_on_validation"], "| hybrid's best single part on validation:",
          s["best_single_part_on_validation"])
    print("chosen:", json.dumps(s["chosen"], default=str))


def _narrowest(low: int, high: int) -> type:
    return np.int32 if np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max else np.int64


def load_window(path: str, cutoff: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """userId, movieId, timestamp of the ratings before ``cutoff``, compactly, as a model asset gets them.

    Row group by row group (pyarrow) into preallocated arrays: ids in the narrowest of int32/int64
    that the file's statistics allow, timestamps int64. A first pass over the timestamp column
    counts the rows of the window, so nothing is allocated twice and no frame is built.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_memory_pool(pa.system_memory_pool())  # freed buffers go back to the OS at once
    source = pq.ParquetFile(path)
    names = source.schema_arrow.names
    meta = source.metadata
    dtypes = {}
    for column in ("userId", "movieId"):
        index = names.index(column)
        stats = [meta.row_group(g).column(index).statistics for g in range(meta.num_row_groups)]
        if all(s is not None and s.has_min_max for s in stats):
            dtypes[column] = _narrowest(min(int(s.min) for s in stats), max(int(s.max) for s in stats))
        else:
            dtypes[column] = np.int64
    keep_counts = []
    for g in range(meta.num_row_groups):
        t = source.read_row_group(g, columns=["timestamp"]).column(0).to_numpy()
        keep_counts.append(int((t < cutoff).sum()) if cutoff is not None else len(t))
    n = sum(keep_counts)
    out = {"userId": np.empty(n, dtypes["userId"]), "movieId": np.empty(n, dtypes["movieId"]),
           "timestamp": np.empty(n, np.int64)}
    done = 0
    for g in range(meta.num_row_groups):
        table = source.read_row_group(g, columns=list(out))
        t = table.column("timestamp").to_numpy()
        keep = t < cutoff if cutoff is not None else slice(None)
        here = slice(done, done + keep_counts[g])
        for column, target in out.items():
            target[here] = table.column(column).to_numpy()[keep]
        done += keep_counts[g]
        del table, t, keep
    return out["userId"], out["movieId"], out["timestamp"]


def _study_cutoff(path: str) -> int:
    """The study's training cutoff (earliest evaluation pair) of a ratings file (run in a child process)."""
    from rcmd_pipeline.evaluation.transitions import build_eval_transitions
    from rcmd_pipeline.recommenders.learned import leakage_cutoff

    return leakage_cutoff(build_eval_transitions(*load_window(path, None)))


def _cutoff_in_child(path: str) -> int:
    """Computed in its own process, so the evaluation set's memory never counts against a fit."""
    out = subprocess.run([sys.executable, __file__, "--cutoff-of", path], check=True, capture_output=True,
                         text=True)
    return int(out.stdout.strip().splitlines()[-1])


FIT_ONE_PARAMS = {
    "seq_rules": (SequentialRules, {}),
    "item_knn": (ItemKNN, {}),
    "slist": (SLIST, {"min_count": 1000, "max_items": 3500, "window": 5, "alpha": 0.5, "reg": 10.0}),
}


def _fit_one(path: str, name: str, cutoff: int | None, save: str | None = None) -> dict:
    """One fit as a model asset runs it: the training window as three compact arrays, then ``fit``.

    Peak RSS is the process's own high-water mark (``ru_maxrss``) read before and after the fit,
    so loading counts in "before" and everything the fit allocates on top of it in "after".
    """
    import psutil

    if cutoff is None:
        cutoff = _cutoff_in_child(path)
    proc = psutil.Process()
    started_wall = time.perf_counter()
    train = load_window(path, cutoff)
    load_seconds = time.perf_counter() - started_wall
    rss_before = proc.memory_info().rss / 2**20
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cls, params = FIT_ONE_PARAMS[name]
    wall, cpu = time.perf_counter(), time.process_time()
    state = cls.fit(*train, **params)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if save:
        np.savez(save, **state)
    result = {"strategy": name, "ratings": int(len(train[0])), "cutoff": int(cutoff),
              "dtypes": [str(a.dtype) for a in train], "load_seconds": round(load_seconds, 1),
              "fit_wall_seconds": round(wall, 1), "fit_cpu_seconds": round(cpu, 1),
              "rss_before_fit_mb": round(rss_before), "peak_rss_before_fit_mb": round(peak_before),
              "peak_rss_after_fit_mb": round(peak_after), "fit_added_mb": round(peak_after - rss_before),
              "state_mb": round(sum(v.nbytes for v in state.values()) / 2**20, 1),
              "items": int(len(state["item_ids"])), "load_average": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["real", "demo", "both", "none"], default="both")
    ap.add_argument("--real-min-ratings", type=int, default=20)
    ap.add_argument("--real-eval-size", type=int, default=1000)
    ap.add_argument("--scale", help="a 32M-row ratings.parquet: time each fit in its own process")
    ap.add_argument("--fit-one", nargs=2, metavar=("PARQUET", "STRATEGY"),
                    help="one fit in this process: load the training window compactly, fit, print time and RSS")
    ap.add_argument("--cutoff", type=int, help="with --fit-one: the training cutoff (default: the study's)")
    ap.add_argument("--save-state", help="with --fit-one: write the fitted state to this .npz")
    ap.add_argument("--cutoff-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cutoff_of:
        print(_study_cutoff(args.cutoff_of))
        return
    if args.fit_one:
        _fit_one(*args.fit_one, cutoff=args.cutoff, save=args.save_state)
        return
    if args.data in ("real", "both"):
        if REAL.exists():
            print_result(evaluate("real ratings_small", *_load(REAL), args.real_min_ratings, args.real_eval_size))
        else:
            print(f"{REAL} is absent: skipping the real data set")
    if args.data in ("demo", "both"):
        print_result(evaluate("demo", *_load(DEMO), 1000, 3000))
    if args.scale:
        cutoff = _cutoff_in_child(args.scale)
        for name in FIT_ONE_PARAMS:
            subprocess.run([sys.executable, __file__, "--fit-one", args.scale, name, "--cutoff", str(cutoff)],
                           check=True)


if __name__ == "__main__":
    main()
