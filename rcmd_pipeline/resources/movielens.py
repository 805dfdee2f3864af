"""The MovieLens folder: reading and validating ``ratings``, ``links.csv`` and ``movies.csv``.

The layout is MovieLens 32M's: ``ratings.parquet`` (or ``ratings.csv``) with userId, movieId,
rating and timestamp in epoch seconds; ``links.csv`` with movieId, imdbId, tmdbId; ``movies.csv``
with movieId, title, genres. Every problem with the files is raised as :class:`DatasetError`,
whose message names the file, the column and what was expected, so a user can fix the input
without reading a traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
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
# How ratings.csv is parsed (exact 64-bit types, narrowed per block) and how much is read at once.
_CSV_TYPES = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
_CSV_BLOCK_BYTES = 4 << 20  # measured on 2 cores: 1 MB blocks cost more memory, 16 MB no faster
_PARQUET_BATCH_ROWS = 1 << 20


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

    def source_fingerprint(self, names: Sequence[str] | None = None) -> str:
        return source_fingerprint(self.folder, names)


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


def source_fingerprint(folder: Path, names: Sequence[str] | None = None) -> str:
    """A cheap fingerprint of the source files: sha256 over the folder and each file's name, size and mtime_ns.

    Only ``stat`` is called, so an unchanged night can tell in microseconds that 32 M ratings need
    not be read again. ``names`` defaults to the ratings file in use (``ratings.parquet`` or
    ``ratings.csv``), ``links.csv`` and ``movies.csv``; a missing file counts as "missing", so
    creating it changes the fingerprint. Replacing a file by one of the same size and the same
    modification time to the nanosecond goes unnoticed (as with make or rsync); touch it to force a
    re-read.
    """
    folder = Path(folder)
    if names is None:
        names = (ratings_file(folder).name, "links.csv", "movies.csv")
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in names:
        try:
            stat = (folder / name).stat()
            entry = f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}"
        except FileNotFoundError:
            entry = f"{name}\0missing"
        digest.update(b"\n" + entry.encode())
    return digest.hexdigest()


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


def _show(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _offenders(path: Path, name: str, raw: pd.Series, bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad)
    shown = ", ".join(f"{_row_label(path, int(i))}: {_show(raw.iloc[i])}" for i in idx[:_SHOW_ROWS])
    more = f" (and {len(idx) - _SHOW_ROWS} more)" if len(idx) > _SHOW_ROWS else ""
    return f"{len(idx)} row(s) of {len(raw)}; first: {shown}{more}"


Block = tuple[np.ndarray | None, np.ndarray | None, pd.Series | None]


def _int_block(name: str, column: pa.Array | pa.ChunkedArray) -> Block:
    """(compact values, None, None) when every value is valid, else (None, bad mask, raw values)."""
    minimum, dtype, _ = _INT_RULES[name]
    top = np.iinfo(dtype).max
    if pa.types.is_integer(column.type) and column.null_count == 0:
        values = column.to_numpy()
        if len(values) == 0 or (values.min() >= minimum and values.max() <= top):
            return values.astype(dtype, copy=False), None, None
        return None, (values < minimum) | (values > top), pd.Series(values)
    raw = column.to_pandas()
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = (numeric.isna() | (numeric % 1 != 0) | (numeric < minimum) | (numeric > top)).to_numpy()
    if not bad.any():
        return numeric.to_numpy(dtype=np.float64).astype(dtype), None, None
    return None, bad, raw


def _float_block(name: str, column: pa.Array | pa.ChunkedArray) -> Block:
    """Like :func:`_int_block` for the ratings values (any number; NaN and text are not)."""
    if pa.types.is_floating(column.type) and column.null_count == 0:
        values = column.to_numpy()
        bad = np.isnan(values)
        if not bad.any():
            return values.astype(np.float32), None, None
        return None, bad, pd.Series(values)
    raw = column.to_pandas()
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = numeric.isna().to_numpy()
    if not bad.any():
        return numeric.to_numpy(dtype=np.float32), None, None
    return None, bad, raw


class _Column:
    """One ratings column, checked block by block: its compact values, or its first offending rows.

    Blocks are converted as they arrive, so peak memory is the compact result plus one block,
    never the whole file as 64-bit Arrow columns (which cost 2.3 GB on MovieLens 32M). When the
    number of rows is known (parquet), the result is filled in place; otherwise (CSV) the blocks'
    arrays are joined at the end, which costs one extra column for a moment.
    """

    def __init__(self, path: Path, name: str, rows: int | None = None):
        self.path, self.name = path, name
        self.dtype = np.float32 if name == "rating" else _INT_RULES[name][1]
        self.meaning = "numbers" if name == "rating" else _INT_RULES[name][2]
        self.out = np.empty(rows, dtype=self.dtype) if rows is not None else None
        self.parts: list[np.ndarray] = []
        self.rows = self.bad = 0
        self.first: list[str] = []

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        values, bad, raw = (_float_block if self.name == "rating" else _int_block)(self.name, column)
        if bad is not None:
            idx = np.flatnonzero(bad)
            self.first += [f"{_row_label(self.path, self.rows + int(i))}: {_show(raw.iloc[i])}"
                           for i in idx[:max(_SHOW_ROWS - len(self.first), 0)]]
            self.bad += len(idx)
            self.out, self.parts = None, []  # rejected: only the count and the first rows matter now
        elif not self.bad:
            if self.out is not None and self.rows + len(values) <= len(self.out):
                self.out[self.rows:self.rows + len(values)] = values
            else:
                if self.out is not None:  # more rows than announced: go on in parts
                    self.parts.append(self.out[:self.rows])
                    self.out = None
                self.parts.append(values)
        self.rows += len(column)

    def check(self) -> None:
        if self.bad:
            more = f" (and {self.bad - _SHOW_ROWS} more)" if self.bad > _SHOW_ROWS else ""
            raise DatasetError(
                f"{self.path}: column {self.name!r} must hold {self.meaning}; {self.bad} row(s) of {self.rows}; "
                f"first: {', '.join(self.first)}{more}."
            )

    def values(self) -> np.ndarray:
        """The whole column as one writable array (parts are released as they are joined)."""
        if self.out is not None:
            out, self.out = self.out, None
            return out if len(out) == self.rows else out[:self.rows].copy()
        parts, self.parts = self.parts, []
        if len(parts) == 1:  # may be a read-only view of Arrow's buffer: the frame gets its own
            return parts[0] if parts[0].flags.writeable else parts[0].copy()
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)


def _check_parquet(path: Path) -> pq.ParquetFile:
    try:
        # pre_buffer=False: with it, Arrow keeps every row group's compressed bytes read so far
        # (the whole file by the end, +200 MB on MovieLens 32M).
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc}).") from exc
    _require_columns(path, parquet.schema_arrow.names, RATINGS_COLUMNS)
    return parquet


def _parquet_batches(parquet: pq.ParquetFile, path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    try:
        yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc}).") from exc
    finally:
        parquet.close()


def _csv_batches(path: Path, columns: Sequence[str], as_text: bool) -> Iterator[pa.RecordBatch]:
    """The chosen columns, one block of about ``_CSV_BLOCK_BYTES`` of text at a time."""
    types = {c: pa.string() if as_text else _CSV_TYPES[c] for c in columns}
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(include_columns=list(columns), column_types=types),
    )
    try:
        yield from reader
    finally:
        reader.close()


def _read_blocks(path: Path, columns: Sequence[str], batches: Iterable[pa.RecordBatch],
                 rows: int | None = None) -> dict[str, np.ndarray]:
    checked = [_Column(path, name, rows) for name in columns]
    for batch in batches:
        for column in checked:
            column.add(batch.column(column.name))
    for column in checked:  # the first column in order that holds a bad value is reported
        column.check()
    return {column.name: column.values() for column in checked}


def _read_csv(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    _require_columns(path, _csv_header(path), RATINGS_COLUMNS)
    try:
        return _read_blocks(path, columns, _csv_batches(path, columns, as_text=False))
    except pa.ArrowInvalid:
        pass  # a value that is not a plain number: read again as text so the offending rows can be named
    try:
        return _read_blocks(path, columns, _csv_batches(path, columns, as_text=True))
    except pa.ArrowInvalid as exc:
        raise DatasetError(
            f"{path}: not a well-formed CSV file with columns {', '.join(RATINGS_COLUMNS)} ({exc})."
        ) from exc


def read_ratings(folder: Path, columns: Sequence[str] = RATINGS_COLUMNS) -> pd.DataFrame:
    """Read and validate the ratings, returning compact dtypes (int32 ids, float32 ratings, int64 timestamps).

    Only ``columns`` are read (a subset of userId, movieId, rating, timestamp). The file is read in
    blocks (a million parquet rows, ~4 MB of CSV text) that are checked and narrowed as they arrive,
    so MovieLens 32M costs about its compact size (0.6 GB) plus one column, not the file as 64-bit
    columns (2.3 GB from ``ratings.csv`` before).
    """
    unknown = [c for c in columns if c not in RATINGS_COLUMNS]
    if unknown:
        raise ValueError(f"unknown ratings columns requested: {unknown}")
    path = ratings_file(folder)
    if path.suffix == ".parquet":
        parquet = _check_parquet(path)
        values = _read_blocks(path, columns, _parquet_batches(parquet, path, columns), parquet.metadata.num_rows)
    else:
        values = _read_csv(path, columns)
    return pd.DataFrame(values, columns=list(columns), copy=False)


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
