"""The movie database resource on SQLite (always), PostgreSQL and MariaDB (when their URLs are set).

    RCMD_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
    RCMD_TEST_MYSQL_URL=mysql+pymysql://root@127.0.0.1:3306/test \
    python -m pytest -q rcmd_pipeline_tests/test_movie_db.py

Each server test works in a schema (PostgreSQL) or database (MariaDB) of its own, created for the
test and dropped afterwards, so the study's table names ``movie``/``series`` never collide with
another run. Oracle is not available here: its SQL is checked by compiling every statement the
module issues with SQLAlchemy's Oracle dialect.
"""

from __future__ import annotations

import os
import traceback
import uuid
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from dagster import EnvVar, asset, materialize
from sqlalchemy.dialects import oracle
from sqlalchemy.schema import CreateIndex, CreateTable

from rcmd_pipeline.resources import movie_db
from rcmd_pipeline.resources.movie_db import (
    MOVIE_COLUMNS,
    SERIES_COLUMNS,
    MovieDatabase,
    MovieDatabaseError,
    movie_database_from_environment,
)

REGTIME = datetime(2025, 12, 8, 23, 32, 31)
STUDY_MOVIE_COLUMNS = ("movie_id", "movie_title", "original_language", "original_title", "poster_path", "overview",
                       "series_id", "release_date", "runtime", "tagline", "imdb_id", "adult", "useyn", "regtime")
STUDY_SERIES_COLUMNS = ("series_id", "series_title", "useyn", "regtime")
ORACLE = oracle.dialect()


# ----------------------------------------------------------------------------- backends

def _server_url(env: str, kind: str) -> sa.URL:
    value = os.environ.get(env, "").strip()
    if not value:
        pytest.skip(f"{env} not set: set it to a {kind} SQLAlchemy URL to run this test against a live server "
                    f"(e.g. {'postgresql+psycopg2://postgres@127.0.0.1:5432/test' if kind == 'PostgreSQL' else 'mysql+pymysql://root@127.0.0.1:3306/test'})")
    return sa.make_url(value)


def _postgres_db():
    base = _server_url("RCMD_TEST_POSTGRES_URL", "PostgreSQL")
    schema = f"rcmd_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield MovieDatabase(url=url.render_as_string(hide_password=False))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _mysql_db():
    base = _server_url("RCMD_TEST_MYSQL_URL", "MariaDB/MySQL")
    database = f"rcmd_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"))
    try:
        yield MovieDatabase(url=base.set(database=database).render_as_string(hide_password=False))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db(request, tmp_path: Path):
    if request.param == "sqlite":
        yield MovieDatabase(url=f"sqlite:///{tmp_path / 'rcmd.sqlite'}")
    elif request.param == "postgresql":
        yield from _postgres_db()
    else:
        yield from _mysql_db()


# ----------------------------------------------------------------------------- frames

def series_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "series_id": [1, 10],
        "series_title": ["토이 스토리 시리즈", "스타워즈 시리즈"],
        "useyn": ["Y", "Y"],
        "regtime": [REGTIME, REGTIME],
    })


def movie_frame(extra: int = 0) -> pd.DataFrame:
    """Toy Story 1-4 (series 1), Jumanji (no series, no tagline), a movie without a release date,
    plus ``extra`` synthetic movies; shaped like ``catalog.movie_rows``' output."""
    rows = [
        (1, "토이 스토리", "en", "Toy Story", "/5ELw.jpg", "카우보이 인형 우디는 " * 400, 1, date(1995, 10, 30), 81,
         "장난감과 좋은 친구가 되자", "tt0114709", "N", "Y"),
        (3114, "토이 스토리 2", "en", "Toy Story 2", "/gXUN.jpg", "앤디가 카우보이 캠프에 간 동안", 1,
         date(1999, 10, 30), 94, "무한한 도전과 꿈의 세계로", "tt0120363", "N", "Y"),
        (78499, "토이 스토리 3", "en", "Toy Story 3", None, "모든 장난감들이 겪는 가장 슬픈 일", 1,
         date(2010, 6, 16), 102, None, "tt0435761", "N", "Y"),
        (201588, "토이 스토리 4", "en", "Toy Story 4", "/9P8I.jpg", None, 1, date(2019, 6, 19), 100,
         "우리의 여행은 아직 끝나지 않았다", "tt1979376", "N", "Y"),
        (2, "쥬만지", "en", "Jumanji", "/jjJo.jpg", "1969년 공장을 운영하는 아버지", 0, date(1995, 12, 15), 104,
         None, "tt0113497", "N", "Y"),
        (262009, "Toys", "en", "Toys", None, None, 0, None, None, None, "tt0206357", "Y", "N"),
    ]
    for i in range(extra):
        movie_id = 300000 + i
        rows.append((movie_id, f"영화 {i}", "ko", f"Movie {i}", None, f"줄거리 {i}", (i % 7) * 100,
                     date(1950 + i % 70, 1 + i % 12, 1 + i % 28), 90 + i % 60, None, f"tt{movie_id:07d}", "N", "Y"))
    frame = pd.DataFrame(rows, columns=list(STUDY_MOVIE_COLUMNS[:-1]))
    frame["runtime"] = frame["runtime"].astype("Int64")
    frame["regtime"] = REGTIME
    return frame


def table_contents(db: MovieDatabase, table: sa.Table) -> list[tuple]:
    engine = sa.create_engine(db.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]


def expected_movie_rows(frame: pd.DataFrame) -> list[tuple]:
    out = []
    for rec in frame.sort_values("movie_id").to_dict("records"):
        out.append(tuple(None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v
                         for v in (rec[c] for c in STUDY_MOVIE_COLUMNS)))
    return out


# ----------------------------------------------------------------------------- schema and Oracle SQL

def test_tables_have_the_studys_columns_in_order():
    assert tuple(movie_db.movie.columns.keys()) == STUDY_MOVIE_COLUMNS == MOVIE_COLUMNS
    assert tuple(movie_db.series.columns.keys()) == STUDY_SERIES_COLUMNS == SERIES_COLUMNS
    assert not movie_db.movie.foreign_keys  # series_id 0 = no series: no FK on purpose
    assert movie_db.movie.c.series_id.nullable is False


def test_ddl_compiles_for_oracle():
    ddl = str(CreateTable(movie_db.movie).compile(dialect=ORACLE))
    assert "overview CLOB" in ddl
    assert "movie_title VARCHAR2(500 CHAR)" in ddl
    assert "original_language VARCHAR2(10 CHAR)" in ddl
    assert "poster_path VARCHAR2(200 CHAR)" in ddl
    assert "tagline VARCHAR2(1000 CHAR)" in ddl
    assert "imdb_id VARCHAR2(20 CHAR)" in ddl
    assert "series_id INTEGER DEFAULT 0 NOT NULL" in ddl
    assert "release_date DATE" in ddl and "regtime DATE" in ddl
    assert "adult CHAR(1) DEFAULT 'N' NOT NULL" in ddl and "useyn CHAR(1) DEFAULT 'Y' NOT NULL" in ddl
    assert "PRIMARY KEY (movie_id)" in ddl and "FOREIGN KEY" not in ddl
    series_ddl = str(CreateTable(movie_db.series).compile(dialect=ORACLE))
    assert "PRIMARY KEY (series_id)" in series_ddl and "series_title VARCHAR2(500 CHAR)" in series_ddl
    (index,) = movie_db.movie.indexes
    assert str(CreateIndex(index).compile(dialect=ORACLE)) == "CREATE INDEX ix_movie_series_id ON movie (series_id)"


def test_every_statement_builder_compiles_for_oracle():
    statements = {
        "delete movie": movie_db.delete_all_statement(movie_db.movie),
        "delete series": movie_db.delete_all_statement(movie_db.series),
        "insert movie": movie_db.insert_statement(movie_db.movie),
        "insert series": movie_db.insert_statement(movie_db.series),
        "count movie": movie_db.count_statement(movie_db.movie),
        "count series": movie_db.count_statement(movie_db.series),
        "series catalog": movie_db.series_catalog_statement(),
        "read movie": movie_db.read_table_statement(movie_db.movie),
        "read series": movie_db.read_table_statement(movie_db.series),
        "movies by id": movie_db.movies_by_id_statement(),
        "orphan series": movie_db.orphan_series_statement(),
    }
    compiled = {name: str(st.compile(dialect=ORACLE)) for name, st in statements.items()}
    for name, sql in compiled.items():
        assert "LIMIT" not in sql.upper() and "OFFSET" not in sql.upper(), name
    assert compiled["delete movie"] == "DELETE FROM movie"
    assert compiled["insert movie"].startswith("INSERT INTO movie (movie_id, movie_title,")
    assert ":movie_id" in compiled["insert movie"] and ":regtime" in compiled["insert movie"]
    # the expanding IN list renders as Oracle bind parameters, one per id
    assert "movie.movie_id IN (__[POSTCOMPILE_movie_ids])" in compiled["movies by id"]
    rendered = str(movie_db.movies_by_id_statement().params(movie_ids=[1, 2]).compile(
        dialect=ORACLE, compile_kwargs={"render_postcompile": True}))
    assert "movie.movie_id IN (:movie_ids_1, :movie_ids_2)" in rendered
    assert movie_db.IN_LIST_CHUNK < 1000


def test_every_statement_the_module_executes_compiles_for_oracle(tmp_path, monkeypatch):
    """Spy on the engine: run every public method and compile every statement it executed."""
    executed: list = []
    original = MovieDatabase._engine

    def spying_engine(self):
        engine = original(self)
        sa.event.listen(engine, "before_execute",
                        lambda conn, clause, multiparams, params, options: executed.append(clause))
        return engine

    monkeypatch.setattr(MovieDatabase, "_engine", spying_engine)
    db = MovieDatabase(url=f"sqlite:///{tmp_path / 'spy.sqlite'}")
    db.create_tables()
    db.replace_series(series_frame())
    db.replace_movies(movie_frame(extra=30), chunk_rows=10)
    db.series_catalog()
    db.get_movies([1, 2, 3])
    db.read_table("movie")
    db.read_table("series")
    db.row_counts()
    db.orphan_series()
    kinds = set()
    for clause in executed:
        if isinstance(clause, str):  # the inspector's own dialect queries (has_table): not ours
            continue
        sql = str(clause.compile(dialect=ORACLE))
        assert "LIMIT" not in sql.upper()
        kinds.add(sql.split()[0])
    assert {"CREATE", "DELETE", "INSERT", "SELECT"} <= kinds


# ----------------------------------------------------------------------------- loads and reads

def test_orphan_series_lists_series_ids_missing_from_series(db: MovieDatabase):
    frame = movie_frame()
    db.replace_series(series_frame())
    db.replace_movies(frame)
    assert db.orphan_series() == {}
    db.replace_series(series_frame().iloc[1:])  # Toy Story's series 1 goes missing
    assert db.orphan_series() == {1: int((frame["series_id"] == 1).sum())}
    assert db.orphan_series()[1] == 4


def test_load_and_read_back(db: MovieDatabase):
    frame = movie_frame()
    assert db.replace_series(series_frame()) == 2
    assert db.replace_movies(frame) == len(frame)
    assert db.row_counts() == {"movie": len(frame), "series": 2}
    assert table_contents(db, movie_db.movie) == expected_movie_rows(frame)
    assert table_contents(db, movie_db.series) == [
        (1, "토이 스토리 시리즈", "Y", REGTIME), (10, "스타워즈 시리즈", "Y", REGTIME)]

    catalog = db.series_catalog()
    assert list(catalog.columns) == ["movie_id", "series_id", "release_date"]
    assert catalog["movie_id"].tolist() == sorted(frame["movie_id"])
    assert str(catalog["movie_id"].dtype) == "int64" and str(catalog["series_id"].dtype) == "int64"
    assert pd.api.types.is_datetime64_any_dtype(catalog["release_date"])
    by_id = catalog.set_index("movie_id")
    assert by_id.loc[201588, "series_id"] == 1 and by_id.loc[201588, "release_date"] == pd.Timestamp("2019-06-19")
    assert pd.isna(by_id.loc[262009, "release_date"])

    movies = db.get_movies([201588, 1, 999, 1])  # order kept, unknown left out, repeats once
    assert movies["movie_id"].tolist() == [201588, 1]
    assert list(movies.columns) == list(STUDY_MOVIE_COLUMNS)
    assert movies.loc[1, "overview"] == "카우보이 인형 우디는 " * 400  # CLOB/TEXT: nothing truncated
    assert movies.loc[0, "movie_title"] == "토이 스토리 4"
    assert db.get_movies([]).columns.tolist() == list(STUDY_MOVIE_COLUMNS)


def test_read_table_returns_every_row(db: MovieDatabase):
    empty = db.read_table("movie")  # no table yet: nothing to compare with
    assert empty.empty and list(empty.columns) == list(STUDY_MOVIE_COLUMNS)
    frame = movie_frame()
    db.replace_movies(frame)
    db.replace_series(series_frame())
    movies = db.read_table("movie")
    assert list(movies.columns) == list(STUDY_MOVIE_COLUMNS)
    assert movies["movie_id"].tolist() == sorted(frame["movie_id"])
    assert (movies["regtime"] == pd.Timestamp(REGTIME)).all()
    assert db.read_table("series")["series_title"].tolist() == ["토이 스토리 시리즈", "스타워즈 시리즈"]
    # what a load reads back can be loaded again unchanged
    db.replace_movies(movies)
    assert table_contents(db, movie_db.movie) == expected_movie_rows(frame)
    with pytest.raises(ValueError, match="unknown table"):
        db.read_table("users")


def test_get_movies_splits_long_id_lists(db: MovieDatabase):
    frame = movie_frame(extra=2100)
    db.replace_movies(frame, chunk_rows=700)
    wanted = frame["movie_id"].sample(frac=1.0, random_state=0).tolist() + [7, 8]
    got = db.get_movies(np.asarray(wanted))
    assert got["movie_id"].tolist() == wanted[:-2]
    assert len(got) > 2 * movie_db.IN_LIST_CHUNK


def test_replace_is_idempotent_and_drops_stale_rows(db: MovieDatabase):
    frame = movie_frame(extra=25)
    db.replace_movies(frame, chunk_rows=10)
    first = table_contents(db, movie_db.movie)
    db.replace_movies(frame, chunk_rows=7)
    assert table_contents(db, movie_db.movie) == first == expected_movie_rows(frame)
    smaller = frame.iloc[:4]
    assert db.replace_movies(smaller) == 4
    assert table_contents(db, movie_db.movie) == expected_movie_rows(smaller)
    db.replace_series(series_frame())
    db.replace_series(series_frame())
    assert db.row_counts() == {"movie": 4, "series": 2}


def test_regtime_is_one_timestamp_per_load(db: MovieDatabase):
    pinned = datetime(2026, 1, 2, 3, 4, 5)
    frame = movie_frame().drop(columns=["regtime"])
    db.replace_movies(frame, regtime=pinned)
    assert {r[-1] for r in table_contents(db, movie_db.movie)} == {pinned}
    db.replace_movies(frame)  # no regtime anywhere: one "now" for every row
    stamps = {r[-1] for r in table_contents(db, movie_db.movie)}
    assert len(stamps) == 1 and abs((stamps.pop() - datetime.now()).total_seconds()) < 120
    db.replace_movies(movie_frame())  # the frame's own regtime
    assert {r[-1] for r in table_contents(db, movie_db.movie)} == {REGTIME}


def test_defaults_fill_missing_columns(db: MovieDatabase):
    db.replace_movies(pd.DataFrame({"movie_id": [5, 6], "movie_title": ["가", "나"]}), regtime=REGTIME)
    rows = table_contents(db, movie_db.movie)
    assert [(r[0], r[1], r[6], r[11], r[12], r[13]) for r in rows] == [
        (5, "가", 0, "N", "Y", REGTIME), (6, "나", 0, "N", "Y", REGTIME)]


def test_failure_midway_rolls_back_to_the_previous_contents(db: MovieDatabase):
    good = movie_frame(extra=25)
    db.replace_movies(good, chunk_rows=10)
    before = table_contents(db, movie_db.movie)
    bad = movie_frame(extra=40)
    bad.loc[bad.index[15], "adult"] = "X"  # rejected by the database's CHECK, in the 2nd chunk of 10
    with pytest.raises(MovieDatabaseError, match="rolled back") as raised:
        db.replace_movies(bad, chunk_rows=10)
    assert "Loading the movie table failed" in str(raised.value)
    assert table_contents(db, movie_db.movie) == before
    assert db.row_counts()["movie"] == len(good)


def test_crash_midway_rolls_back_and_readers_keep_the_previous_contents(db: MovieDatabase, monkeypatch):
    good = movie_frame(extra=25)
    db.replace_movies(good, chunk_rows=10)
    before = table_contents(db, movie_db.movie)
    seen_during_load = []
    original = movie_db._execute_chunk
    calls = {"n": 0}

    def crashing(conn, statement, rows):
        calls["n"] += 1
        if calls["n"] == 2:  # the old rows are deleted and 10 new ones inserted, uncommitted
            reader = MovieDatabase(url=db.url)
            seen_during_load.append((reader.row_counts()["movie"], reader.series_catalog()["movie_id"].tolist()))
            raise RuntimeError("killed midway")
        original(conn, statement, rows)

    monkeypatch.setattr(movie_db, "_execute_chunk", crashing)
    with pytest.raises(RuntimeError, match="killed midway"):
        db.replace_movies(movie_frame(extra=60), chunk_rows=10)
    assert seen_during_load == [(len(good), sorted(good["movie_id"]))]
    monkeypatch.setattr(movie_db, "_execute_chunk", original)
    assert table_contents(db, movie_db.movie) == before


def test_bad_frames_are_refused_before_touching_the_database(db: MovieDatabase):
    db.replace_movies(movie_frame())
    before = table_contents(db, movie_db.movie)
    duplicated = pd.concat([movie_frame(), movie_frame().iloc[[2]]])
    with pytest.raises(ValueError, match="duplicate movie_id value\\(s\\) 78499"):
        db.replace_movies(duplicated)
    with pytest.raises(ValueError, match="unknown column\\(s\\) movieId"):
        db.replace_movies(movie_frame().rename(columns={"movie_id": "movieId"}))
    with pytest.raises(ValueError, match="whole number"):
        db.replace_movies(movie_frame().assign(runtime=[81.5, 1, 2, 3, 4, 5]))
    assert table_contents(db, movie_db.movie) == before


def test_reads_before_any_load_say_what_to_do(db: MovieDatabase):
    with pytest.raises(MovieDatabaseError, match="movie table does not exist"):
        db.series_catalog()
    db.create_tables()
    db.create_tables()  # idempotent
    assert db.row_counts() == {"movie": 0, "series": 0}
    assert db.series_catalog().empty


# ----------------------------------------------------------------------------- URLs and secrets

def test_masked_url_hides_the_password():
    db = MovieDatabase(url="oracle+oracledb://rcmd:rcmd_multi@oracle-db:1521/?service_name=XEPDB1")
    assert db.masked_url == "oracle+oracledb://rcmd:***@oracle-db:1521/?service_name=XEPDB1"
    assert "rcmd_multi" not in repr(db) and "rcmd_multi" not in str(db)
    assert "secretpw" not in movie_db.mask_url("postgresql://u@h/x?password=secretpw")
    assert movie_db.mask_url("sqlite:////tmp/x.sqlite") == "sqlite:////tmp/x.sqlite"
    assert "secretpw" not in movie_db.mask_url("not a url secretpw")


@pytest.mark.parametrize("url", [
    "postgresql://u:secretpw@127.0.0.1:1/x",
    "postgresql+psycopg2://u:secretpw@127.0.0.1:1/x",
    "mysql+pymysql://u:secretpw@127.0.0.1:1/x",
    "oracle+oracledb://u:secretpw@127.0.0.1:1/?service_name=XEPDB1",
    "nosuchdialect://u:secretpw@127.0.0.1:1/x",
])
def test_unreachable_server_error_names_the_variable_and_masks_the_password(url):
    db = MovieDatabase(url=url)
    for call in (db.row_counts, db.create_tables, db.series_catalog, lambda: db.replace_series(series_frame())):
        with pytest.raises(MovieDatabaseError) as raised:
            call()
        message = str(raised.value)
        assert "RCMD_DATABASE_URL" in message
        assert db.masked_url in message and "u:***@127.0.0.1:1" in message
        everything = "".join(traceback.format_exception(raised.value))
        assert "secretpw" not in everything


def test_from_environment_defaults_to_a_sqlite_file_in_wal_mode(tmp_path):
    folder = tmp_path / "state" / "nested"
    db = movie_database_from_environment({}, folder)
    assert folder.is_dir()
    assert db.url == f"sqlite:///{folder.resolve() / 'rcmd.sqlite'}"
    db.replace_movies(movie_frame())
    assert db.row_counts()["movie"] == 6
    with sa.create_engine(db.url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert movie_database_from_environment({"RCMD_DATABASE_URL": "  "}, folder).url == db.url


def test_from_environment_takes_rcmd_database_url(tmp_path, monkeypatch):
    monkeypatch.delenv("RCMD_DATABASE_URL", raising=False)
    url = "postgresql+psycopg2://u:secretpw@db.example:5432/rcmd"
    assert movie_database_from_environment({"RCMD_DATABASE_URL": url}, tmp_path).url == url
    # From the process environment: an EnvVar, so Dagster shows the name, never the password,
    # and resolves it at run time.
    target = f"sqlite:///{tmp_path / 'from_env.sqlite'}"
    monkeypatch.setenv("RCMD_DATABASE_URL", target)
    db = movie_database_from_environment(os.environ, tmp_path / "unused")
    assert isinstance(db.url, EnvVar) and db.url.env_var_name == "RCMD_DATABASE_URL"
    assert not (tmp_path / "unused").exists()

    @asset
    def loaded(movie_database: MovieDatabase) -> dict:
        movie_database.replace_movies(movie_frame())
        return {"url": movie_database.masked_url, **movie_database.row_counts()}

    result = materialize([loaded], resources={"movie_database": db})
    assert result.output_for_node("loaded") == {"url": target, "movie": 6, "series": 0}
