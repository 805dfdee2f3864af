"""The points a vector store is given: argument checks, content hashes, the digest of a set.

Shared by the session interface and both stores; plain Python and NumPy. The digest is what lets
``sync`` keep an unchanged collection without writing, and find the few points that changed.
"""

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
GENERATION_SUFFIX = re.compile(r"__g(\d{6,})$")
"""The suffix of a server generation's physical collection, ``<collection>__g000001``."""


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name) or GENERATION_SUFFIX.search(name):
        raise ValueError(
            f"collection name {name!r}: use letters, digits, '_', '-', '.', starting with a letter or "
            "digit, at most 200 characters, and not ending in '__g<digits>' (reserved for generations)"
        )
    return name


def check_model(model: str) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model: a non-empty model id is required (the embedder's model_id())")
    return model


def query_ids(ids: Any) -> np.ndarray:
    """Ids to look up, as a 1-d int64 array (negative ids are valid input: they match nothing)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def point_ids(ids: Any) -> np.ndarray:
    """Ids to write: 1-d int64, non-negative (Qdrant ids are unsigned), no duplicates."""
    arr = query_ids(ids)
    if arr.size and arr.min() < 0:
        raise ValueError(f"point ids must be >= 0 (Qdrant ids are unsigned integers), got {int(arr.min())}")
    unique, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        shown = ", ".join(str(int(v)) for v in unique[counts > 1][:5])
        raise ValueError(f"duplicate point id(s) {shown}: each id may appear once")
    return arr


def checked_vectors(vectors: Any, rows: int | None, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (rows, d) array with d >= 1 and finite values."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-d array (n, dimension), got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{what}: {arr.shape[0]} rows for {rows} ids")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: non-finite values (NaN or inf)")
    return arr


def point_vectors(vectors: Any, rows: int) -> np.ndarray:
    arr = checked_vectors(vectors, rows)
    zero = ~np.any(arr != 0, axis=1)
    if zero.any():
        raise ValueError(f"vectors: row {int(np.argmax(zero))} is all zeros; cosine needs a direction")
    return arr


def _plain(value: Any) -> Any:
    """A JSON-able copy of a payload value (numpy scalars and arrays, dates, NaN/NA -> None)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def checked_payloads(payloads: Sequence[Mapping[str, Any]] | None, rows: int) -> list[dict[str, Any]]:
    if payloads is None:
        return [{} for _ in range(rows)]
    payloads = list(payloads)
    if len(payloads) != rows:
        raise ValueError(f"payloads: {len(payloads)} for {rows} ids")
    out = []
    for i, p in enumerate(payloads):
        if p is None:
            out.append({})
        elif isinstance(p, Mapping):
            out.append(_plain(p))
        else:
            raise ValueError(f"payloads[{i}] must be a dict, got {type(p).__name__}")
    return out


def point_hashes(vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A 64-bit content hash per point (its float32 vector bytes and its payload as canonical JSON), uint64.

    Together with the ids this is what :func:`points_digest` summarises: the diff between two
    generations is computed from these hashes, without reading any vector back from the engine.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(len(vectors), dtype=np.uint64)
    for i, payload in enumerate(payloads):
        h = hashlib.blake2b(vectors[i].data, digest_size=8)
        if payload:
            h.update(json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def points_digest(ids: np.ndarray, hashes: np.ndarray, model: str, dimension: int) -> str:
    """The content digest of a generation: model, dimension and every (id, point hash), in id order."""
    order = np.argsort(ids, kind="stable")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model}\x00{int(dimension)}\x00".encode())
    h.update(np.ascontiguousarray(ids[order], dtype="<i8").data)
    h.update(np.ascontiguousarray(hashes[order], dtype="<u8").data)
    return h.hexdigest()


class Points:
    """The points of a write with their content hashes and the digest of the whole set.

    The embedded engine keeps its own copy of what it is given: once the points are written,
    :meth:`written` drops the vectors here, so a caller that handed over its only reference (as
    ``movie_vectors`` does) frees them before the engine builds its index (0.5 GB at 82,702 x 1536).
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]], model: str) -> None:
        self.ids, self.vectors, self.payloads, self.model = ids, vectors, payloads, model
        self.hashes = point_hashes(vectors, payloads)
        self.digest = points_digest(ids, self.hashes, model, int(vectors.shape[1]))

    def written(self) -> None:
        self.vectors = self.payloads = None


def point_diff(old_ids: np.ndarray, old_hashes: np.ndarray, ids: np.ndarray, hashes: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``ids`` that are new or changed, old ids no longer present)."""
    old = dict(zip(old_ids.tolist(), old_hashes.tolist(), strict=True))
    write = np.fromiter((i for i, (pid, h) in enumerate(zip(ids.tolist(), hashes.tolist(), strict=True))
                         if old.get(pid) != h), dtype=np.int64)
    removed = np.setdiff1d(old_ids, ids, assume_unique=True)
    return write, removed.astype(np.int64)


def checked_exclusions(exclude: Sequence[Any] | None, rows: int) -> list[list[int]]:
    if exclude is None:
        return [[] for _ in range(rows)]
    exclude = list(exclude)
    if len(exclude) != rows:
        raise ValueError(f"exclude: {len(exclude)} sets for {rows} query vectors")
    return [sorted({int(i) for i in (e or ()) if int(i) >= 0}) for e in exclude]


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
