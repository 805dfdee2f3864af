"""Benchmark: hit_ratio_series's whole computation on an 87,000-movie catalogue in SQLite.

    python benchmarks/bench_series.py [--movies 87000] [--pairs 3000] [--repeat 5] [--workdir DIR] [--json PATH]

Setup (untimed): a synthetic ``movie`` table in a SQLite file (WAL mode, through
``MovieDatabase.replace_movies``): MovieLens-like sparse ids, about 30% of the movies in series of
2–10 films, release dates from 1920 to 2024 with 3% unknown, a Korean overview of a few hundred
characters per movie so rows have a realistic size; and 3,000 previous movie ids drawn from the
catalogue. The fill pool (the study's "every movie id seen in the ratings") is the catalogue's ids.

Timed, ``--repeat`` times after one warm-up run: ``MovieDatabase.series_catalog()`` (one query,
a fresh engine, as in the asset) + ``SeriesRecommender(...)`` + ``recommend(prev, 10)``, reported as
median/min/max with the three parts. The study needed 15 s for the 3,000 queries (two Oracle round
trips each).

Checks (untimed): every row's series part equals the study's per-query SQL
(``... WHERE series_id = :s AND movie_id <> :m ORDER BY release_date DESC NULLS LAST, movie_id``)
and no row has a repeated id or PAD. The per-query loop is also timed once, on one open SQLite
connection (no network), as the study's way on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import print_machine  # noqa: E402

from rcmd_pipeline.recommenders import PAD, SeriesRecommender  # noqa: E402
from rcmd_pipeline.resources.movie_db import MovieDatabase, movie  # noqa: E402

K = 10
OVERVIEW_WORDS = ["카우보이", "인형", "우디는", "꼬마", "주인인", "앤디의", "가장", "사랑받는", "장난감이다", "그러나",
                  "어느날", "새로운", "친구가", "나타나고", "모험이", "시작된다"]


def synthetic_catalogue(n_movies: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 300_001), n_movies, replace=False))
    series_ids = np.zeros(n_movies, dtype=np.int64)
    order = rng.permutation(n_movies)
    target, used, sid = int(0.3 * n_movies), 0, 0
    while used < target:
        size = int(rng.integers(2, 11))
        sid += 1
        series_ids[order[used:used + size]] = sid * 7 + 3  # TMDB-like sparse collection ids
        used += size
    days = rng.integers(0, (date(2024, 12, 31) - date(1920, 1, 1)).days, n_movies)
    release = [date(1920, 1, 1) + timedelta(days=int(d)) for d in days]
    unknown = rng.random(n_movies) < 0.03
    release = [None if u else d for d, u in zip(release, unknown, strict=True)]
    words = np.array(OVERVIEW_WORDS)
    overview = [" ".join(words[rng.integers(0, len(words), 60)]) for _ in range(n_movies)]
    return pd.DataFrame({
        "movie_id": ids, "movie_title": [f"영화 {i}" for i in ids], "original_language": "en",
        "original_title": [f"Movie {i}" for i in ids], "poster_path": [f"/{i}.jpg" for i in ids],
        "overview": overview, "series_id": series_ids, "release_date": release,
        "runtime": rng.integers(60, 180, n_movies), "tagline": None,
        "imdb_id": [f"tt{i:07d}" for i in ids], "adult": "N", "useyn": "Y",
    })


def one_run(db: MovieDatabase, fill_ids: np.ndarray, prev: np.ndarray) -> tuple[dict, np.ndarray]:
    t0 = time.perf_counter()
    catalog = db.series_catalog()
    t1 = time.perf_counter()
    rec = SeriesRecommender(catalog, fill_ids, seed=0)
    t2 = time.perf_counter()
    out = rec.recommend(prev, K)
    t3 = time.perf_counter()
    return {"query": t1 - t0, "build": t2 - t1, "recommend": t3 - t2, "total": t3 - t0}, out


def study_way(url: str, prev: np.ndarray) -> tuple[float, list[list[int]]]:
    """The study's two queries per previous movie (bound parameters), on one open connection."""
    by_id = sa.select(movie.c.series_id).where(movie.c.movie_id == sa.bindparam("movie_id"))
    members = (sa.select(movie.c.movie_id)
               .where(movie.c.series_id == sa.bindparam("series_id"), movie.c.movie_id != sa.bindparam("movie_id"))
               .order_by(movie.c.release_date.desc().nulls_last(), movie.c.movie_id))
    engine = sa.create_engine(url)
    lists = []
    try:
        with engine.connect() as conn:
            t0 = time.perf_counter()
            for m in prev.tolist():
                series_id = conn.execute(by_id, {"movie_id": m}).scalar()
                if series_id:
                    lists.append(conn.execute(members, {"series_id": series_id, "movie_id": m}).scalars().all())
                else:
                    lists.append([])
            seconds = time.perf_counter() - t0
    finally:
        engine.dispose()
    return seconds, lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=87_000)
    parser.add_argument("--pairs", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the SQLite file (default: temporary)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = print_machine()

    with tempfile.TemporaryDirectory(prefix="bench_series_") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        db_file = folder / "bench_series.sqlite"
        db = MovieDatabase(url=f"sqlite:///{db_file}")
        frame = synthetic_catalogue(args.movies)
        t0 = time.perf_counter()
        db.replace_movies(frame, regtime=datetime(2025, 1, 1))
        load_seconds = time.perf_counter() - t0
        in_series = int((frame["series_id"] > 0).sum())
        n_series = frame.loc[frame["series_id"] > 0, "series_id"].nunique()
        print(f"catalogue: {len(frame):,} movies, {in_series:,} in {n_series:,} series; "
              f"SQLite file {db_file.stat().st_size / 1e6:.1f} MB; load {load_seconds:.1f} s")

        rng = np.random.default_rng(42)
        prev = rng.choice(frame["movie_id"].to_numpy(), args.pairs)
        fill_ids = frame["movie_id"].to_numpy()

        one_run(db, fill_ids, prev)  # warm-up: imports, page cache
        runs = []
        for _ in range(args.repeat):
            timing, out = one_run(db, fill_ids, prev)
            runs.append(timing)
            print("  run: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timing.items()))

        study_seconds, lists = study_way(db.url, prev)
        mismatches = sum(out[i, :len(lst[:K])].tolist() != lst[:K] for i, lst in enumerate(lists))
        bad_rows = sum(len(set(r)) != K or PAD in r for r in out.tolist())
        with_series = sum(bool(lst) for lst in lists)

    totals = [r["total"] for r in runs]
    result = {
        "movies": len(frame), "in_series": in_series, "pairs": args.pairs, "k": K, "repeat": args.repeat,
        "total_median_s": statistics.median(totals), "total_min_s": min(totals), "total_max_s": max(totals),
        "parts_median_s": {p: statistics.median(r[p] for r in runs) for p in ("query", "build", "recommend")},
        "study_way_sqlite_s": study_seconds, "load_s": load_seconds,
        "rows_with_series": with_series, "series_mismatches": mismatches, "bad_rows": bad_rows,
        "machine": machine,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if mismatches or bad_rows:
        raise SystemExit(f"check failed: {mismatches} rows differ from the per-query SQL, {bad_rows} bad rows")


if __name__ == "__main__":
    main()
