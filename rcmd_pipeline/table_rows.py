"""TMDB movie details → rows of the study's ``movie`` and ``series`` tables (plain Python).

The study's tables, column for column:

- ``movie(movie_id, movie_title, original_language, original_title, poster_path, overview,
  series_id, release_date, runtime, tagline, imdb_id, adult, useyn, regtime)``: ``movie_id`` is the
  MovieLens id, ``movie_title`` the Korean title TMDB returns for ``ko-KR``, ``series_id`` TMDB's
  ``belongs_to_collection.id`` (0 when the movie belongs to no series);
- ``series(series_id, series_title, useyn, regtime)``: one row per TMDB collection, titled with
  the collection's (Korean) name.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

MOVIE_COLUMNS = ("movie_id", "movie_title", "original_language", "original_title", "poster_path", "overview",
                 "series_id", "release_date", "runtime", "tagline", "imdb_id", "adult", "useyn", "regtime")
SERIES_COLUMNS = ("series_id", "series_title", "useyn", "regtime")


def movie_rows(details: pd.DataFrame, regtime: datetime) -> pd.DataFrame:
    """One ``movie`` row per TMDB record (``tmdb_movie_info_kr``'s columns), ordered by movie_id."""
    frame = details.sort_values("movieId")
    release = pd.to_datetime(frame["release_date"], errors="coerce", format="%Y-%m-%d").dt.date
    rows = pd.DataFrame({
        "movie_id": frame["movieId"].astype("int64"),
        "movie_title": frame["title"],
        "original_language": frame["original_language"],
        "original_title": frame["original_title"],
        "poster_path": frame["poster_path"],
        "overview": frame["overview"],
        "series_id": frame["collection_id"].fillna(0).astype("int64"),
        "release_date": release.astype(object).where(release.notna(), None),
        "runtime": frame["runtime"].astype("Int64"),
        "tagline": frame["tagline"],
        "imdb_id": frame["imdb_id"],
        "adult": frame["adult"].map(lambda a: "Y" if a else "N"),
        "useyn": "Y",
        "regtime": regtime,
    })
    # Empty strings become NULLs: Oracle stores '' as NULL anyway, so every database agrees.
    text = ["movie_title", "original_language", "original_title", "poster_path", "overview", "tagline", "imdb_id"]
    rows[text] = rows[text].astype(object).where(rows[text].notna() & (rows[text] != ""), None)
    return rows.reset_index(drop=True)[list(MOVIE_COLUMNS)]


def series_rows(details: pd.DataFrame, regtime: datetime) -> pd.DataFrame:
    """One ``series`` row per TMDB collection that some movie belongs to, ordered by series_id.

    When movies disagree on a collection's name (fetched on different days), the most common one
    wins, then the alphabetically first, so the table does not depend on fetch order.
    """
    members = details.loc[details["collection_id"].fillna(0) > 0, ["collection_id", "collection_name"]]
    if members.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SERIES_COLUMNS})
    counts = members.value_counts().rename("n").reset_index()
    counts = counts.sort_values(["collection_id", "n", "collection_name"], ascending=[True, False, True])
    best = counts.drop_duplicates("collection_id")
    return pd.DataFrame({
        "series_id": best["collection_id"].astype("int64").to_numpy(),
        "series_title": best["collection_name"].to_numpy(),
        "useyn": "Y",
        "regtime": regtime,
    })[list(SERIES_COLUMNS)]


def _comparable(frame: pd.DataFrame) -> pd.Series:
    """Each row's content (all columns but regtime) as one string, equal across databases' types."""
    def norm(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA or value is pd.NaT:
            return ""
        if hasattr(value, "isoformat"):  # date or datetime (Oracle returns DATE as datetime)
            return value.isoformat()[:10]
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    columns = [c for c in frame.columns if c != "regtime"]
    return frame[columns].astype(object).apply(lambda row: "\x1f".join(norm(v) for v in row), axis=1)


def carry_regtime(new_rows: pd.DataFrame, existing: pd.DataFrame, key: str) -> pd.DataFrame:
    """Keep the stored ``regtime`` of rows whose content did not change, so that loading the same
    details twice leaves exactly the same rows; new and changed rows keep ``new_rows``' time."""
    if existing is None or existing.empty or new_rows.empty:
        return new_rows
    old = existing.set_index(existing[key].astype("int64"))
    old_content = _comparable(old[list(new_rows.columns)]) if set(new_rows.columns) <= set(old.columns) else None
    if old_content is None:
        return new_rows
    out = new_rows.copy()
    new_content = _comparable(out)
    keys = out[key].astype("int64")
    same = keys.isin(old.index) & (new_content.to_numpy() == old_content.reindex(keys).to_numpy())
    out.loc[same.to_numpy(), "regtime"] = old.loc[keys[same.to_numpy()], "regtime"].to_numpy()
    return out
