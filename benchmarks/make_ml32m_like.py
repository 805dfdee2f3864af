"""Generate a seeded, MovieLens-32M-shaped ``ratings.parquet`` for benchmarks.

    python benchmarks/make_ml32m_like.py --out benchmarks/work/ml32m [--force] [--seed N] [--scale S]

The file has exactly the headline counts of MovieLens 32M: 32,000,204 ratings by 200,948 users
(ids 1..200948, each with at least 20 ratings) of 84,432 distinct movies whose ids are spread over
MovieLens' sparse id space 1..292,757 (both ends present). Columns and types mimic a parquet file
written by pandas from MovieLens' ``ratings.csv`` (``pd.read_csv(...).to_parquet(...)``): userId,
movieId and timestamp are int64 and rating is float64 (0.5..5.0 in half stars, whole stars only
before 2003-02-18 as on MovieLens), snappy-compressed, with pandas' schema metadata. (The real
files' values fit in int32/float32; int64/float64 is what pandas infers from the CSV, so this is
the layout a study's ``ratings.parquet`` would have.)

Shape, chosen to match what matters to the evaluation-set benchmark:

* movie popularity is a log-log piecewise curve fitted so that about 3,300 movies have at least
  1,000 ratings and they hold about 88 % of all ratings (ML-32M: ~28 M of 32 M), with the most
  rated movie near 95 k ratings and a long tail down to single ratings; low (old) ids are more
  often popular, as in MovieLens;
* ratings per user are 20 + a lognormal (median ~72, mean 159.2, max capped at 35,000);
* every user rates distinct movies, drawn by successive weighted sampling without replacement
  (heavy users saturate the popular head, as real heavy raters do);
* each user is active over a user-specific window (start year weighted like MovieLens' activity,
  lognormal length from minutes to years, clipped to 1995-01-09 11:46:49 .. 2023-10-12 23:59:59
  UTC, both ends present); ratings fall in sessions and consecutive ratings in a session are often
  in the same second (bulk rating pages), so many (user, timestamp) ties exist;
* rows are ordered by userId then timestamp, ties within a (user, second) in random order
  (``--order user-time``, the default). MovieLens' own README says its ratings.csv is ordered by
  userId then movieId; ``--order user-movie`` writes that order instead. The order matters to the
  study's procedure: its stable (userId, date) sort keeps ties in file order.

Not modelled (irrelevant to the benchmark): rating values do not depend on user or movie, and a
movie can be rated before its (unknown) release date.

``--scale S`` (0 < S < 1, default 1) makes a proportionally smaller file for smoke tests: S times
the ratings, users and movies (same id space, popularity ranks scaled by S, per-user counts capped
at half the catalogue); S = 1 is the file described above, byte for byte.

Memory stays well under 3 GB: the 32 M movie assignments are held as int32 (128 MB) and the rows
are built and written ~2 M at a time. The file is written to a temporary name and renamed at the
end, so an interrupted run never leaves a truncated ``ratings.parquet`` behind.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

N_RATINGS = 32_000_204
N_USERS = 200_948
N_MOVIES = 84_432
MAX_MOVIE_ID = 292_757
MIN_PER_USER = 20
MAX_PER_USER = 35_000
T_MIN = 789_652_009  # 1995-01-09 11:46:49 UTC
T_MAX = 1_697_155_199  # 2023-10-12 23:59:59 UTC
HALF_STARS_FROM = 1_045_526_400  # 2003-02-18 UTC: MovieLens allowed half stars from then on

# Expected ratings of the movie at popularity rank r, interpolated log-log (before saturation).
POPULARITY_KNOTS = [(1, 250_000), (100, 70_000), (1_000, 10_000), (2_800, 1_050),
                    (10_000, 100), (30_000, 8), (N_MOVIES, 1)]
RATING_VALUES = np.arange(1, 11) / 2.0
RATING_PROBS = np.array([1.6, 3.2, 1.7, 6.6, 5.2, 19.6, 13.1, 26.6, 8.8, 13.6])
RATING_PROBS = RATING_PROBS / RATING_PROBS.sum()
# Relative number of users whose activity starts in each year 1995..2023.
YEAR_WEIGHTS = [2, 8, 5, 3, 6, 9, 5, 4, 4, 4, 5, 4, 3, 3, 2.5, 2, 2, 2, 2, 2, 6, 8, 7, 6, 6, 6, 5, 4, 3]

HEAVY_USER = 1_000  # users with at least this many ratings are sampled by Gumbel top-k
DENSE_IDS = 8_500  # MovieLens' original catalogue: ids up to ~10,000, densely used
DONOR_MIN_RATINGS = 20_000  # a never-drawn movie takes one rating from a movie rated this often
CHUNK_RATINGS = 2_000_000
ROW_GROUP = 1 << 20
DEFAULT_OUT = Path(__file__).resolve().parent / "work" / "ml32m"
SCHEMA = pa.Schema.from_pandas(
    pd.DataFrame({"userId": pd.Series([], dtype="int64"), "movieId": pd.Series([], dtype="int64"),
                  "rating": pd.Series([], dtype="float64"), "timestamp": pd.Series([], dtype="int64")}),
    preserve_index=False,
)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s, peak {_peak_mb():6.0f} MB] {msg}", flush=True)


def set_scale(scale: float) -> None:
    """Rescale the module's shape constants to ``scale`` times the ratings, users and movies.

    ``scale`` = 1 leaves them as above. Below 1, popularity ranks shrink with the catalogue while
    the per-rank weights stay, so the head still holds most ratings; users still rate 20+ movies.
    """
    global N_RATINGS, N_USERS, N_MOVIES, MAX_PER_USER, POPULARITY_KNOTS, HEAVY_USER, DENSE_IDS
    global DONOR_MIN_RATINGS
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if scale == 1:
        return
    N_RATINGS = round(32_000_204 * scale)
    N_USERS = round(200_948 * scale)
    N_MOVIES = round(84_432 * scale)
    if N_USERS < 50 or N_MOVIES < 200:
        raise ValueError(f"scale {scale} is too small ({N_USERS} users, {N_MOVIES} movies)")
    MAX_PER_USER = min(35_000, N_MOVIES // 2)
    knots, last = [], 0
    for rank, count in [(1, 250_000), (100, 70_000), (1_000, 10_000), (2_800, 1_050), (10_000, 100),
                        (30_000, 8)]:
        rank = max(round(rank * scale), last + 1)
        if rank < N_MOVIES:
            knots.append((rank, count))
            last = rank
    POPULARITY_KNOTS = knots + [(N_MOVIES, 1)]
    HEAVY_USER = min(1_000, max(MIN_PER_USER, N_MOVIES // 20))
    DENSE_IDS = max(1, round(8_500 * scale))
    DONOR_MIN_RATINGS = max(2, round(20_000 * scale))


def movie_ids_by_popularity(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(movie id of each popularity rank, sampling weight of each rank)."""
    dense = DENSE_IDS
    low = np.concatenate([[1], rng.choice(np.arange(2, 10_001), dense - 1, replace=False)])
    high = np.concatenate([rng.choice(np.arange(10_001, MAX_MOVIE_ID), N_MOVIES - dense - 1,
                                      replace=False), [MAX_MOVIE_ID]])
    ids = np.concatenate([low, high]).astype(np.int64)
    score = np.log(ids) + rng.normal(0.0, 3.0, len(ids))  # low (old) ids tend to be popular
    by_rank = ids[np.argsort(score, kind="stable")]
    knots = np.array(POPULARITY_KNOTS, dtype=float)
    ranks = np.arange(1, N_MOVIES + 1)
    weight = np.exp(np.interp(np.log(ranks), np.log(knots[:, 0]), np.log(knots[:, 1])))
    return by_rank, weight / weight.sum()


def ratings_per_user(rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed counts, each >= 20, summing exactly to N_RATINGS."""
    extra_total = N_RATINGS - MIN_PER_USER * N_USERS
    cap = MAX_PER_USER - MIN_PER_USER
    x = np.exp(rng.normal(np.log(51.0), 1.4, N_USERS))
    for _ in range(10):
        x = np.minimum(x * (extra_total / x.sum()), cap)
    extra = np.floor(x).astype(np.int64)
    short = extra_total - int(extra.sum())
    room = np.flatnonzero(extra < cap)
    extra[rng.choice(room, short, replace=False)] += 1
    counts = MIN_PER_USER + extra
    assert counts.sum() == N_RATINGS and counts.min() >= MIN_PER_USER
    return counts


def _sample_light(counts: np.ndarray, cdf: np.ndarray, rng: np.random.Generator,
                  factor: float = 1.4) -> np.ndarray:
    """Distinct movie ranks for each user, concatenated in user order.

    Each user's movies are the first ``n`` distinct values of an i.i.d. weighted stream, which is
    exactly successive weighted sampling without replacement. Users whose stream was too short are
    redrawn with a longer one.
    """
    draws = np.ceil(counts * factor).astype(np.int64) + 8
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), draws)
    movie = np.searchsorted(cdf, rng.random(len(owner)) * cdf[-1], side="right").astype(np.int64)
    movie = np.minimum(movie, N_MOVIES - 1)
    _, first = np.unique((owner << 17) | movie, return_index=True)
    first.sort()  # first occurrences, user by user, in draw order
    own = owner[first]
    distinct = np.bincount(own, minlength=len(counts))
    start = np.concatenate([[0], np.cumsum(distinct)[:-1]])
    keep = (np.arange(len(first)) - start[own]) < counts[own]
    ok = distinct >= counts
    out_owner, out_movie = own[keep & ok[own]], movie[first][keep & ok[own]]
    if not ok.all():
        redo = np.flatnonzero(~ok)
        again = _sample_light(counts[redo], cdf, rng, factor * 2)
        out_owner = np.concatenate([out_owner, np.repeat(redo, counts[redo])])
        out_movie = np.concatenate([out_movie, again])
        out_movie = out_movie[np.argsort(out_owner, kind="stable")]
    return out_movie.astype(np.int32)


def assign_movies(counts: np.ndarray, weight: np.ndarray, seed: np.random.SeedSequence,
                  t0: float) -> np.ndarray:
    """Popularity rank of every rating, users in id order, each user's movies distinct."""
    out = np.empty(N_RATINGS, dtype=np.int32)
    cdf = np.cumsum(weight)
    log_w = np.log(weight)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    bounds = _chunks(counts)
    for i, ((lo, hi), child) in enumerate(zip(bounds, seed.spawn(len(bounds)), strict=True)):
        rng = np.random.default_rng(child)
        c = counts[lo:hi]
        heavy = c >= HEAVY_USER
        chunk = out[offsets[lo]:offsets[hi]]  # a view: filled in place
        # Light users' runs, concatenated in user order, fill the light users' slots in order.
        chunk[~np.repeat(heavy, c)] = _sample_light(c[~heavy], cdf, rng)
        for j in np.flatnonzero(heavy):  # Gumbel top-k == weighted sampling without replacement
            n = int(c[j])
            keys = log_w + rng.gumbel(size=N_MOVIES)
            start = offsets[lo + j] - offsets[lo]
            chunk[start:start + n] = np.argpartition(-keys, n - 1)[:n]
        if i % 4 == 3 or hi == len(counts):
            _log(f"movies drawn for users up to {hi:,}", t0)
    return out


def cover_every_movie(ranks: np.ndarray, rng: np.random.Generator) -> int:
    """Give each never-drawn movie one rating taken from a very popular movie; returns how many."""
    counts = np.bincount(ranks, minlength=N_MOVIES)
    missing = np.flatnonzero(counts == 0)
    if len(missing) == 0:
        return 0
    donors = np.flatnonzero(counts[ranks] >= DONOR_MIN_RATINGS)
    pos = donors[rng.choice(len(donors), len(missing), replace=False)]
    ranks[pos] = missing  # nobody rated a missing movie, so no user gets it twice
    return len(missing)


def _chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    ends = np.searchsorted(np.cumsum(counts), np.arange(CHUNK_RATINGS, N_RATINGS, CHUNK_RATINGS))
    edges = np.unique(np.concatenate([[0], ends + 1, [len(counts)]]))
    edges = edges[edges <= len(counts)]
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _year_starts() -> np.ndarray:
    years = np.arange(1995 - 1970, 2025 - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)
    years[0], years[-1] = T_MIN, T_MAX + 1
    return years


def timestamps(counts: np.ndarray, rng: np.random.Generator, pin_first: int, pin_last: int
               ) -> np.ndarray:
    """Epoch seconds for the ratings of users with ``counts`` (concatenated in user order).

    ``pin_first``/``pin_last`` (local user index or -1) are shifted to touch T_MIN / T_MAX.
    """
    n_users, total = len(counts), int(counts.sum())
    owner = np.repeat(np.arange(n_users), counts)
    # Activity window [start, end] of each user.
    years = _year_starts()
    year_p = np.array(YEAR_WEIGHTS, dtype=float) * np.diff(years) / 31_557_600
    year = rng.choice(len(YEAR_WEIGHTS), n_users, p=year_p / year_p.sum())
    start = years[year] + (rng.random(n_users) * (years[year + 1] - years[year])).astype(np.int64)
    length = np.exp(rng.normal(np.log(20 * 86_400), 2.2, n_users)).clip(600, T_MAX - T_MIN)
    end = np.minimum(start + length.astype(np.int64), T_MAX)
    span = end - start
    # Sessions: the first (often the sign-up binge) at the window start, the others within it.
    n_sess = np.minimum(1 + rng.poisson(counts / 40.0), counts)
    sess_base = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
    sess_owner = np.repeat(np.arange(n_users), n_sess)
    sess_start = start[sess_owner] + (rng.random(len(sess_owner)) * span[sess_owner]).astype(np.int64)
    sess_start[sess_base] = start
    sess = sess_base[owner] + np.floor(n_sess[owner] * rng.random(total) ** 2).astype(np.int64)
    # Within a session, consecutive ratings are often in the same second.
    p_same = rng.beta(2.0, 4.0, n_users)
    p_same[rng.random(n_users) < 0.02] = 0.95  # bulk raters
    gap = np.where(rng.random(total) < p_same[owner], 0, 1 + rng.exponential(25.0, total).astype(np.int64))
    order = np.argsort(sess, kind="stable")  # sess ids are grouped by user already
    gap_sorted = gap[order]
    first_of_sess = np.concatenate([[True], sess[order][1:] != sess[order][:-1]])
    gap_sorted[first_of_sess] = 0
    csum = np.cumsum(gap_sorted)
    group_start = np.maximum.accumulate(np.where(first_of_sess, np.arange(total), 0))
    offset = np.empty(total, dtype=np.int64)
    offset[order] = csum - csum[group_start]
    t = sess_start[sess] + offset
    # Keep every user inside [T_MIN, T_MAX]; pin two users to the ends of the range.
    bounds = np.concatenate([[0], np.cumsum(counts)[:-1]])
    t_max = np.maximum.reduceat(t, bounds)
    t_min = np.minimum.reduceat(t, bounds)
    shift = np.minimum(T_MAX - t_max, 0)
    if pin_first >= 0:
        shift[pin_first] = T_MIN - t_min[pin_first]
    if pin_last >= 0:
        shift[pin_last] = T_MAX - t_max[pin_last]
    return np.clip(t + shift[owner], T_MIN, T_MAX)


def rating_values(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.choice(RATING_VALUES, len(t), p=RATING_PROBS)
    half = (t < HALF_STARS_FROM) & (r % 1 != 0)
    # Before half stars existed: round a half-star value to a neighbouring whole star.
    down = (rng.random(len(t)) < 0.5) & (r > 0.5)
    r[half] += np.where(down[half], -0.5, 0.5)
    return r


def write_ratings(path: Path, counts: np.ndarray, ranks: np.ndarray, id_of_rank: np.ndarray,
                  order: str, seed: np.random.SeedSequence, pins: tuple[int, int], t0: float) -> None:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    bounds = _chunks(counts)
    with pq.ParquetWriter(path, SCHEMA, compression="snappy") as writer:
        for i, ((lo, hi), child) in enumerate(zip(bounds, seed.spawn(len(bounds)), strict=True)):
            rng = np.random.default_rng(child)
            c = counts[lo:hi]
            users = np.repeat(np.arange(lo + 1, hi + 1, dtype=np.int64), c)
            movies = id_of_rank[ranks[offsets[lo]:offsets[hi]]]
            pin_first = pins[0] - lo if lo <= pins[0] < hi else -1
            pin_last = pins[1] - lo if lo <= pins[1] < hi else -1
            t = timestamps(c, rng, pin_first, pin_last)
            r = rating_values(t, rng)
            if order == "user-time":  # (user, time), ties within a second in random order
                idx = np.lexsort((rng.random(len(t)), t, users))
            else:  # MovieLens' documented order: (user, movie)
                idx = np.lexsort((movies, users))
            table = pa.table({"userId": users[idx], "movieId": movies[idx], "rating": r[idx],
                              "timestamp": t[idx]}, schema=SCHEMA)
            writer.write_table(table, row_group_size=ROW_GROUP)
            if i % 4 == 0 or hi == len(counts):
                _log(f"wrote users up to {hi:,} ({offsets[hi]:,} rows)", t0)


def verify(path: Path, t0: float) -> dict:
    """Read the file back and measure what it holds (one column at a time, to stay small)."""
    pf = pq.ParquetFile(path)

    def column(name: str) -> np.ndarray:  # row group by row group into one array: no Arrow copy
        out = np.empty(pf.metadata.num_rows, dtype=np.int64)
        pos = 0
        for i in range(pf.metadata.num_row_groups):
            part = pf.read_row_group(i, columns=[name]).column(0).to_numpy()
            out[pos:pos + len(part)] = part
            pos += len(part)
        return out

    u = column("userId")
    m = column("movieId")
    same_user = u[1:] == u[:-1]
    user_sorted = bool(np.all(u[1:] >= u[:-1]))
    movie_sorted = bool(np.all(~same_user | (m[1:] > m[:-1])))
    per_user = np.bincount(u)[1:]
    per_movie = np.bincount(m)
    t = column("timestamp")
    time_sorted = bool(np.all(~same_user | (t[1:] >= t[:-1])))
    t_range = [int(t.min()), int(t.max())]
    del same_user
    key = u << 31  # timestamps < 2**31
    key |= t
    del t
    key.sort()
    ties = int(np.sum(key[1:] == key[:-1]))  # ratings in a (user, second) already used by another
    del key
    key = u << 19  # movie ids < 2**19
    key |= m
    u_range, m_range = [int(u.min()), int(u.max())], [int(m.min()), int(m.max())]
    del u, m
    key.sort()
    duplicates = int(np.sum(key[1:] == key[:-1]))
    del key
    popular = per_movie >= 1000
    stats = {
        "rows": int(per_user.sum()),
        "users": int(np.count_nonzero(per_user)),
        "user_id_range": u_range,
        "min_ratings_per_user": int(per_user[per_user > 0].min()),
        "median_ratings_per_user": float(np.median(per_user[per_user > 0])),
        "max_ratings_per_user": int(per_user.max()),
        "movies": int(np.count_nonzero(per_movie)),
        "movie_id_range": m_range,
        "max_ratings_per_movie": int(per_movie.max()),
        "movies_with_1000_plus": int(popular.sum()),
        "ratings_of_those_movies": int(per_movie[popular].sum()),
        "timestamp_range": t_range,
        "ratings_sharing_a_user_second_with_an_earlier_one": ties,
        "duplicate_user_movie_pairs": duplicates,
        "sorted_by_user": user_sorted,
        "sorted_by_user_then_time": user_sorted and time_sorted,
        "sorted_by_user_then_movie": user_sorted and movie_sorted,
        "row_groups": pf.metadata.num_row_groups,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "schema": {f.name: str(f.type) for f in pf.schema_arrow},
    }
    _log("verified", t0)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for ratings.parquet "
                    f"(default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=20231012)
    ap.add_argument("--order", choices=["user-time", "user-movie"], default="user-time",
                    help="row order: by user then timestamp (ties random; default) or by user then "
                    "movieId (MovieLens' documented order)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing ratings.parquet")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the file back")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of MovieLens 32M's ratings, users and movies (default 1; e.g. 0.02 for a "
                    "smoke test)")
    args = ap.parse_args(argv)
    set_scale(args.scale)

    path = args.out / "ratings.parquet"
    if path.exists() and not args.force:
        print(f"{path} exists; not regenerating (use --force).")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = np.random.SeedSequence(args.seed)
    s_movies, s_users, s_assign, s_cover, s_write = root.spawn(5)
    id_of_rank, weight = movie_ids_by_popularity(np.random.default_rng(s_movies))
    rng_users = np.random.default_rng(s_users)
    counts = ratings_per_user(rng_users)
    pins = tuple(int(x) for x in rng_users.choice(N_USERS, 2, replace=False))
    _log(f"{N_USERS:,} users, {N_RATINGS:,} ratings, {N_MOVIES:,} movie ids up to {MAX_MOVIE_ID:,}", t0)
    ranks = assign_movies(counts, weight, s_assign, t0)
    moved = cover_every_movie(ranks, np.random.default_rng(s_cover))
    _log(f"{moved:,} never-drawn movies each given one rating taken from a 20k+ movie", t0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_ratings(tmp, counts, ranks, id_of_rank, args.order, s_write, pins, t0)
        del ranks
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s (seed {args.seed}, order {args.order}, "
          f"scale {args.scale:g}, "
          f"peak RSS {_peak_mb():.0f} MB)")
    if not args.no_verify:
        stats = verify(path, t0)
        width = max(map(len, stats))
        for k, v in stats.items():
            print(f"  {k:<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                  else f"  {k:<{width}}  {v}")
        ok = (stats["rows"] == N_RATINGS and stats["users"] == N_USERS and stats["movies"] == N_MOVIES
              and stats["min_ratings_per_user"] >= MIN_PER_USER and stats["duplicate_user_movie_pairs"] == 0
              and stats["movie_id_range"][1] == MAX_MOVIE_ID
              and stats["timestamp_range"] == [T_MIN, T_MAX])
        print(f"total {time.perf_counter() - t0:.1f} s, peak RSS {_peak_mb():.0f} MB; counts "
              f"{'exact' if ok else 'NOT AS SPECIFIED'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
