"""Build a MovieLens-layout folder, with a TMDB-shaped Korean snapshot, from the real small public data.

    python benchmarks/make_real_small_dataset.py --out benchmarks/work/real-small
    RCMD_DATASET_PATH=benchmarks/work/real-small dagster asset materialize -m rcmd_pipeline.definitions --select '*'

Source: ``../shared/data/real-movies-small/`` beside the project (``--source`` to change it): the
100,004 MovieLens ratings of "The Movies Dataset" and partial TMDB metadata. It is for benchmarks
only and must never be committed (MovieLens © GroupLens, research use; TMDB data from TMDB), so
the output belongs under the git-ignored ``benchmarks/work/``.

Written to ``--out``:

* ``ratings.csv`` — ``ratings_small.csv`` byte for byte (userId, movieId, rating, timestamp);
* ``links.csv`` — movieId, imdbId (leading zeros kept), tmdbId (empty when unknown) from
  ``links_small.csv``, only for movies that were rated;
* ``movies.csv`` — movieId, title, genres for every rated movie: the English TMDB title (from
  ``tmdb_5000_movies.csv``, else ``overviews_en_partial.csv``, else ``collection_by_tmdb_id.csv``)
  with the release year as MovieLens writes it, else ``Movie <movieId>``; genres are the English
  TMDB genres joined by ``|``, else MovieLens' ``(no genres listed)``;
* ``tmdb/ko-KR/<tmdbId>.json`` — a ``/3/movie/{id}?language=ko-KR``-shaped body for every linked
  movie, as ``rcmd_pipeline.resources.tmdb.parse_movie_details`` reads it. Korean title and
  overview from ``korean_overviews_1000.csv`` where present; otherwise the title falls back to the
  English one (TMDB does the same for an untranslated title) and the overview stays empty (TMDB
  does NOT fall back to English for overviews, and neither do we: an English text must never pose
  as a Korean overview). Tagline empty (no Korean taglines in the source). ``belongs_to_collection``
  {id, name} from ``collection_by_tmdb_id.csv`` + ``collection_ids.csv`` (English collection
  names). Release date and runtime from ``tmdb_5000_movies.csv``, else the Korean file's release
  date; genres by TMDB genre id with TMDB's Korean genre names.

The output is deterministic: same source, same bytes (sorted rows, sorted JSON keys, no dates of
the run). Stale snapshot files from an earlier build are removed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "real-movies-small"

# TMDB's genre list in ko-KR (GET /3/genre/movie/list?language=ko-KR), as in data/demo's snapshot.
KOREAN_GENRES = {
    28: "액션", 12: "모험", 16: "애니메이션", 35: "코미디", 80: "범죄", 99: "다큐멘터리", 18: "드라마",
    10751: "가족", 14: "판타지", 36: "역사", 27: "공포", 10402: "음악", 9648: "미스터리", 10749: "로맨스",
    878: "SF", 10770: "TV 영화", 53: "스릴러", 10752: "전쟁", 37: "서부",
}


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def _first_by_id(frame: pd.DataFrame, id_column: str) -> dict[int, dict]:
    """Rows keyed by integer TMDB id; the first row wins for a repeated id (the copies agree)."""
    frame = frame[frame[id_column].notna()]
    out: dict[int, dict] = {}
    for row in frame.to_dict("records"):
        out.setdefault(int(row[id_column]), row)
    return out


def load_source(source: Path) -> dict:
    """Read every source file needed, with ids as integers and text as text."""
    missing = [name for name in ("ratings_small.csv", "links_small.csv", "tmdb_5000_movies.csv",
                                 "overviews_en_partial.csv", "collection_by_tmdb_id.csv", "collection_ids.csv",
                                 "korean_overviews_1000.csv") if not (source / name).is_file()]
    if missing:
        sys.exit(f"{source}: missing {', '.join(missing)} (see its README.md)")
    ratings_head = (source / "ratings_small.csv").open(encoding="utf-8").readline().strip()
    if ratings_head != "userId,movieId,rating,timestamp":
        sys.exit(f"{source}/ratings_small.csv: unexpected header {ratings_head!r}")
    rated = pd.read_csv(source / "ratings_small.csv", usecols=["movieId"])["movieId"].unique()
    links = pd.read_csv(source / "links_small.csv", dtype=str, keep_default_na=False)
    t5 = pd.read_csv(source / "tmdb_5000_movies.csv", keep_default_na=False, na_values=[""])
    en = pd.read_csv(source / "overviews_en_partial.csv", keep_default_na=False, na_values=[""])
    coll = pd.read_csv(source / "collection_by_tmdb_id.csv", keep_default_na=False, na_values=[""])
    coll_ids = pd.read_csv(source / "collection_ids.csv", keep_default_na=False)
    ko = pd.read_csv(source / "korean_overviews_1000.csv", keep_default_na=False, na_values=[""])
    return {
        "rated": {int(m) for m in rated},
        "links": links,
        "t5": _first_by_id(t5, "id"),
        "en": _first_by_id(en, "id"),
        "coll": _first_by_id(coll, "id"),
        "coll_ids": {str(n): int(i) for n, i in zip(coll_ids["name"], coll_ids["id_collection"], strict=True)},
        "ko": _first_by_id(ko, "tmdb_id"),
    }


def english_title(src: dict, tmdb_id: int | None) -> str | None:
    if tmdb_id is None:
        return None
    for table in ("t5", "en", "coll"):
        row = src[table].get(tmdb_id)
        if row is not None and _present(row.get("title")):
            return str(row["title"]).strip()
    return None


def release_date(src: dict, tmdb_id: int | None) -> str:
    for table, column in (("t5", "release_date"), ("ko", "release_date")):
        row = src[table].get(tmdb_id) if tmdb_id is not None else None
        if row is not None and _present(row.get(column)) and len(str(row[column]).strip()) == 10:
            return str(row[column]).strip()
    return ""


def _t5_genres(src: dict, tmdb_id: int | None) -> list[dict]:
    row = src["t5"].get(tmdb_id) if tmdb_id is not None else None
    if row is None or not _present(row.get("genres")):
        return []
    return json.loads(row["genres"])


def movies_rows(src: dict, links: pd.DataFrame) -> list[tuple[int, str, str]]:
    tmdb_by_movie = {int(m): (int(t) if t else None) for m, t in zip(links["movieId"], links["tmdbId"], strict=True)}
    rows = []
    for movie_id in sorted(src["rated"]):
        tmdb_id = tmdb_by_movie.get(movie_id)
        title = english_title(src, tmdb_id)
        if title is None:
            title = f"Movie {movie_id}"
        else:
            year = release_date(src, tmdb_id)[:4]
            title = f"{title} ({year})" if year else title
        genres = "|".join(g["name"] for g in _t5_genres(src, tmdb_id)) or "(no genres listed)"
        rows.append((movie_id, title, genres))
    return rows


def tmdb_body(src: dict, movie_id: int, imdb_id: str, tmdb_id: int) -> dict:
    """One ko-KR ``/3/movie/{id}`` body from what the source knows; TMDB's empty values elsewhere."""
    t5 = src["t5"].get(tmdb_id) or {}
    ko = src["ko"].get(tmdb_id) or {}
    coll = src["coll"].get(tmdb_id) or {}
    en_title = english_title(src, tmdb_id)
    title = str(ko["title_ko"]).strip() if _present(ko.get("title_ko")) else (en_title or f"Movie {movie_id}")
    overview = str(ko["overview_ko"]).strip() if _present(ko.get("overview_ko")) else ""
    collection = None
    name = coll.get("belongs_to_collection")
    if _present(name) and name != "{}" and name in src["coll_ids"]:
        collection = {"backdrop_path": None, "id": src["coll_ids"][name], "name": name, "poster_path": None}
    runtime = t5.get("runtime")
    runtime = int(runtime) if _present(runtime) else 0
    genres = [{"id": int(g["id"]), "name": KOREAN_GENRES.get(int(g["id"]), g["name"])}
              for g in _t5_genres(src, tmdb_id)]
    votes = ko if ko else (t5 if t5 else coll)

    def number(row: dict, column: str, kind):
        return kind(row[column]) if _present(row.get(column)) else kind(0)

    return {
        "adult": False,
        "backdrop_path": None,
        "belongs_to_collection": collection,
        "budget": number(t5, "budget", int),
        "genres": genres,
        "homepage": str(t5["homepage"]) if _present(t5.get("homepage")) else "",
        "id": tmdb_id,
        "imdb_id": f"tt{imdb_id}" if imdb_id else None,
        "original_language": str(t5["original_language"]) if _present(t5.get("original_language")) else "",
        "original_title": (str(t5["original_title"]) if _present(t5.get("original_title"))
                           else (en_title or title)),
        "overview": overview,
        "popularity": round(number(t5, "popularity", float), 3),
        "poster_path": None,
        "release_date": release_date(src, tmdb_id),
        "revenue": number(t5, "revenue", int),
        "runtime": runtime,
        "status": str(t5["status"]) if _present(t5.get("status")) else "Released",
        "tagline": "",
        "title": title,
        "video": False,
        "vote_average": number(votes, "vote_average", float),
        "vote_count": number(votes, "vote_count", int),
    }


def build(source: Path, out: Path) -> dict:
    src = load_source(source)
    links = src["links"]
    links = links[links["movieId"].astype(int).isin(src["rated"])].copy()
    links["_m"] = links["movieId"].astype(int)
    links = links.sort_values("_m").drop(columns="_m")
    out.mkdir(parents=True, exist_ok=True)

    shutil.copyfile(source / "ratings_small.csv", out / "ratings.csv")
    links[["movieId", "imdbId", "tmdbId"]].to_csv(out / "links.csv", index=False, lineterminator="\n")
    movies = pd.DataFrame(movies_rows(src, links), columns=["movieId", "title", "genres"])
    movies.to_csv(out / "movies.csv", index=False, lineterminator="\n")

    snapshot = out / "tmdb" / "ko-KR"
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    stats = {"movies": len(movies), "links_with_tmdb": 0, "korean_overview": 0, "in_a_collection": 0}
    for movie_id, imdb_id, tmdb in zip(links["movieId"], links["imdbId"], links["tmdbId"], strict=True):
        if not tmdb:
            continue
        body = tmdb_body(src, int(movie_id), imdb_id, int(tmdb))
        (snapshot / f"{int(tmdb)}.json").write_text(
            json.dumps(body, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        stats["links_with_tmdb"] += 1
        stats["korean_overview"] += bool(body["overview"])
        stats["in_a_collection"] += body["belongs_to_collection"] is not None
    (out / "SOURCE.txt").write_text(
        "Built by benchmarks/make_real_small_dataset.py from ../shared/data/real-movies-small (MovieLens ratings "
        "© GroupLens, research use; TMDB data from The Movie Database). For benchmarks only: never commit.\n",
        encoding="utf-8")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (use benchmarks/work/...)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the real-movies-small folder")
    args = parser.parse_args()
    if not args.source.is_dir():
        sys.exit(f"{args.source} not found: this benchmark needs ../shared/data/real-movies-small")
    stats = build(args.source, args.out)
    print(f"{args.out}: {stats['movies']} movies in ratings.csv/movies.csv, {stats['links_with_tmdb']} TMDB "
          f"snapshot files, {stats['korean_overview']} with a Korean overview, {stats['in_a_collection']} in a "
          "collection")


if __name__ == "__main__":
    main()
