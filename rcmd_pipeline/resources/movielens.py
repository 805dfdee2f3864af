"""The MovieLens folder: reading and validating ``ratings``, ``links.csv`` and ``movies.csv``.

The layout is MovieLens 32M's: ``ratings.parquet`` (or ``ratings.csv``) with userId, movieId,
rating and timestamp in epoch seconds; ``links.csv`` with movieId, imdbId, tmdbId; ``movies.csv``
with movieId, title, genres. Every problem with the files is raised as :class:`DatasetError`,
whose message names the file, the column and what was expected, so a user can fix the input
without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from rcmd_pipeline.settings import DATASET_ENV

RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
LINKS_COLUMNS = ("movieId", "imdbId", "tmdbId")
MOVIES_COLUMNS = ("movieId", "title", "genres")

# How each ratings column is checked and stored. Ids are int32 (MovieLens ids fit easily),
# timestamps int64 epoch seconds, ratings float32.
_INT_RULES = {
    "userId": (1, np.int32, "positive whole numbers (user ids)"),
    "movieId": (1, np.int32, "positive whole numbers (movie ids)"),
    "timestamp": (0, np.int64, "whole numbers of seconds since 1970 (epoch seconds)"),
}
_SHOW_ROWS = 5


class DatasetError(ValueError):
    """The MovieLens input is missing or malformed; the message says where and what was expected."""


class MovieLensFiles(ConfigurableResource):
    """A MovieLens folder (``RCMD_DATASET_PATH``; the demo data set when unset)."""

    path: str

    @property
    def folder(self) -> Path:
        return Path(self.path)

    def read_ratings(self, columns: Sequence[str] = RATINGS_COLUMNS) -> pd.DataFrame:
        return read_ratings(self.folder, columns)

    def read_links(self) -> pd.DataFrame:
        return read_links(self.folder)

    def read_movies(self) -> pd.DataFrame:
        return read_movies(self.folder)

    def ratings_file(self) -> Path:
        return ratings_file(self.folder)


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DatasetError(
            f"MovieLens folder {folder} does not exist. Set {DATASET_ENV} to a folder holding "
            "ratings.parquet (or ratings.csv), links.csv and movies.csv."
        )
    if not folder.is_dir():
        raise DatasetError(f"{DATASET_ENV}={folder} is not a folder; expected the MovieLens folder.")


def ratings_file(folder: Path) -> Path:
    """``ratings.parquet`` if present, else ``ratings.csv``; a clear error when neither exists."""
    _check_folder(folder)
    for name in ("ratings.parquet", "ratings.csv"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(
        f"No ratings file in {folder} (from {DATASET_ENV}): expected ratings.parquet or ratings.csv "
        f"with columns {', '.join(RATINGS_COLUMNS)}."
    )


def _require_columns(path: Path, found: Sequence[str], expected: Sequence[str]) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}. Expected columns: {', '.join(expected)}; "
            f"found: {', '.join(map(str, found)) or '(none)'}."
        )


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip().lstrip("\ufeff")
    return [c.strip().strip('"') for c in first.split(",")] if first else []


def _row_label(path: Path, index: int) -> str:
    # CSV: line numbers as an editor shows them (the header is line 1); parquet: 0-based rows.
    return f"line {index + 2}" if path.suffix == ".csv" else f"row {index}"


def _offenders(path: Path, name: str, raw: pd.Series, bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad)
    def show(value) -> str:
        return repr(value.item() if isinstance(value, np.generic) else value)

    shown = ", ".join(f"{_row_label(path, int(i))}: {show(raw.iloc[i])}" for i in idx[:_SHOW_ROWS])
    more = f" (and {len(idx) - _SHOW_ROWS} more)" if len(idx) > _SHOW_ROWS else ""
    return f"{len(idx)} row(s) of {len(raw)}; first: {shown}{more}"


def _int_column(path: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    minimum, dtype, meaning = _INT_RULES[name]
    if pa.types.is_integer(column.type) and column.null_count == 0:
        values = column.to_numpy()
        bad = values < minimum
        if not bad.any() and (len(values) == 0 or values.max() <= np.iinfo(dtype).max):
            return values.astype(dtype, copy=False)
        raw = pd.Series(values)
    else:
        raw = column.to_pandas()
        numeric = pd.to_numeric(raw, errors="coerce")
        bad = (numeric.isna() | (numeric % 1 != 0) | (numeric < minimum)).to_numpy()
        if not bad.any():
            values = numeric.to_numpy(dtype=np.float64)
            if len(values) == 0 or values.max() <= np.iinfo(dtype).max:
                return values.astype(dtype)
    bad = bad | (pd.to_numeric(raw, errors="coerce") > np.iinfo(dtype).max).to_numpy()
    raise DatasetError(
        f"{path}: column {name!r} must hold {meaning}; {_offenders(path, name, raw, bad)}."
    )


def _float_column(path: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    raw = column.to_pandas()
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        raise DatasetError(f"{path}: column {name!r} must hold numbers; {_offenders(path, name, raw, bad)}.")
    return numeric.to_numpy(dtype=np.float32)


def _check_parquet(path: Path) -> None:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc}).") from exc
    _require_columns(path, schema.names, RATINGS_COLUMNS)


def _read_csv_table(path: Path, columns: Sequence[str]) -> pa.Table:
    _require_columns(path, _csv_header(path), RATINGS_COLUMNS)
    wanted = {c: t for c, t in {"userId": pa.int64(), "movieId": pa.int64(),
                                 "rating": pa.float64(), "timestamp": pa.int64()}.items() if c in columns}
    try:
        return pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(include_columns=list(columns), column_types=wanted)
        )
    except pa.ArrowInvalid:
        # Slow path, only for broken files: read as text so the offending rows can be named.
        try:
            return pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(columns), column_types={c: pa.string() for c in columns}
                ),
            )
        except pa.ArrowInvalid as exc:
            raise DatasetError(
                f"{path}: not a well-formed CSV file with columns {', '.join(RATINGS_COLUMNS)} ({exc})."
            ) from exc


def _parquet_int_column_fast(path: Path, name: str) -> np.ndarray | None:
    """Read one integer column row group by row group straight into a compact array.

    Peak memory is the result plus one row group, instead of the whole int64 column plus its
    copy. Returns None when the column needs the careful path (not integers, nulls, out of range),
    which then names the offending rows.
    """
    minimum, dtype, _ = _INT_RULES[name]
    parquet = pq.ParquetFile(path)
    out = np.empty(parquet.metadata.num_rows, dtype=dtype)
    top = np.iinfo(dtype).max
    pos = 0
    for group in range(parquet.num_row_groups):
        column = parquet.read_row_group(group, columns=[name]).column(0)
        if not pa.types.is_integer(column.type) or column.null_count:
            return None
        for chunk in column.chunks:
            values = chunk.to_numpy()
            if len(values) and (values.min() < minimum or values.max() > top):
                return None
            out[pos:pos + len(values)] = values
            pos += len(values)
    return out if pos == len(out) else None


def read_ratings(folder: Path, columns: Sequence[str] = RATINGS_COLUMNS) -> pd.DataFrame:
    """Read and validate the ratings, returning compact dtypes (int32 ids, int64 timestamps).

    Only ``columns`` are read (a subset of userId, movieId, rating, timestamp), which keeps memory
    low on MovieLens 32M when a step needs no ratings values.
    """
    unknown = [c for c in columns if c not in RATINGS_COLUMNS]
    if unknown:
        raise ValueError(f"unknown ratings columns requested: {unknown}")
    path = ratings_file(folder)
    out = {}
    if path.suffix == ".parquet":
        _check_parquet(path)
        for name in columns:
            values = _parquet_int_column_fast(path, name) if name in _INT_RULES else None
            if values is None:
                column = pq.read_table(path, columns=[name]).column(name)
                values = _float_column(path, name, column) if name == "rating" else _int_column(path, name, column)
            out[name] = values
        return pd.DataFrame(out, copy=False)
    table = _read_csv_table(path, columns)
    for name in columns:
        column = table.column(name)
        out[name] = _float_column(path, name, column) if name == "rating" else _int_column(path, name, column)
    return pd.DataFrame(out, copy=False)


def _read_small_csv(folder: Path, name: str, expected: Sequence[str], dtype: dict) -> tuple[Path, pd.DataFrame]:
    _check_folder(folder)
    path = folder / name
    if not path.is_file():
        raise DatasetError(f"{path} not found (from {DATASET_ENV}): expected columns {', '.join(expected)}.")
    _require_columns(path, _csv_header(path), expected)
    try:
        frame = pd.read_csv(path, dtype=dtype, usecols=list(expected), keep_default_na=False,
                            na_values=[""], encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: could not be read as UTF-8 CSV with columns {', '.join(expected)} "
                           f"({exc}).") from exc
    return path, frame


def _id_column(path: Path, frame: pd.DataFrame, name: str, *, nullable: bool) -> pd.Series:
    raw = frame[name]
    numeric = pd.to_numeric(raw, errors="coerce")
    missing = raw.isna()
    bad = ~missing & (numeric.isna() | (numeric % 1 != 0) | (numeric < 1))
    if not nullable:
        bad |= missing
    if bad.any():
        raise DatasetError(
            f"{path}: column {name!r} must hold positive whole numbers"
            f"{' (or be empty)' if nullable else ''}; {_offenders(path, name, raw, bad.to_numpy())}."
        )
    return numeric.astype("Int64") if nullable else numeric.astype(np.int64)


def read_links(folder: Path) -> pd.DataFrame:
    """``links.csv``: movieId (int), imdbId (text, leading zeros kept), tmdbId (nullable int)."""
    path, frame = _read_small_csv(folder, "links.csv", LINKS_COLUMNS, dtype=str)
    return pd.DataFrame({
        "movieId": _id_column(path, frame, "movieId", nullable=False),
        "imdbId": frame["imdbId"].astype("string"),
        "tmdbId": _id_column(path, frame, "tmdbId", nullable=True),
    })


def read_movies(folder: Path) -> pd.DataFrame:
    """``movies.csv``: movieId (int), title and genres (text, as MovieLens writes them)."""
    path, frame = _read_small_csv(folder, "movies.csv", MOVIES_COLUMNS, dtype=str)
    return pd.DataFrame({
        "movieId": _id_column(path, frame, "movieId", nullable=False),
        "title": frame["title"].fillna("").astype("string"),
        "genres": frame["genres"].fillna("").astype("string"),
    })
