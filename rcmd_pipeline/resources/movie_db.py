"""The movie database: the study's Oracle ``movie`` and ``series`` tables, through SQLAlchemy Core.

Production is Oracle (``RCMD_DATABASE_URL``, e.g.
``oracle+oracledb://user:pw@host:1521/?service_name=XEPDB1``); without it, a SQLite file under
``RCMD_DATA_DIR``. Every statement is SQLAlchemy Core with bound parameters, built by the
module-level ``*_statement`` functions below so the tests can compile each one with the Oracle
dialect (no Oracle server runs here) and run it on SQLite, PostgreSQL and MariaDB.

Why the loads look the way they do:

- ``replace_movies`` / ``replace_series`` delete every row and insert the new ones in ONE
  transaction: a re-run leaves exactly the same rows, a failure midway rolls back to the previous
  contents, and readers keep seeing the previous contents until the commit. ``TRUNCATE`` would be
  faster but commits on its own on Oracle and MySQL, so a failure after it would leave an empty table.
- ``series_id = 0`` means "no series" (the study's convention), so ``movie.series_id`` is NOT NULL
  DEFAULT 0 and carries no foreign key to ``series`` (row 0 does not exist there); a separate check
  verifies the references.
- The URL may hold a password: it is never printed. Errors name ``RCMD_DATABASE_URL`` and the URL
  with the password replaced by ``***``; when the URL comes from the process environment the
  resource holds ``EnvVar("RCMD_DATABASE_URL")``, so Dagster's UI shows the variable, not the value.
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import ConfigurableResource
from sqlalchemy import (
    CHAR,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Delete,
    Engine,
    Index,
    Insert,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import env_value
from rcmd_pipeline.lib.secrets import mask_database_url as mask_url

DATABASE_URL_ENV = "RCMD_DATABASE_URL"
SQLITE_FILE_NAME = "rcmd.sqlite"

INSERT_CHUNK_ROWS = 1000
"""Rows per executemany call of a load (all in the same transaction)."""

IN_LIST_CHUNK = 900
"""Ids per ``IN (...)`` list: Oracle refuses more than 1,000 expressions in one list (ORA-01795)."""

_YN = ("Y", "N")

metadata = MetaData()

# The study's columns, in its order. On Oracle: Integer -> INTEGER, String(n) -> VARCHAR2(n CHAR)
# (character lengths: Korean titles are 3 bytes a character in AL32UTF8), Text -> CLOB,
# Date/DateTime -> DATE (second precision: loads strip microseconds). movie_id is the MovieLens id,
# series_id TMDB's collection id (0 = no series), adult/useyn 'Y'/'N' (the study: adult 'N', useyn 'Y').

movie = Table(
    "movie",
    metadata,
    Column("movie_id", Integer, primary_key=True, autoincrement=False),
    Column("movie_title", String(500)),
    Column("original_language", String(10)),
    Column("original_title", String(500)),
    Column("poster_path", String(200)),
    Column("overview", Text),
    Column("series_id", Integer, nullable=False, default=0, server_default=text("0")),
    Column("release_date", Date),
    Column("runtime", Integer),
    Column("tagline", String(1000)),
    Column("imdb_id", String(20)),
    Column("adult", CHAR(1), nullable=False, default="N", server_default=text("'N'")),
    Column("useyn", CHAR(1), nullable=False, default="Y", server_default=text("'Y'")),
    Column("regtime", DateTime),
    CheckConstraint("adult IN ('Y', 'N')", name="ck_movie_adult_yn"),
    CheckConstraint("useyn IN ('Y', 'N')", name="ck_movie_useyn_yn"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
Index("ix_movie_series_id", movie.c.series_id)

series = Table(
    "series",
    metadata,
    Column("series_id", Integer, primary_key=True, autoincrement=False),
    Column("series_title", String(500)),
    Column("useyn", CHAR(1), nullable=False, default="Y", server_default=text("'Y'")),
    Column("regtime", DateTime),
    CheckConstraint("useyn IN ('Y', 'N')", name="ck_series_useyn_yn"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

MOVIE_COLUMNS = tuple(movie.columns.keys())
SERIES_COLUMNS = tuple(series.columns.keys())
SERIES_CATALOG_COLUMNS = ("movie_id", "series_id", "release_date")


class MovieDatabaseError(RuntimeError):
    """The movie database could not be reached or refused a statement (the URL is shown masked)."""


# ----------------------------------------------------------------------------- statements
# Every statement the module issues, so tests can compile each one with the Oracle dialect.

def delete_all_statement(table: Table) -> Delete:
    """``DELETE FROM <table>``: the first half of a replace (same transaction as the inserts)."""
    return delete(table)


def insert_statement(table: Table) -> Insert:
    """``INSERT INTO <table> (every column) VALUES (:bound, ...)``, run with executemany."""
    return insert(table)


def count_statement(table: Table) -> Select:
    """``SELECT count(*) FROM <table>``."""
    return select(func.count()).select_from(table)


def read_table_statement(table: Table) -> Select:
    """Every row of ``table``, ordered by its primary key."""
    return select(table).order_by(*table.primary_key.columns)


def series_catalog_statement() -> Select:
    """Every movie's series and release date, in one query (what the series strategy needs)."""
    return select(movie.c.movie_id, movie.c.series_id, movie.c.release_date).order_by(movie.c.movie_id)


def orphan_series_statement() -> Select:
    """Series ids used by ``movie`` rows (``series_id > 0``) that have no ``series`` row."""
    return (
        select(movie.c.series_id, func.count().label("movies"))
        .where(movie.c.series_id > 0)
        .where(~exists().where(series.c.series_id == movie.c.series_id))
        .group_by(movie.c.series_id)
        .order_by(movie.c.series_id)
    )


def movies_by_id_statement() -> Select:
    """The study's ``SELECT * FROM movie WHERE movie_id IN :movie_ids`` (expanding bound list)."""
    return select(movie).where(movie.c.movie_id.in_(bindparam("movie_ids", expanding=True)))


# ----------------------------------------------------------------------------- URLs

def _scrub(message: str, url: str) -> str:
    """Remove the password from a driver's message, should a driver ever echo it."""
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


def _describe(exc: BaseException, url: str) -> str:
    original = getattr(exc, "orig", None) or exc
    first_line = (str(original).strip().splitlines() or [""])[0].rstrip(".")
    return _scrub(f"{type(original).__name__}: {first_line}", url)


def _enable_sqlite_wal(engine: Engine) -> None:
    """WAL journal: readers keep seeing the last committed contents while a load is in progress."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()


# ----------------------------------------------------------------------------- frames -> rows

def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _to_int(value: Any, column: str) -> int | None:
    if _is_missing(value):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"column {column}: expected a whole number, got {value!r}")


def _to_date(value: Any, column: str) -> date | None:
    if _is_missing(value):
        return None
    if isinstance(value, datetime):  # also pd.Timestamp
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise ValueError(f"column {column}: expected a date (YYYY-MM-DD), got {value!r}")


def _to_datetime(value: Any, column: str) -> datetime | None:
    if _is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).to_pydatetime()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"column {column}: expected a timestamp, got {value!r}")


def _to_str(value: Any, column: str) -> str | None:
    return None if _is_missing(value) else str(value)


def _converter(column: Column):
    if isinstance(column.type, Integer):
        return _to_int
    if isinstance(column.type, DateTime):
        return _to_datetime
    if isinstance(column.type, Date):
        return _to_date
    return _to_str


def table_rows(table: Table, frame: pd.DataFrame, regtime: datetime | None = None) -> list[dict[str, Any]]:
    """The frame's rows as plain Python values, one dict per row with every column of ``table``.

    The frame uses the table's column names; a missing ``series_id`` is 0, ``adult`` 'N',
    ``useyn`` 'Y', any other missing column NULL. ``regtime``: the given timestamp on every row, or
    else the frame's values with gaps filled by one timestamp taken now (one per load).
    """
    unknown = [c for c in frame.columns if c not in table.columns]
    if unknown:
        raise ValueError(f"{table.name}: unknown column(s) {', '.join(map(str, unknown))}; "
                         f"expected some of {', '.join(table.columns.keys())}")
    (key,) = table.primary_key.columns
    if key.name not in frame.columns:
        raise ValueError(f"{table.name}: the frame has no {key.name} column (the primary key)")
    keys = frame[key.name]
    if keys.isna().any():
        raise ValueError(f"{table.name}: {int(keys.isna().sum())} row(s) without {key.name}")
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        shown = ", ".join(str(v) for v in duplicated.unique()[:5])
        raise ValueError(f"{table.name}: duplicate {key.name} value(s) {shown} ({len(duplicated)} extra row(s))")

    load_time = regtime or datetime.now().replace(microsecond=0)
    n = len(frame)
    values: dict[str, list] = {}
    for column in table.columns:
        convert = _converter(column)
        if column.name == "regtime" and regtime is not None:
            values[column.name] = [regtime] * n
        elif column.name in frame.columns:
            values[column.name] = [convert(v, column.name) for v in frame[column.name].tolist()]
            if column.name == "regtime":
                values[column.name] = [load_time if v is None else v for v in values[column.name]]
        elif column.name == "regtime":
            values[column.name] = [load_time] * n
        else:
            default = column.default.arg if column.default is not None else None
            values[column.name] = [default] * n
        if not column.nullable and any(v is None for v in values[column.name]):
            raise ValueError(f"{table.name}.{column.name} must not be NULL")
    names = list(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _execute_chunk(conn: Connection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """One executemany call (a seam the tests use to fail or observe a load midway)."""
    conn.execute(statement, rows)


def _frame(rows, columns: Iterable[str]) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
    for name in ("release_date", "regtime"):
        if name in frame.columns:
            frame[name] = pd.to_datetime(frame[name], errors="coerce")
    return frame


# ----------------------------------------------------------------------------- resource

class MovieDatabase(ConfigurableResource):
    """The study's ``movie`` / ``series`` tables in an RDBMS (Oracle in production, SQLite by default).

    ``url`` is a SQLAlchemy URL (``RCMD_DATABASE_URL``). An engine is created per call and disposed
    afterwards, so the resource holds no connection between steps or processes.
    """

    url: str

    def __repr_args__(self):  # never show the password in a repr (logs, tracebacks)
        yield "url", self.masked_url

    @property
    def masked_url(self) -> str:
        """The URL with the password replaced by ``***`` (safe to log)."""
        return mask_url(self.url)

    # -- plumbing -----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.masked_url} (from {DATABASE_URL_ENV}, or the SQLite default when unset)"

    def _engine(self) -> Engine:
        try:
            engine = create_engine(self.url)
        except Exception as exc:  # noqa: BLE001 - bad URL or missing driver: never echo the raw URL
            raise MovieDatabaseError(
                f"Cannot use the movie database URL {self._where()}: {_describe(exc, self.url)}. "
                f"Set {DATABASE_URL_ENV} to a SQLAlchemy URL such as "
                "oracle+oracledb://user:password@host:1521/?service_name=XEPDB1"
            ) from None
        if engine.dialect.name == "sqlite":
            _enable_sqlite_wal(engine)
        return engine

    @contextmanager
    def _connect(self, action: str, *, transaction: bool = False) -> Iterator[Connection]:
        """A connection (in one transaction if asked) from a fresh engine, disposed afterwards.

        Connection failures and database errors become :class:`MovieDatabaseError` with the masked
        URL; any other exception propagates unchanged. Either way an open transaction rolls back.
        """
        engine = self._engine()
        try:
            try:
                conn = engine.connect()
            except SQLAlchemyError as exc:
                raise MovieDatabaseError(
                    f"Cannot connect to the movie database {self._where()}: {_describe(exc, self.url)}. "
                    f"Check that the server is running and that {DATABASE_URL_ENV} is right."
                ) from None
            try:
                with conn:
                    if transaction:
                        with conn.begin():
                            yield conn
                    else:
                        yield conn
            except SQLAlchemyError as exc:
                raise MovieDatabaseError(
                    f"{action} failed on the movie database {self._where()}: {_describe(exc, self.url)}"
                    + (" (rolled back: the previous contents are unchanged)" if transaction else "")
                ) from exc
        finally:
            engine.dispose()

    @staticmethod
    def _require_table(conn: Connection, table: Table) -> None:
        if not inspect(conn).has_table(table.name):
            raise MovieDatabaseError(
                f"The {table.name} table does not exist in this database yet: load it first "
                "(materialize the movie/series tables, or call create_tables())."
            )

    # -- schema and loads ---------------------------------------------------------------

    def create_tables(self) -> None:
        """Create ``movie`` (with its ``series_id`` index) and ``series`` if they do not exist."""
        with self._connect("Creating the movie/series tables", transaction=True) as conn:
            metadata.create_all(conn, checkfirst=True)

    def _replace(self, table: Table, frame: pd.DataFrame, regtime: datetime | None, chunk_rows: int) -> int:
        rows = table_rows(table, frame, regtime)  # validate before touching the database
        self.create_tables()  # DDL commits on its own on Oracle/MySQL: keep it out of the load
        statement = insert_statement(table)
        with self._connect(f"Loading the {table.name} table", transaction=True) as conn:
            conn.execute(delete_all_statement(table))
            for chunk in _chunks(rows, chunk_rows):
                _execute_chunk(conn, statement, chunk)
        return len(rows)

    def replace_movies(self, frame: pd.DataFrame, regtime: datetime | None = None,
                       chunk_rows: int = INSERT_CHUNK_ROWS) -> int:
        """Make ``movie`` hold exactly the frame's rows (one transaction); returns the row count.

        ``regtime``: the load's timestamp for every row; when None, the frame's ``regtime`` values
        (gaps filled with the current time, one value per load). Loading the same frame twice
        leaves identical rows; a failure rolls back and the previous rows stay readable.
        """
        return self._replace(movie, frame, regtime, chunk_rows)

    def replace_series(self, frame: pd.DataFrame, regtime: datetime | None = None,
                       chunk_rows: int = INSERT_CHUNK_ROWS) -> int:
        """Make ``series`` hold exactly the frame's rows (one transaction); see :meth:`replace_movies`."""
        return self._replace(series, frame, regtime, chunk_rows)

    # -- reads --------------------------------------------------------------------------

    def series_catalog(self) -> pd.DataFrame:
        """``movie_id``, ``series_id``, ``release_date`` of every movie: one query, ordered by movie_id.

        ``movie_id``/``series_id`` are int64, ``release_date`` datetime64 (NaT when unknown).
        """
        with self._connect("Reading the series catalogue") as conn:
            self._require_table(conn, movie)
            rows = conn.execute(series_catalog_statement()).all()
        frame = _frame(rows, SERIES_CATALOG_COLUMNS)
        frame["movie_id"] = frame["movie_id"].astype("int64")
        frame["series_id"] = frame["series_id"].astype("int64")
        return frame

    def orphan_series(self) -> dict[int, int]:
        """``{series_id: number of movies}`` for series ids of ``movie`` missing from ``series``."""
        with self._connect("Checking movie.series_id against series") as conn:
            self._require_table(conn, movie)
            self._require_table(conn, series)
            return {int(sid): int(n) for sid, n in conn.execute(orphan_series_statement()).all()}

    def get_movies(self, movie_ids: Iterable[int]) -> pd.DataFrame:
        """The ``movie`` rows of ``movie_ids`` (the study's ``get_movies``), in the order asked.

        Unknown ids are left out, repeated ids appear once. The ids go in bound ``IN`` lists of
        at most :data:`IN_LIST_CHUNK` (Oracle's limit is 1,000 per list).
        """
        wanted = list(dict.fromkeys(int(i) for i in np.asarray(list(movie_ids)).ravel().tolist()))
        found: list = []
        if wanted:
            with self._connect("Reading movies") as conn:
                self._require_table(conn, movie)
                statement = movies_by_id_statement()
                for start in range(0, len(wanted), IN_LIST_CHUNK):
                    found.extend(conn.execute(statement, {"movie_ids": wanted[start:start + IN_LIST_CHUNK]}).all())
        frame = _frame(found, MOVIE_COLUMNS)
        if len(frame):
            order = {movie_id: i for i, movie_id in enumerate(wanted)}
            frame = frame.sort_values("movie_id", key=lambda s: s.map(order)).reset_index(drop=True)
        return frame

    def count_rows(self, name: str) -> int:
        """How many rows ``movie`` or ``series`` holds; -1 when the table does not exist."""
        tables = {"movie": movie, "series": series}
        if name not in tables:
            raise ValueError(f"unknown table {name!r}: expected one of {', '.join(tables)}")
        with self._connect(f"Counting the rows of the {name} table") as conn:
            if not inspect(conn).has_table(tables[name].name):
                return -1
            return int(conn.execute(select(func.count()).select_from(tables[name])).scalar_one())

    def read_table(self, name: str) -> pd.DataFrame:
        """Every row of ``movie`` or ``series`` (ordered by id); an empty frame if the table is missing.

        Loads use it to compare with the previous contents (e.g. to keep ``regtime`` of unchanged rows).
        """
        tables = {"movie": movie, "series": series}
        if name not in tables:
            raise ValueError(f"unknown table {name!r}: expected one of {', '.join(tables)}")
        table = tables[name]
        with self._connect(f"Reading the {name} table") as conn:
            if not inspect(conn).has_table(table.name):
                return _frame([], table.columns.keys())
            rows = conn.execute(read_table_statement(table)).all()
        return _frame(rows, table.columns.keys())

    def row_counts(self) -> dict[str, int]:
        """``{"movie": n, "series": m}``: rows per table (a missing table is an error)."""
        counts = {}
        with self._connect("Counting rows") as conn:
            for table in (movie, series):
                self._require_table(conn, table)
                counts[table.name] = int(conn.execute(count_statement(table)).scalar_one())
        return counts


def movie_database_from_environment(environ: Mapping[str, str], data_dir: str | Path) -> MovieDatabase:
    """``RCMD_DATABASE_URL`` when set, else a SQLite file ``<data_dir>/rcmd.sqlite`` (folder created).

    When the URL is the one of the process environment, the resource is configured with
    ``EnvVar("RCMD_DATABASE_URL")``: Dagster resolves it at run time and its UI shows the variable's
    name, never the URL and its password. (Such a resource is usable inside Dagster runs; outside
    them, build one with ``MovieDatabase(url=...)``.) Any other mapping gives the literal URL.
    """
    url = env_text(DATABASE_URL_ENV, environ)
    if url:
        return MovieDatabase(url=env_value(environ, DATABASE_URL_ENV))
    folder = Path(data_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return MovieDatabase(url=f"sqlite:///{folder / SQLITE_FILE_NAME}")
