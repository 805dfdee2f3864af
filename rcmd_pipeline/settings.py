"""Where the pipeline reads its input and keeps its local state, decided by environment variables.

- ``RCMD_DATASET_PATH``: folder with the MovieLens files (``ratings.parquet`` or ``ratings.csv``,
  ``links.csv``, ``movies.csv``). Unset: the demo data set committed under ``data/demo``.
- ``RCMD_TMDB_SNAPSHOT_DIR``: TMDB-shaped ``ko-KR`` movie-details JSON files (``<tmdbId>.json``),
  read when no TMDB credential is set. Unset: ``<RCMD_DATASET_PATH>/tmdb/ko-KR``.
- ``RCMD_QDRANT_COLLECTION``: the served vector collection (default ``movie_emb_kr``, the study's).
- ``RCMD_DATA_DIR``: folder for every piece of local state the pipeline writes (asset values,
  caches, SQLite files, the embedded vector store). Unset: ``data/state/demo`` for the demo data
  set, or ``data/state/<folder name>-<hash of its path>`` for any other data set, so that a run on
  other data never touches the demo's state. May be an object-store URL (``s3://bucket/prefix``,
  see ``rcmd_pipeline.storage``): asset values and the TMDB and embedding caches then live there.
- ``RCMD_LOCAL_DIR``: the folder for what cannot live in an object store, used only when
  ``RCMD_DATA_DIR`` is a URL: the embedded vector store and the SQLite file (when ``QDRANT_URL`` /
  ``RCMD_DATABASE_URL`` are unset). Unset: ``data/state/remote-<hash of the URL>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from rcmd_pipeline import storage
from rcmd_pipeline.lib.env import env_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATASET_DIR = PROJECT_ROOT / "data" / "demo"
STATE_ROOT = PROJECT_ROOT / "data" / "state"

DATASET_ENV = "RCMD_DATASET_PATH"
DATA_DIR_ENV = "RCMD_DATA_DIR"
TMDB_SNAPSHOT_ENV = "RCMD_TMDB_SNAPSHOT_DIR"
COLLECTION_ENV = "RCMD_QDRANT_COLLECTION"
DEFAULT_COLLECTION = "movie_emb_kr"
LOCAL_DIR_ENV = "RCMD_LOCAL_DIR"


def dataset_path(environ: Mapping[str, str] | None = None) -> Path:
    """The MovieLens folder to read: ``RCMD_DATASET_PATH``, or the demo data set when unset.
    ``environ``: the process environment unless given (as for every function here)."""
    value = env_text(DATASET_ENV, environ)
    return Path(value).expanduser() if value else DEMO_DATASET_DIR


def data_dir(environ: Mapping[str, str] | None = None) -> storage.StatePath:
    """The folder (a ``Path``) or object-store prefix (a ``UPath``) for the pipeline's state (see the
    module docstring); not created here."""
    value = env_text(DATA_DIR_ENV, environ)
    if value:
        return storage.state_path(value)
    dataset = dataset_path(environ)
    if dataset.resolve() == DEMO_DATASET_DIR.resolve():
        return STATE_ROOT / "demo"
    digest = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:8]
    return STATE_ROOT / f"{dataset.resolve().name or 'dataset'}-{digest}"


def local_dir(environ=os.environ) -> Path:
    """The local folder for the embedded vector store and the SQLite file: ``data_dir()`` itself when
    it is local, else ``RCMD_LOCAL_DIR`` (default ``data/state/remote-<hash of the URL>``). With a URL
    data dir and no ``QDRANT_URL`` / ``RCMD_DATABASE_URL``, warns that those stay on this machine."""
    state = data_dir()
    if not storage.is_remote(state):
        return state
    value = env_text(LOCAL_DIR_ENV, environ)
    folder = Path(value).expanduser() if value else \
        STATE_ROOT / f"remote-{hashlib.sha256(str(state).encode()).hexdigest()[:8]}"
    missing = [name for name in ("QDRANT_URL", "RCMD_DATABASE_URL") if not env_text(name, environ)]
    if missing:
        local = [what for name, what in (("QDRANT_URL", "the embedded vector store"),
                                         ("RCMD_DATABASE_URL", "the SQLite database")) if name in missing]
        logging.getLogger("rcmd_pipeline").warning(
            f"{DATA_DIR_ENV} is an object store but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"unset: {' and '.join(local)} stay in {folder} ({LOCAL_DIR_ENV}), on this machine only. On more than "
            "one machine (a Kubernetes or Docker run launcher) point QDRANT_URL at a Qdrant server and "
            "RCMD_DATABASE_URL at a database server.")
    return folder


def tmdb_snapshot_dir() -> Path:
    """Where the snapshot TMDB client reads ``<tmdbId>.json`` files (see the module docstring)."""
    value = env_text(TMDB_SNAPSHOT_ENV)
    return Path(value).expanduser() if value else dataset_path() / "tmdb" / "ko-KR"


def qdrant_collection(environ: Mapping[str, str] | None = None) -> str:
    """The name under which the overview vectors are served (see the module docstring)."""
    return env_text(COLLECTION_ENV, environ) or DEFAULT_COLLECTION
