"""The movie database: the study's Oracle ``movie`` and ``series`` tables, through SQLAlchemy Core.

Production is Oracle (``RCMD_DATABASE_URL``, e.g.
``oracle+oracledb://user:pw@host:1521/?service_name=XEPDB1``); without it, a SQLite file under
``RCMD_DATA_DIR``. Every statement is SQLAlchemy Core with bound parameters, built by the
``*_statement`` functions of ``schema.py`` (beside the table definitions) so the tests can compile
each one with the Oracle dialect and run it on SQLite, PostgreSQL and MariaDB; ``rows.py`` turns
frames into checked row values and back. This module is the resource that runs them.

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
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import ConfigurableResource
from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from rcmd_pipeline.lib.env import env_text
from rcmd_pipeline.lib.secrets import env_value
from rcmd_pipeline.lib.secrets import mask_database_url as mask_url
from rcmd_pipeline.resources.movie_db.rows import frame_from_rows, table_rows
from rcmd_pipeline.resources.movie_db.schema import (
    MOVIE_COLUMNS,
    SERIES_CATALOG_COLUMNS,
    SERIES_COLUMNS,
    count_statement,
    delete_all_statement,
    insert_statement,
    metadata,
    movie,
    movies_by_id_statement,
    orphan_series_statement,
    read_table_statement,
    series,
    series_catalog_statement,
)

__all__ = [
    "DATABASE_URL_ENV", "IN_LIST_CHUNK", "INSERT_CHUNK_ROWS", "MOVIE_COLUMNS", "SERIES_CATALOG_COLUMNS",
    "SERIES_COLUMNS", "SQLITE_FILE_NAME", "MovieDatabase", "MovieDatabaseError", "count_statement",
    "delete_all_statement", "insert_statement", "mask_url", "metadata", "movie", "movie_database_from_environment",
    "movies_by_id_statement", "orphan_series_statement", "read_table_statement", "series",
    "series_catalog_statement", "table_rows",
]

DATABASE_URL_ENV = "RCMD_DATABASE_URL"
SQLITE_FILE_NAME = "rcmd.sqlite"

INSERT_CHUNK_ROWS = 1000
"""Rows per executemany call of a load (all in the same transaction)."""

IN_LIST_CHUNK = 900
"""Ids per ``IN (...)`` list: Oracle refuses more than 1,000 expressions in one list (ORA-01795)."""


class MovieDatabaseError(RuntimeError):
    """The movie database could not be reached or refused a statement (the URL is shown masked)."""


# ----------------------------------------------------------------------------- errors and engines

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


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _execute_chunk(conn: Connection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """One executemany call (a seam the tests use to fail or observe a load midway)."""
    conn.execute(statement, rows)


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
        frame = frame_from_rows(rows, SERIES_CATALOG_COLUMNS)
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
        frame = frame_from_rows(found, MOVIE_COLUMNS)
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
                return frame_from_rows([], table.columns.keys())
            rows = conn.execute(read_table_statement(table)).all()
        return frame_from_rows(rows, table.columns.keys())

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
