"""The study's ``movie`` and ``series`` tables, and every statement the database code issues.

Each statement is built by a module-level ``*_statement`` function so the tests can compile it with
the Oracle dialect (no Oracle server runs here) and run it on SQLite, PostgreSQL and MariaDB.
"""

from sqlalchemy import (
    CHAR,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Delete,
    Index,
    Insert,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
)

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


# ----------------------------------------------------------------------------- statements

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
