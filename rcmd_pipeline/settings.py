"""Where the pipeline reads its input and keeps its local state, decided by environment variables.

- ``RCMD_DATASET_PATH``: folder with the MovieLens files (``ratings.parquet`` or ``ratings.csv``,
  ``links.csv``, ``movies.csv``). Unset: the demo data set committed under ``data/demo``.
- ``RCMD_TMDB_SNAPSHOT_DIR``: TMDB-shaped ``ko-KR`` movie-details JSON files (``<tmdbId>.json``),
  read when no TMDB credential is set. Unset: ``<RCMD_DATASET_PATH>/tmdb/ko-KR``.
- ``RCMD_QDRANT_COLLECTION``: the served vector collection (default ``movie_emb_kr``, the study's).
- ``RCMD_DATA_DIR``: folder for every piece of local state the pipeline writes (asset values,
  caches, SQLite files, the embedded vector store). Unset: ``data/state/demo`` for the demo data
  set, or ``data/state/<folder name>-<hash of its path>`` for any other data set, so that a run on
  other data never touches the demo's state.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATASET_DIR = PROJECT_ROOT / "data" / "demo"
STATE_ROOT = PROJECT_ROOT / "data" / "state"

DATASET_ENV = "RCMD_DATASET_PATH"
DATA_DIR_ENV = "RCMD_DATA_DIR"
TMDB_SNAPSHOT_ENV = "RCMD_TMDB_SNAPSHOT_DIR"
COLLECTION_ENV = "RCMD_QDRANT_COLLECTION"


def dataset_path() -> Path:
    """The MovieLens folder to read: ``RCMD_DATASET_PATH``, or the demo data set when unset."""
    value = os.environ.get(DATASET_ENV, "").strip()
    return Path(value).expanduser() if value else DEMO_DATASET_DIR


def data_dir() -> Path:
    """The folder for local state (see the module docstring); not created here."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    dataset = dataset_path()
    if dataset.resolve() == DEMO_DATASET_DIR.resolve():
        return STATE_ROOT / "demo"
    digest = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:8]
    return STATE_ROOT / f"{dataset.resolve().name or 'dataset'}-{digest}"


def tmdb_snapshot_dir() -> Path:
    """Where the snapshot TMDB client reads ``<tmdbId>.json`` files (see the module docstring)."""
    value = os.environ.get(TMDB_SNAPSHOT_ENV, "").strip()
    return Path(value).expanduser() if value else dataset_path() / "tmdb" / "ko-KR"


def qdrant_collection() -> str:
    """The name under which the overview vectors are served (see the module docstring)."""
    return os.environ.get(COLLECTION_ENV, "").strip() or "movie_emb_kr"
