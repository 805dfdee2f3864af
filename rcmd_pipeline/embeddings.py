"""What is embedded for a movie, and the cache that makes re-embedding incremental (plain Python).

A vector is kept under the hash of (embedding model id, embedded text). So a re-run on an
unchanged catalogue embeds nothing, a changed overview re-embeds that movie only, and another
model (a different model id) re-embeds everything. The cache is written chunk by chunk while the
embedder works, so vectors paid for before a failure are never paid for twice.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rcmd_pipeline.resources.local_state import atomic_write

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


def embedding_text(title: str | None, overview: str | None) -> str:
    """The Korean title and overview as one line; empty when the movie has no overview.

    Control characters are dropped and white space folded (the study replaced newlines by spaces).
    A movie without an overview gets no vector, as in the study: its title alone says too little.
    """
    body = _SPACE.sub(" ", _CONTROL.sub("", overview or "")).strip()
    if not body:
        return ""
    head = _SPACE.sub(" ", _CONTROL.sub("", title or "")).strip()
    return f"{head}. {body}" if head else body


def text_hash(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\x00{text}".encode()).hexdigest()


def vectors_table(keys: list[str], vectors: np.ndarray, key_name: str = "text_hash") -> pa.Table:
    """A two-column table: ``key_name`` and ``vector`` (fixed-size list of float32)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table({key_name: pa.array(keys, type=pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})


def table_vectors(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of :func:`vectors_table` back as an (n, d) float32 array."""
    column = table.column("vector").combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


class EmbeddingCache:
    """Vectors by text hash in ``<folder>/part-*.parquet``; one part per embedded chunk."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def load(self) -> dict[str, np.ndarray]:
        cached: dict[str, np.ndarray] = {}
        for part in self._parts():
            table = pq.read_table(part)
            for key, vector in zip(table.column("text_hash").to_pylist(), table_vectors(table), strict=True):
                cached[key] = vector
        return cached

    def append(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist one embedded chunk at once (atomically), before anything else can fail."""
        if keys:
            table = vectors_table(keys, vectors)
            path = self.folder / f"part-{uuid.uuid4().hex}.parquet"
            atomic_write(path, lambda p: pq.write_table(table, p))

    def compact(self, keep: dict[str, np.ndarray]) -> None:
        """Rewrite the cache as one part holding exactly ``keep`` (drops vectors no longer used)."""
        old = self._parts()
        self.append(list(keep), np.stack(list(keep.values())) if keep else np.zeros((0, 0), np.float32))
        for part in old:
            part.unlink(missing_ok=True)


def frame_vectors(frame: pd.DataFrame) -> np.ndarray:
    """The ``vector`` column of an embeddings frame as one (n, d) float32 array."""
    if len(frame) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(frame["vector"].to_numpy()).astype(np.float32, copy=False)
