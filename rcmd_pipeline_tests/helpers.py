"""Shared test helpers: small MovieLens folders written on the fly, the embedded resources, and
materializing the whole graph. Import them from here; conftest.py holds only fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from dagster import materialize

from rcmd_pipeline.definitions import all_assets, all_checks
from rcmd_pipeline.resources.embedder import LocalE5Embedder
from rcmd_pipeline.resources.lazy_input import LAZY, LazyInputManager
from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager
from rcmd_pipeline.resources.movie_db import MovieDatabase
from rcmd_pipeline.resources.movielens import MovieLensFiles
from rcmd_pipeline.resources.tmdb import SnapshotTmdbClient
from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore


def write_dataset(folder: Path, ratings: pd.DataFrame | str, *, fmt: str = "csv",
                  links: str | None = None, movies: str | None = None) -> Path:
    """A MovieLens folder; ``ratings`` as a frame (written as csv or parquet) or raw CSV text."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(ratings, str):
        (folder / "ratings.csv").write_text(ratings, encoding="utf-8")
        movie_ids = []
    else:
        if fmt == "parquet":
            ratings.to_parquet(folder / "ratings.parquet", index=False)
        else:
            ratings.to_csv(folder / "ratings.csv", index=False)
        movie_ids = sorted({int(m) for m in ratings["movieId"].dropna()}) if "movieId" in ratings else []
    if links is None:
        links = "movieId,imdbId,tmdbId\n" + "".join(f"{m},{m:07d},{1000 + m}\n" for m in movie_ids)
    if movies is None:
        movies = "movieId,title,genres\n" + "".join(f"{m},Movie {m} (2000),Drama\n" for m in movie_ids)
    (folder / "links.csv").write_text(links, encoding="utf-8")
    (folder / "movies.csv").write_text(movies, encoding="utf-8")
    snapshot = folder / "tmdb" / "ko-KR"
    snapshot.mkdir(parents=True, exist_ok=True)
    for m in movie_ids:  # movies 1-3, 4-6 and 7-9 form three series; the rest stand alone
        series = {"id": 500 + (m - 1) // 3, "name": f"시리즈 {(m - 1) // 3}"} if m <= 9 else None
        body = {"id": 1000 + m, "title": f"영화 {m}", "original_title": f"Movie {m}", "original_language": "en",
                "overview": f"영화 {m}의 줄거리" if m % 5 else "", "release_date": f"{1990 + m}-01-01",
                "runtime": 90 + m, "belongs_to_collection": series, "adult": False, "imdb_id": f"tt{m:07d}"}
        (snapshot / f"{1000 + m}.json").write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return folder


def synthetic_ratings(users: int = 60, movies: int = 12, per_user: int = 10, seed: int = 0) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, users + 1):
        picks = rng.choice(np.arange(1, movies + 1), size=min(per_user, movies), replace=False)
        start = int(rng.integers(9e8, 1.6e9))
        for i, m in enumerate(picks):
            rows.append((u, int(m), float(rng.integers(1, 11)) / 2, start + 60 * i))
    return pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])


def materialize_all(dataset: Path, data_dir: Path, run_config: dict | None = None, selection=None,
                    raise_on_error: bool = True, instance=None):
    return materialize(
        [*all_assets, *all_checks],
        instance=instance,
        selection=selection,
        resources=embedded_resources(dataset, data_dir),
        run_config=run_config or {},
        raise_on_error=raise_on_error,
    )


def embedded_resources(dataset: Path, data_dir: Path, database_url: str | None = None) -> dict:
    """The embedded defaults, all state under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "io_manager": LocalStateIOManager(base_dir=str(data_dir)),
        LAZY: LazyInputManager(base_dir=str(data_dir)),
        "local_state": LocalStateDir(base_dir=str(data_dir)),
        "movielens": MovieLensFiles(path=str(dataset)),
        "tmdb": SnapshotTmdbClient(snapshot_dir=str(dataset / "tmdb" / "ko-KR")),
        "movie_db": MovieDatabase(url=database_url or f"sqlite:///{data_dir / 'rcmd.sqlite'}"),
        "embedder": LocalE5Embedder(),
        "vector_store": EmbeddedQdrantStore(path=str(data_dir / "vectors")),
    }


def small_run_config(min_movie_ratings: int = 5, eval_size: int = 50) -> dict:
    return {"ops": {"eval_transitions": {"config": {"min_movie_ratings": min_movie_ratings,
                                                     "eval_size": eval_size}}}}
