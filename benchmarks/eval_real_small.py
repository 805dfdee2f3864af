"""Sequence-aware strategies against ``next_movie``: tuned on a validation window, scored once.

    python benchmarks/eval_real_small.py                      # real ratings_small + the demo
    python benchmarks/eval_real_small.py --data real          # only ../shared/data/real-movies-small
    python benchmarks/eval_real_small.py --data demo          # only data/demo (study defaults 1000/3000)
    python benchmarks/eval_real_small.py --data demo --full-grid   # tune on the larger grid instead
    python benchmarks/eval_real_small.py --data both --rerank      # seq_rerank too, as sequence_tuning chooses it
    python benchmarks/eval_real_small.py --data both --rerank --rerank-grid full   # the grid the asset's was cut from
    python benchmarks/eval_real_small.py --data demo --rerank --rerank-max-iter 200,600
    python benchmarks/eval_real_small.py --data both --rerank --rerank-genres   # with a genre feature
    python benchmarks/eval_real_small.py --data both --rerank --rerank-content  # what sequence_tuning does
    python benchmarks/eval_real_small.py --data demo --rerank --rerank-grid trees  # the trees alone, no content
    python benchmarks/eval_real_small.py --scale benchmarks/work/ml32m/ratings.parquet   # fit time/RSS
    python benchmarks/eval_real_small.py --data none --tune-scale benchmarks/work/ml32m/ratings.parquet [--rerank]

For each data set, what the pipeline does: ``sequence_tuning``'s choice on the validation window
(``choose_sequence_parameters``: the validation pairs before the evaluation window, every grid
setting fitted before them and scored on them, the blend's weights), the model assets' refit of
the chosen values on everything before the evaluation window, and ONE scoring on it: HitRatio@10
with its Wilson 95% interval, the exact McNemar p-value against ``next_movie``, and the split by
history length. ``--scale`` times each fit (default parameters, one process per fit for an honest
peak RSS) on a 32M-row file; ``--tune-scale`` the whole tuning.
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
from rcmd_pipeline.evaluation.rerank_choice import RERANK_GRID, RerankOptions  # noqa: E402
from rcmd_pipeline.evaluation.transitions import TransitionSettings  # noqa: E402
from rcmd_pipeline.evaluation.tuning import (  # noqa: E402
    BLEND_PARTS,
    TUNING_MAX_RATINGS,
    _next_movie_lists,
    _validation_window,
    choose_sequence_parameters,
    expand_grid,
    most_recent,
    tune_blend,
    validation_split,
)
from rcmd_pipeline.recommenders.history import HISTORY_BINS, build_queries, history_bin_labels  # noqa: E402
from rcmd_pipeline.recommenders.item_knn import ItemKNN  # noqa: E402
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender  # noqa: E402
from rcmd_pipeline.recommenders.popularity import PopularityRecommender  # noqa: E402
from rcmd_pipeline.recommenders.rerank import Reranker, sequence_members, state_from_choice  # noqa: E402
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly, SequenceHybrid  # noqa: E402
from rcmd_pipeline.recommenders.seq_rules import SequentialRules  # noqa: E402
from rcmd_pipeline.recommenders.sequence import fit_model, load_model  # noqa: E402
from rcmd_pipeline.recommenders.slist import SLIST  # noqa: E402
from rcmd_pipeline.recommenders.training import training_window  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from taste_part import Taste, genre_matrix  # noqa: E402  (tried for issue 10, not in the pipeline)

REAL = ROOT.parent / "shared" / "data" / "real-movies-small" / "ratings_small.csv"
DEMO = ROOT / "data" / "demo" / "ratings.csv"
DEMO_MOVIES = ROOT / "data" / "demo" / "movies.csv"
REAL_SMALL = ROOT / "benchmarks" / "work" / "real-small"
"""``make_real_small_dataset.py --out`` here: the real data's links and TMDB snapshot (``--rerank-content``)."""
K = 10
MAX_LEN = 100_000  # whole histories: exclude_seen must see every earlier rating

FULL_QUERY_GRID = {"last_n": [1, 3, 10], "decay": ["harmonic", "linear"], "exclude_seen": [False, True]}
FULL_GRIDS = {
    "seq_rules": {"max_gap": [1, 3, 10]},
    "item_knn": {"window": [3, 10], "shrink": [0.0, 20.0]},
    "slist": {"window": [2, 5], "alpha": [0.25, 0.5, 1.0], "reg": [1.0, 10.0, 100.0]},
}
"""``--full-grid``: the larger grid the asset's grid was cut from (same winners on both data sets)."""
SLIST_ITEMS = {"min_count": 5, "max_items": 3000}  # sequence_tuning's defaults
TASTE_FIT_GRID = {"reg": [0.3, 3.0, 30.0]}
TASTE_QUERY_GRID = {"a": [0.5, 1.0], "b": [1.0, 2.0, 4.0], "shape": ["exp", "power"], "exclude_seen": [True]}
"""``--taste``: the user-taste part (``benchmarks/taste_part.py``) tried on validation like the sequence models."""
DEPTH = 50


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return (frame["userId"].to_numpy(np.int64), frame["movieId"].to_numpy(np.int64),
            frame["timestamp"].to_numpy(np.int64))


def _rating_values(path: Path) -> np.ndarray:
    """The ``rating`` column, aligned with :func:`_load`'s arrays (only ``--taste`` reads it)."""
    frame = pd.read_parquet(path, columns=["rating"]) if path.suffix == ".parquet" else pd.read_csv(
        path, usecols=["rating"])
    return frame["rating"].to_numpy(np.float32)


def _demo_genres() -> tuple[np.ndarray, np.ndarray]:
    movies = pd.read_csv(DEMO_MOVIES)
    ids, _, matrix = genre_matrix(movies["movieId"].to_numpy(np.int64), list(movies["genres"]))
    return ids, matrix


def _real_genres() -> tuple[np.ndarray, np.ndarray]:
    """movies.csv's genres as ``make_real_small_dataset.py`` writes them (TMDB genres, built in memory)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_real_small_dataset as real_small

    src = real_small.load_source(REAL.parent)
    links = src["links"]
    links = links[links["movieId"].astype(int).isin(src["rated"])]
    rows = real_small.movies_rows(src, links)
    ids, _, matrix = genre_matrix(np.array([r[0] for r in rows], dtype=np.int64), [r[2] for r in rows])
    return ids, matrix


def _taste_part(users, movies, times, values, genres, split, choice, min_movie_ratings: int, eval_size: int,
                say) -> dict:
    """The taste model tried as the sequence models are: every (fit x query) setting fitted before the
    validation window and scored on it, the best refitted before the evaluation window; the blend
    re-tuned on validation with it as a fifth part. Nothing here reads the evaluation window's answers."""
    settings = TransitionSettings(min_movie_ratings=min_movie_ratings, eval_size=eval_size)
    vq, v_actual, v_train, tuning_cutoff = _validation_window(lambda: (users, movies, times), split.final_cutoff,
                                                              settings, MAX_LEN, TUNING_MAX_RATINGS)
    before = times < tuning_cutoff
    t_window = most_recent((users[before], movies[before], times[before], values[before]), TUNING_MAX_RATINGS)
    rows, best = [], None
    for fit_params in expand_grid(TASTE_FIT_GRID):
        state = Taste.fit(*t_window, *genres, **fit_params)
        for query in expand_grid(TASTE_QUERY_GRID):
            hr = float(hits_at_k(Taste.from_state(state, **query).recommend_queries(vq, K), v_actual, K).mean())
            rows.append({**fit_params, **query, "hit_ratio": hr})
            if best is None or hr > best[0]:
                best = (hr, fit_params, query, state)
    hr, fit_params, query, state = best
    say(f"taste: {fit_params} {query} scores {hr:.4f} on validation ({len(rows)} settings)")
    lists = {"next_movie": _next_movie_lists(v_train, vq, max(DEPTH, K))}
    for name in ("seq_rules", "item_knn", "slist"):
        lists[name] = load_model(name, fit_model(name, *v_train, choice.chosen[name])).recommend_queries(
            vq, max(DEPTH, K))
    four = tune_blend({n: lists[n] for n in BLEND_PARTS}, vq, v_actual, K, exclude_seen=True)
    assert four.params == choice.chosen["seq_hybrid"], (four.params, choice.chosen["seq_hybrid"])
    lists["taste"] = Taste.from_state(state, **query).recommend_queries(vq, max(DEPTH, K))
    five = tune_blend({n: lists[n] for n in (*BLEND_PARTS, "taste")}, vq, v_actual, K, exclude_seen=True)
    say(f"seq_hybrid with taste: weights {five.params} score {five.hit_ratio:.4f} on validation")
    final = times < split.final_cutoff
    model = Taste.from_state(Taste.fit(users[final], movies[final], times[final], values[final], *genres,
                                       **fit_params), **query)
    return {"model": model, "weights": five.params, "val_hr": hr, "val_hr_blend": five.hit_ratio,
            "chosen": {**fit_params, **query}, "table": pd.DataFrame(rows)}


def evaluate(label: str, users, movies, times, min_movie_ratings: int, eval_size: int, full_grid: bool = False,
             rerank: RerankOptions | None = None, genres: tuple | None = None, taste: tuple | None = None) -> dict:
    """What the pipeline does: ``sequence_tuning`` (choose_sequence_parameters), the model assets'
    refit before the evaluation window, one scoring of every strategy on the evaluation pairs."""
    started = time.perf_counter()
    split = validation_split(users, movies, times, min_movie_ratings, eval_size)
    grids = dict(grids=FULL_GRIDS, query_grid=FULL_QUERY_GRID) if full_grid else {}
    extra_fn = genre_similarity(genres) if (rerank is not None and genres is not None) else rerank.extra if rerank \
        else None
    if extra_fn is not None:  # the views on (they won on the demo, where the genre trial was made)
        rerank = RerankOptions(grid=[p for p in expand_grid(rerank.grid or RERANK_GRID) if p["views"]],
                               max_iter=rerank.max_iter, extra=extra_fn, content=rerank.content)
    choice = choose_sequence_parameters(lambda: (users, movies, times), split.final_cutoff, min_movie_ratings,
                                        eval_size, K, fixed={"slist": SLIST_ITEMS}, depth=DEPTH, max_len=MAX_LEN,
                                        log=lambda line: print(f"  [{label}] {line}", flush=True),
                                        max_training_ratings=TUNING_MAX_RATINGS, rerank=rerank, **grids)
    final_train = training_window(users, movies, times, split.final_cutoff)
    eq = build_queries(split.evaluation, users, movies, times, MAX_LEN)
    e_actual = split.evaluation["movieId"].to_numpy(np.int64)
    popularity = PopularityRecommender(final_train[1])
    final_states = {name: fit_model(name, *final_train, choice.chosen[name]) for name in ("seq_rules", "item_knn",
                                                                                           "slist")}
    parts = {"next_movie": PrevOnly(NextMovieRecommender(*final_train, fallback=popularity), "next_movie"),
             **{name: load_model(name, state) for name, state in final_states.items()}}
    hybrid = SequenceHybrid(parts, choice.chosen["seq_hybrid"], depth=DEPTH, exclude_seen=True)
    val_hr = dict(choice.validation_hit_ratio)
    extra = {}
    rerank_info = None
    if rerank is not None:  # as seq_rerank_model + its hit ratio: the stored choice over the refitted parts
        chosen = choice.chosen["seq_rerank"]
        members = sequence_members(parts["next_movie"], final_states)
        extra["seq_rerank"] = Reranker.from_state(
            state_from_choice(chosen), members, popularity.ranked_ids,
            popularity.ranked_counts, extra_features=extra_fn)
        rerank_info = {"chosen": {k: v for k, v in chosen.items() if k not in ("feature_names", "weights", "mean",
                                                                               "std", "part_names", "booster")
                                  and not k.startswith("content_")},
                       "inner_hit_ratio": choice.inner_hit_ratio, "selected": choice.selected,
                       "validation_in_sample": choice.validation_hit_ratio["seq_rerank"],
                       "grid": choice.tables["seq_rerank"].to_dict("records"), **choice.info,
                       "weights": dict(zip(chosen["feature_names"], chosen["weights"], strict=True))}
    taste_info = {}
    if taste is not None:  # (rating values, genre table)
        part = _taste_part(users, movies, times, taste[0], taste[1], split, choice, min_movie_ratings, eval_size,
                           lambda line: print(f"  [{label}] {line}", flush=True))
        extra["taste"] = part["model"]
        extra["seq_hybrid+taste"] = SequenceHybrid({**parts, "taste": part["model"]}, part["weights"],
                                                   depth=DEPTH, exclude_seen=True)
        val_hr["taste"], val_hr["seq_hybrid+taste"] = part["val_hr"], part["val_hr_blend"]
        taste_info = {"taste_chosen": part["chosen"], "blend_with_taste": part["weights"]}
        print(part["table"].sort_values("hit_ratio", ascending=False).head(8).to_string(index=False))

    # ---- the one scoring on the evaluation window
    strategies = {"popularity": PrevOnly(popularity), **parts, "seq_hybrid": hybrid, **extra}
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
        if rerank or "seq_hybrid+taste" in hits:
            vs = mcnemar_exact(h, hits["seq_hybrid"])
            row.update({"p_vs_seq_hybrid": vs["p_value"] if name != "seq_hybrid" else float("nan"),
                        "b_h": vs["b"], "c_h": vs["c"]})
        for _, _, bl in HISTORY_BINS:
            sel = bins == bl
            row[f"hr[{bl}]"] = float(h[sel].mean()) if sel.any() else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("hr", ascending=False).reset_index(drop=True)
    tuned = [n for n in hits if n not in ("next_movie", "popularity", "seq_rerank")]
    best_on_val = max(tuned, key=lambda n: val_hr[n])
    if rerank is not None and best_on_val == "seq_hybrid":  # the two judged alike: sequence_tuning's selection
        best_on_val = choice.selected
    best_part = max(("seq_rules", "item_knn", "slist"), key=lambda n: val_hr[n])
    summary = {
        "label": label, "ratings": int(len(users)), "min_movie_ratings": min_movie_ratings, "eval_size": eval_size,
        "grid": "full" if full_grid else "the asset's", "tuning_cutoff": split.tuning_cutoff,
        "final_cutoff": split.final_cutoff, "validation_users": int(split.validation["userId"].nunique()),
        "evaluation_users": int(split.evaluation["userId"].nunique()),
        "history_bins_n": {bl: int((bins == bl).sum()) for _, _, bl in HISTORY_BINS},
        "chosen": {name: {k: v for k, v in params.items() if not k.startswith("content_") and k != "booster"}
                   for name, params in choice.chosen.items()},
        "best_on_validation": best_on_val, "best_single_part_on_validation": best_part,
        "seconds": round(time.perf_counter() - started, 1), **taste_info,
    }
    if rerank_info is not None:
        summary["rerank"] = rerank_info
    return {"summary": summary, "table": table, "hits": {n: h.astype(int).tolist() for n, h in hits.items()}}


# ---------------------------------------------------------------------------- --rerank

FULL_RERANK_GRID = {"views": [False, True], "scores": [False, True], "l2": [1e-3, 1e-2, 1e-1], "earlier": [0, 1, 2]}
"""``--rerank-grid full``: the grid sequence_tuning's (``rerank_choice.RERANK_GRID``) was cut from."""
DEMO_MOVIES = ROOT / "data" / "demo" / "movies.csv"


def _genre_table(data: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted movie ids, 0/1 movies x genres matrix) from ``movies.csv`` genres (the demo's file; for the
    real data what ``make_real_small_dataset.py`` writes: TMDB genres, built in memory)."""
    if data == "demo":
        frame = pd.read_csv(DEMO_MOVIES)
        ids, texts = frame["movieId"].to_numpy(np.int64), list(frame["genres"])
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import make_real_small_dataset as real_small

        src = real_small.load_source(REAL.parent)
        links = src["links"]
        rows = real_small.movies_rows(src, links[links["movieId"].astype(int).isin(src["rated"])])
        ids, texts = np.array([r[0] for r in rows], dtype=np.int64), [r[2] for r in rows]
    sets = [set() if not isinstance(t, str) else {g for g in t.split("|") if g and g != "(no genres listed)"}
            for t in texts]
    names = sorted(set().union(*sets))
    matrix = np.zeros((len(ids), len(names)), dtype=np.float32)
    for i, gs in enumerate(sets):
        matrix[i, [names.index(g) for g in gs]] = 1.0
    order = np.argsort(ids, kind="stable")
    return ids[order], matrix[order]


def content_table(folder: Path):
    """The catalogue's TMDB metadata (``ContentTable``) from a data folder's ``links.csv`` and
    ``tmdb/ko-KR`` snapshot, read as the pipeline's ``tmdb_movie_info_kr`` reads them."""
    from rcmd_pipeline.recommenders.content import ContentTable
    from rcmd_pipeline.resources.tmdb.snapshot import SnapshotTmdbClient

    links = pd.read_csv(folder / "links.csv", dtype={"tmdbId": "Int64"})
    links = links[links["tmdbId"].notna()]
    items = [(int(m), int(t)) for m, t in zip(links["movieId"], links["tmdbId"], strict=True)]
    records, _ = SnapshotTmdbClient(snapshot_dir=str(folder / "tmdb" / "ko-KR")).fetch_details(items, folder)
    frame = pd.DataFrame(list(records.values()))
    return ContentTable.from_frame(frame)


def genre_similarity(table: tuple[np.ndarray, np.ndarray]):
    """(queries, candidates) -> {"genre jaccard with prev": Jaccard of the candidate's and the previous
    movie's genre sets, 0 when either is unknown or has none}."""
    ids, matrix = table

    def rows_of(movie_ids: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(ids, movie_ids), len(ids) - 1)
        return np.where(ids[at] == movie_ids, at, -1)

    def extra(q, c) -> dict[str, np.ndarray]:
        a, b = rows_of(c.ids), rows_of(q.prev[c.rows])
        ok = (a >= 0) & (b >= 0)
        ga, gb = matrix[np.maximum(a, 0)], matrix[np.maximum(b, 0)]
        inter = (ga * gb).sum(axis=1)
        union = ga.sum(axis=1) + gb.sum(axis=1) - inter
        return {"genre jaccard with prev": np.where(ok & (union > 0), inter / np.maximum(union, 1), 0.0)}

    return extra


def print_result(result: dict) -> None:
    s, table = result["summary"], result["table"]
    print(f"\n== {s['label']}: {s['ratings']:,} ratings, min_movie_ratings={s['min_movie_ratings']}, "
          f"eval_size={s['eval_size']} ({s['evaluation_users']} users in evaluation, {s['validation_users']} in "
          f"validation), {s['grid']} grid, {s['seconds']} s")
    print("pairs by earlier ratings:", s["history_bins_n"])
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    print("best on validation:", s["best_on_validation"], "| hybrid's best single part on validation:",
          s["best_single_part_on_validation"])
    print("chosen:", json.dumps({name: {k: v for k, v in params.items()
                                        if k not in ("feature_names", "weights", "mean", "std", "booster")
                                        and not k.startswith("content_")}
                                 for name, params in s["chosen"].items()}, default=str))
    if "taste_chosen" in s:
        print("taste chosen:", json.dumps(s["taste_chosen"]), "| blend with taste:", json.dumps(s["blend_with_taste"]))
    if "rerank" in s:
        r = s["rerank"]
        print("seq_rerank chosen on the inner split:", r["chosen"], "| inner HR@10:", r["inner_hit_ratio"],
              f"| selected on validation: {r['selected']} | validation candidate recall {r['candidate_recall']:.4f}",
              f"| queries used {r['queries_used']}, converged {r['converged']} | {r['seconds']} s")
        print(pd.DataFrame(r["grid"]).to_string(index=False))


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
    from rcmd_pipeline.recommenders.training import leakage_cutoff

    return leakage_cutoff(build_eval_transitions(*load_window(path, None)))


def _cutoff_in_child(path: str) -> int:
    """Computed in its own process, so the evaluation set's memory never counts against a fit."""
    out = subprocess.run([sys.executable, __file__, "--cutoff-of", path], check=True, capture_output=True,
                         text=True)
    return int(out.stdout.strip().splitlines()[-1])


class _NextMovieFit:
    """``next_movie``'s model (the sequence_tuning step fits it too) in the ``fit`` shape of the others."""

    @staticmethod
    def fit(users, movies, times) -> dict[str, np.ndarray]:
        return NextMovieRecommender(users, movies, times).state()


FIT_ONE_PARAMS = {
    "next_movie": (_NextMovieFit, {}),
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
              "items": int(len(state["item_ids"])) if "item_ids" in state else None,
              "load_average": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps(result), flush=True)
    return result


def _tune_scale(path: str, rerank: RerankOptions | None = None) -> dict:
    """``sequence_tuning``'s work on a 32M-row file, in this process: the ratings before the
    evaluation window loaded compactly (what the asset reads), then choose_sequence_parameters."""
    import psutil

    cutoff = _cutoff_in_child(path)
    rss_before = psutil.Process().memory_info().rss / 2**20
    wall, cpu = time.perf_counter(), time.process_time()

    def progress(line: str) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  [{time.perf_counter() - wall:7.1f} s, RSS {psutil.Process().memory_info().rss / 2**20:,.0f} MB, "
              f"peak {peak:,.0f} MB] {line}", flush=True)

    choice = choose_sequence_parameters(lambda: load_window(path, cutoff), cutoff, 1000, 3000, K,
                                        fixed={"slist": SLIST_ITEMS}, depth=DEPTH, max_len=MAX_LEN, log=progress,
                                        max_training_ratings=TUNING_MAX_RATINGS, rerank=rerank)  # as the asset does
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"cutoff": cutoff,
              "tune_wall_seconds": round(wall, 1), "tune_cpu_seconds": round(cpu, 1),
              "rss_before_mb": round(rss_before),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "chosen": {name: {k: v for k, v in params.items() if k not in ("booster", "weights", "mean", "std",
                                                                              "feature_names")
                                and not k.startswith("content_")} for name, params in choice.chosen.items()},
              "validation_hit_ratio": choice.validation_hit_ratio,
              "load_average": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps(result, default=str), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["real", "demo", "both", "none"], default="both")
    ap.add_argument("--real-min-ratings", type=int, default=20)
    ap.add_argument("--real-eval-size", type=int, default=1000)
    ap.add_argument("--full-grid", action="store_true", help="tune on the larger grid the asset's was cut from")
    ap.add_argument("--taste", action="store_true",
                    help="also tune the user-taste part (rating values x genres) and blend it in as a fifth part")
    ap.add_argument("--rerank", action="store_true",
                    help="also a learned re-ranker over the parts' lists (chosen by an inner split of validation)")
    ap.add_argument("--rerank-content", action="store_true",
                    help="with --rerank: the previous movie's TMDB content neighbours as a part, their genre "
                         "Jaccard and language as features (real data: benchmarks/work/real-small)")
    ap.add_argument("--rerank-genres", action="store_true",
                    help="with --rerank: add the genre Jaccard of each candidate with the previous movie as a feature")
    ap.add_argument("--rerank-grid", choices=["asset", "full", "trees"], default="asset",
                    help="with --rerank: sequence_tuning's grid, the larger one it was cut from, or its trees' point")
    ap.add_argument("--rerank-max-iter", help="with --rerank: L-BFGS iterations to choose from, e.g. 200,600")
    ap.add_argument("--json", help="write each data set's summary and table to this JSON file")
    ap.add_argument("--scale", help="a 32M-row ratings.parquet: time each fit in its own process")
    ap.add_argument("--fit-one", nargs=2, metavar=("PARQUET", "STRATEGY"),
                    help="one fit in this process: load the training window compactly, fit, print time and RSS")
    ap.add_argument("--cutoff", type=int, help="with --fit-one: the training cutoff (default: the study's)")
    ap.add_argument("--save-state", help="with --fit-one: write the fitted state to this .npz")
    ap.add_argument("--tune-scale", metavar="PARQUET",
                    help="sequence_tuning's whole choice on a 32M-row file: time and peak RSS of this process")
    ap.add_argument("--cutoff-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cutoff_of:
        print(_study_cutoff(args.cutoff_of))
        return
    if args.fit_one:
        _fit_one(*args.fit_one, cutoff=args.cutoff, save=args.save_state)
        return
    rerank = None
    if args.rerank:
        grid = expand_grid(FULL_RERANK_GRID if args.rerank_grid == "full" else
                           [p for p in RERANK_GRID if p.get("model") == "boosted"] if args.rerank_grid == "trees"
                           else RERANK_GRID)
        if args.rerank_max_iter:
            grid = [{**p, "max_iter": int(v)} for p in grid for v in args.rerank_max_iter.split(",")]
        rerank = RerankOptions(grid=grid)
    content = {}
    if args.rerank_content and not args.tune_scale:
        content = {"demo": content_table(DEMO.parent), "real": content_table(REAL_SMALL)}
    if args.tune_scale:  # with --rerank: the re-ranker too, as sequence_tuning chooses it
        if rerank is not None and args.rerank_content:  # the data folder's own TMDB snapshot
            rerank = RerankOptions(grid=rerank.grid, max_iter=rerank.max_iter,
                                   content=content_table(Path(args.tune_scale).parent))
        _tune_scale(args.tune_scale, rerank)
        return
    results = []
    if args.data in ("real", "both"):
        if content:
            rerank = RerankOptions(grid=rerank.grid, max_iter=rerank.max_iter, content=content["real"])
        if REAL.exists():
            taste = (_rating_values(REAL), _real_genres()) if args.taste else None
            results.append(evaluate("real ratings_small", *_load(REAL), args.real_min_ratings,
                                    args.real_eval_size, args.full_grid, rerank,
                                    _genre_table("real") if args.rerank_genres else None, taste))
            print_result(results[-1])
        else:
            print(f"{REAL} is absent: skipping the real data set")
    if args.data in ("demo", "both"):
        if content:
            rerank = RerankOptions(grid=rerank.grid, max_iter=rerank.max_iter, content=content["demo"])
        taste = (_rating_values(DEMO), _demo_genres()) if args.taste else None
        results.append(evaluate("demo", *_load(DEMO), 1000, 3000, args.full_grid, rerank,
                                _genre_table("demo") if args.rerank_genres else None, taste))
        print_result(results[-1])
    if args.json and results:
        Path(args.json).write_text(json.dumps([{"summary": r["summary"], "table": r["table"].to_dict("records"),
                                                "hits": r["hits"]}
                                               for r in results], default=str, indent=1))
    if args.scale:
        cutoff = _cutoff_in_child(args.scale)
        for name in (n for n in FIT_ONE_PARAMS if n != "next_movie"):
            subprocess.run([sys.executable, __file__, "--fit-one", args.scale, name, "--cutoff", str(cutoff)],
                           check=True)


if __name__ == "__main__":
    main()
