"""Rebuild the demo data set in ``data/demo`` byte for byte.

    python -m rcmd_pipeline.demo.generate            # writes data/demo
    python -m rcmd_pipeline.demo.generate --out DIR  # anywhere else

Inputs, committed beside this file:

- ``catalog_facts.csv``: real movies with their real MovieLens ids, TMDB ids, IMDb ids, titles,
  release dates, runtimes, genres and TMDB collections (facts), and TMDB vote counts used as a
  popularity prior;
- ``ko/movies_part*.csv`` and ``ko/series_part*.csv``: Korean titles, taglines, overviews and series
  names written for this project (not copied from TMDB).

Outputs, in MovieLens 32M's layout plus TMDB-shaped ``ko-KR`` movie details:

- ``ratings.csv`` (userId, movieId, rating, timestamp), ``links.csv``, ``movies.csv``;
- ``tmdb/ko-KR/<tmdbId>.json``: what ``GET /3/movie/{id}?language=ko-KR`` returns, in TMDB's shape.

The ratings are synthetic, from this seeded user model (all randomness from one
``random.Random(SEED)``, whose ``random()`` sequence Python guarantees across versions, and plain
float arithmetic, so the bytes are the same on every machine):

- each user has a taste: a weight per genre; a movie's appeal to a user is its popularity
  (TMDB vote count ** 0.75) times (0.3 + the user's mean weight over the movie's genres) squared;
- a user rates a heavy-tailed number of movies (20 + lognormal), starting at a time between 1996
  and mid-2023, never a movie before its release date, never the same movie twice;
- after each movie the user goes on **within its series** (the next unseen film by release date)
  with probability ``P_SERIES`` when the movie belongs to a series, else to a **similar story**
  (one of the ``SIMILAR_TOP`` movies sharing the most genres, same language first) with probability
  ``P_SIMILAR``, else picks by appeal;
- ratings come in bursts: with probability ``P_SAME_SECOND`` the next rating has the same timestamp
  (as MovieLens users rating many films at once), otherwise minutes or days later;
- the rating value grows with the movie's appeal to the user, plus noise, in half stars.

As on the real TMDB, where many less-known films have no Korean overview, the
``NO_OVERVIEW_COUNT`` least-voted movies outside any series ship with an empty ``overview``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent.parent / "data" / "demo"

SEED = 20251208
N_USERS = 4600
POPULARITY_EXPONENT = 0.3
P_SERIES = 0.45
P_SIMILAR = 0.30
SIMILAR_TOP = 12
P_SAME_SECOND = 0.30
P_SHORT_GAP = 0.45  # minutes; else days
NO_OVERVIEW_COUNT = 10
START = int(datetime(1996, 1, 1, tzinfo=timezone.utc).timestamp())
LATE_START = int(datetime(2023, 6, 30, tzinfo=timezone.utc).timestamp())
END = int(datetime(2023, 10, 12, tzinfo=timezone.utc).timestamp())

TMDB_GENRES = {  # TMDB genre ids and their ko-KR names
    "Action": (28, "액션"), "Adventure": (12, "모험"), "Animation": (16, "애니메이션"),
    "Comedy": (35, "코미디"), "Crime": (80, "범죄"), "Documentary": (99, "다큐멘터리"),
    "Drama": (18, "드라마"), "Family": (10751, "가족"), "Fantasy": (14, "판타지"),
    "History": (36, "역사"), "Horror": (27, "공포"), "Music": (10402, "음악"),
    "Mystery": (9648, "미스터리"), "Romance": (10749, "로맨스"), "Science Fiction": (878, "SF"),
    "TV Movie": (10770, "TV 영화"), "Thriller": (53, "스릴러"), "War": (10752, "전쟁"),
    "Western": (37, "서부"),
}
MOVIELENS_GENRES = {"Science Fiction": "Sci-Fi", "Family": "Children", "History": "Drama",
                    "TV Movie": "Drama"}


@dataclass
class Movie:
    movie_id: int
    tmdb_id: int
    imdb_id: str
    title: str
    original_title: str
    original_language: str
    release_date: str
    runtime: int
    genres: list[str]
    collection_id: int
    collection_name: str
    vote_count: int
    vote_average: float
    release_ts: int = 0
    title_ko: str = ""
    tagline_ko: str = ""
    overview_ko: str = ""
    similar: list[int] = field(default_factory=list)  # indexes into the catalogue


def load_catalog() -> tuple[list[Movie], dict[int, str]]:
    with open(HERE / "catalog_facts.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    movies = [
        Movie(
            movie_id=int(r["movieId"]), tmdb_id=int(r["tmdbId"]), imdb_id=r["imdb_id"], title=r["title"],
            original_title=r["original_title"], original_language=r["original_language"],
            release_date=r["release_date"], runtime=int(r["runtime"]), genres=r["genres"].split("|"),
            collection_id=int(r["collection_id"]), collection_name=r["collection_name"],
            vote_count=int(r["vote_count"]), vote_average=float(r["vote_average"]),
        )
        for r in rows
    ]
    movies.sort(key=lambda m: m.movie_id)
    texts: dict[int, dict] = {}
    for part in sorted((HERE / "ko").glob("movies_part*.csv")):
        with open(part, encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                texts[int(r["tmdbId"])] = r
    series_ko: dict[int, str] = {}
    for part in sorted((HERE / "ko").glob("series_part*.csv")):
        with open(part, encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                series_ko[int(r["collection_id"])] = r["name_ko"]
    no_overview = {m.movie_id for m in sorted((m for m in movies if not m.collection_id),
                                              key=lambda m: (m.vote_count, m.movie_id))[:NO_OVERVIEW_COUNT]}
    for m in movies:
        m.release_ts = int(datetime.fromisoformat(m.release_date).replace(tzinfo=timezone.utc).timestamp())
        t = texts.get(m.tmdb_id)
        if t:
            m.title_ko, m.tagline_ko, m.overview_ko = t["title_ko"], t["tagline_ko"], t["overview_ko"]
        if m.movie_id in no_overview:
            m.overview_ko = ""
    return movies, series_ko


def _similar(movies: list[Movie]) -> None:
    """Each movie's SIMILAR_TOP most similar others: shared genres (Jaccard), language, popularity."""
    sets = [set(m.genres) for m in movies]
    for i, m in enumerate(movies):
        scored = []
        for j, o in enumerate(movies):
            if i == j or (m.collection_id and o.collection_id == m.collection_id):
                continue
            jac = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
            scored.append((-(jac + 0.1 * (o.original_language == m.original_language)), -o.vote_count, j))
        scored.sort()
        m.similar = [j for _, _, j in scored[:SIMILAR_TOP]]


class _Picker:
    """Weighted choice over the catalogue with rejection of seen or unreleased movies."""

    def __init__(self, weights: list[float]):
        self.cumulative = []
        total = 0.0
        for w in weights:
            total += w
            self.cumulative.append(total)
        self.total = total

    def pick(self, rng: random.Random, ok) -> int | None:
        for _ in range(64):
            i = bisect_right(self.cumulative, rng.random() * self.total)
            i = min(i, len(self.cumulative) - 1)
            if ok(i):
                return i
        allowed = [i for i in range(len(self.cumulative)) if ok(i)]
        return allowed[int(rng.random() * len(allowed))] if allowed else None


@dataclass(frozen=True)
class Step:
    """The generator's state at one rating, for :func:`simulate`'s ``observe`` hook.

    ``seen`` is the live set of the movies rated before this one (copy it to keep it); ``branch``
    is what produced ``choice``: "series", "similar" or "appeal" (the picker, also when the series
    or similar branch found nothing). Indexes are into the catalogue list.
    """

    user: int
    appeal: list[float]
    picker: _Picker
    series: dict[int, list[int]]
    seen: set[int]
    prev: int | None
    now: int
    roll: float
    branch: str
    choice: int


def simulate(movies: list[Movie], seed: int = SEED, n_users: int = N_USERS,
             observe=None) -> list[tuple[int, int, float, int]]:
    """The ratings (userId, movieId, rating, timestamp) of the user model in the module docstring.

    ``observe``, if given, is called with a :class:`Step` before each rating is recorded (for
    ``benchmarks/demo_ceiling.py``); it must not use the generator's random numbers, so the ratings
    are the same with or without it.
    """
    rng = random.Random(seed)
    _similar(movies)
    genres = sorted({g for m in movies for g in m.genres})
    median_votes = sorted(m.vote_count for m in movies)[len(movies) // 2]
    popularity = [(m.vote_count or median_votes) ** POPULARITY_EXPONENT for m in movies]
    series: dict[int, list[int]] = {}
    for i, m in enumerate(movies):
        if m.collection_id:
            series.setdefault(m.collection_id, []).append(i)
    for members in series.values():
        members.sort(key=lambda i: (movies[i].release_ts, movies[i].movie_id))

    ratings = []
    for user in range(1, n_users + 1):
        taste = {g: rng.random() ** 2 for g in genres}
        appeal = [0.3 + sum(taste[g] for g in m.genres) / len(m.genres) for m in movies]
        picker = _Picker([p * a * a for p, a in zip(popularity, appeal, strict=True)])
        # later starts are likelier, as MovieLens grew over the years
        now = START + int((LATE_START - START) * math.sqrt(rng.random()))
        count = min(len(movies) - 1, 20 + int(rng.lognormvariate(3.2, 0.9)))
        seen: set[int] = set()
        prev = None
        for _ in range(count):
            def ok(i: int) -> bool:
                return i not in seen and movies[i].release_ts <= now  # noqa: B023 (used at once)

            choice = None
            roll = rng.random()
            if prev is not None and movies[prev].collection_id and roll < P_SERIES:
                members = series[movies[prev].collection_id]
                later = [i for i in members if ok(i) and movies[i].release_ts >= movies[prev].release_ts]
                earlier = [i for i in members if ok(i)]
                choice, branch = (later or earlier or [None])[0], "series"
            elif prev is not None and roll < P_SERIES + P_SIMILAR:
                options = [i for i in movies[prev].similar if ok(i)]
                if options:
                    choice, branch = options[int(rng.random() * len(options))], "similar"
            if choice is None:
                choice, branch = picker.pick(rng, ok), "appeal"
            if choice is None:
                break
            if observe is not None:
                observe(Step(user, appeal, picker, series, seen, prev, now, roll, branch, choice))
            seen.add(choice)
            stars = 1.0 + 2.2 * appeal[choice] + rng.gauss(0.0, 0.7)
            stars = min(5.0, max(0.5, round(stars * 2) / 2))
            ratings.append((user, movies[choice].movie_id, stars, now))
            prev = choice
            gap_roll = rng.random()
            if gap_roll >= P_SAME_SECOND:
                mean = 600.0 if gap_roll < P_SAME_SECOND + P_SHORT_GAP else 9 * 86400.0
                now += 1 + int(rng.expovariate(1.0 / mean))
            if now > END:
                break
    ratings.sort(key=lambda r: (r[0], r[3], r[1]))
    return ratings


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _movielens_title(m: Movie) -> str:
    return f"{m.title} ({m.release_date[:4]})"


def _movielens_genres(m: Movie) -> str:
    names = []
    for g in m.genres:
        name = MOVIELENS_GENRES.get(g, g)
        if name not in names:
            names.append(name)
    return "|".join(names)


def tmdb_details(m: Movie, series_ko: dict[int, str]) -> dict:
    """The movie as TMDB's ``/3/movie/{id}?language=ko-KR`` shapes it (fields this project reads and
    the common rest). Without a Korean translation TMDB falls back to the original title and an empty
    overview, and so does this."""
    collection = None
    if m.collection_id:
        collection = {"id": m.collection_id, "name": series_ko.get(m.collection_id, m.collection_name),
                      "poster_path": None, "backdrop_path": None}
    return {
        "adult": False,
        "backdrop_path": None,
        "belongs_to_collection": collection,
        "budget": 0,
        "genres": [{"id": TMDB_GENRES[g][0], "name": TMDB_GENRES[g][1]} for g in m.genres if g in TMDB_GENRES],
        "homepage": "",
        "id": m.tmdb_id,
        "imdb_id": m.imdb_id,
        "original_language": m.original_language,
        "original_title": m.original_title,
        "overview": m.overview_ko,
        "popularity": round(math.log1p(m.vote_count), 3),
        "poster_path": None,
        "release_date": m.release_date,
        "revenue": 0,
        "runtime": m.runtime,
        "status": "Released",
        "tagline": m.tagline_ko,
        "title": m.title_ko or m.original_title,
        "video": False,
        "vote_average": m.vote_average,
        "vote_count": m.vote_count,
    }


def render(movies: list[Movie], series_ko: dict[int, str], ratings) -> dict[str, bytes]:
    """Every output file as relative path -> bytes."""
    files = {
        "ratings.csv": _csv_text(["userId", "movieId", "rating", "timestamp"],
                                 ((u, m, f"{r:.1f}", t) for u, m, r, t in ratings)),
        "links.csv": _csv_text(["movieId", "imdbId", "tmdbId"],
                               ((m.movie_id, m.imdb_id.removeprefix("tt"), m.tmdb_id) for m in movies)),
        "movies.csv": _csv_text(["movieId", "title", "genres"],
                                ((m.movie_id, _movielens_title(m), _movielens_genres(m)) for m in movies)),
    }
    out = {name: text.encode("utf-8") for name, text in files.items()}
    for m in movies:
        body = json.dumps(tmdb_details(m, series_ko), ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        out[f"tmdb/ko-KR/{m.tmdb_id}.json"] = body.encode("utf-8")
    return out


def generate(out_dir: Path = DEFAULT_OUT) -> dict[str, bytes]:
    """Write the demo data set to ``out_dir`` and return what was written."""
    movies, series_ko = load_catalog()
    files = render(movies, series_ko, simulate(movies))
    for rel, data in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/demo)")
    args = parser.parse_args(argv)
    files = generate(args.out)
    ratings = files["ratings.csv"].count(b"\n") - 1
    print(f"wrote {len(files)} files to {args.out}: {ratings} ratings")


if __name__ == "__main__":
    main()
