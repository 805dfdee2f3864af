"""Where pipeline state is kept: a local folder, or an object store such as ``s3://bucket/prefix``.

``RCMD_DATA_DIR`` may be a URL that fsspec understands (``s3://`` with ``s3fs`` installed, the
``s3`` extra; also ``gs://``, ``az://``, ``memory://``). :func:`state_path` then gives a
``universal_pathlib`` ``UPath``, which has ``pathlib``'s API (``/``, ``exists``, ``glob``,
``read_bytes``, ``stat``, ``unlink``), so the code that keeps asset values and caches is the same
for both; this module holds only what differs:

- **Atomic writes.** A local file is written to a temporary file in the same folder and renamed
  into place. An object store has no rename, but needs none: a PUT (or a completed multipart
  upload) makes the whole object visible at once, and a failed one leaves the previous object. So
  the value is written to a local temporary file and uploaded to the final key in one call.
  Either way a reader sees the old value or the new one, never half of it.
- **Reading Parquet and ``.npz``** goes through the filesystem object (``pyarrow`` reads only the
  columns asked for with range requests).
- **No folders on object stores**: :func:`folder` creates a local folder, and does nothing for a
  prefix (it exists as soon as an object is written under it).

S3 endpoint and credentials come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO), read by
botocore; nothing here logs them. The listing cache of ``s3fs`` is off: another machine may have
written the object a moment ago.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

StatePath = Path | UPath

_LOCAL_PROTOCOLS = ("", "file", "local")
_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"use_listings_cache": False},  # see the module docstring
}


def is_url(value: str | os.PathLike) -> bool:
    """Whether ``value`` names an object store (``scheme://...``) rather than a local folder."""
    text = str(value)
    return "://" in text and not text.startswith("file://")


def state_path(base: str | os.PathLike | UPath, *parts: str) -> StatePath:
    """``base/parts...`` as a local ``Path`` or, for a URL, a ``UPath`` (nothing is created)."""
    if isinstance(base, UPath) and is_remote(base):
        return base.joinpath(*parts) if parts else base
    text = str(base)
    if is_url(text):
        protocol = text.split("://", 1)[0]
        return UPath(text, **_OPTIONS.get(protocol, {})).joinpath(*parts)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser().joinpath(*parts)


def is_remote(path: Any) -> bool:
    """Whether ``path`` lives on an object store (a non-local ``UPath``)."""
    return isinstance(path, UPath) and getattr(path, "protocol", "") not in _LOCAL_PROTOCOLS


def folder(path: StatePath) -> StatePath:
    """``path`` as a folder: created if local and missing; a prefix on an object store needs nothing."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: StatePath, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` with a local temporary file, then publish it as ``path`` in one step:
    ``os.replace`` beside it for a local path, one upload to the final key on an object store."""
    if is_remote(path):
        fd, tmp = tempfile.mkstemp(prefix="rcmd-upload-", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            path.fs.put_file(tmp, path.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: StatePath, data: bytes) -> None:
    """``data`` as the whole content of ``path``, atomically (one PUT on an object store)."""
    if is_remote(path):
        path.fs.pipe_file(path.path, data)
    else:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_bytes(path: StatePath) -> bytes:
    return path.read_bytes()


def remove(path: StatePath) -> None:
    """Delete ``path`` if it is there."""
    try:
        path.unlink(missing_ok=True)
    except FileNotFoundError:  # some fsspec backends ignore missing_ok
        pass


def mtime(path: StatePath) -> float | None:
    """When ``path`` was last written (epoch seconds; an object's LastModified), None if missing."""
    try:
        return float(path.stat().st_mtime)
    except FileNotFoundError:
        return None


def listing(folder_path: StatePath, pattern: str) -> list[StatePath]:
    """The entries of ``folder_path`` matching the glob ``pattern``, sorted by name (none if missing)."""
    try:
        return sorted(folder_path.glob(pattern), key=lambda p: p.name)
    except FileNotFoundError:
        return []


def read_parquet(path: StatePath, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file as a table, only ``columns`` when given (range reads on an object store)."""
    if is_remote(path):
        return pq.read_table(path.path, columns=columns, filesystem=path.fs)
    return pq.read_table(path, columns=columns)


def parquet_file(path: StatePath) -> pq.ParquetFile:
    """A Parquet file opened for reading row group by row group (range reads on an object store)."""
    if is_remote(path):
        return pq.ParquetFile(path.path, filesystem=path.fs)
    return pq.ParquetFile(path)


def load_npz(path: StatePath, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (no pickles): every one, or only ``names`` (the others are not read)."""
    source = io.BytesIO(path.read_bytes()) if is_remote(path) else path
    with np.load(source, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in (arrays.files if names is None else names)}


class FolderReader:
    """Many small files of one folder, read in the order ``names`` gives (the TMDB cache: one file
    per movie). A local folder is read file by file. On an object store that would cost two requests
    per file, so one listing gives every object's write time and bodies are fetched concurrently,
    ``batch`` at a time, ahead of the reader; a body is dropped from memory once read."""

    def __init__(self, folder_path: StatePath, names: list[str] | None = None, batch: int = 256) -> None:
        self.folder = folder_path
        self.remote = is_remote(folder_path)
        self._written: dict[str, float] = _listing_times(folder_path) if self.remote else {}
        order = [n for n in (names or []) if n in self._written]
        self._position = {name: i for i, name in enumerate(order)}
        self._order, self._batch, self._bodies = order, batch, {}

    def mtime(self, name: str) -> float | None:
        """When ``name`` was last written (epoch seconds), None if it is not there."""
        return self._written.get(name) if self.remote else mtime(self.folder / name)

    def read(self, name: str) -> bytes:
        if not self.remote or name not in self._position:
            return (self.folder / name).read_bytes()
        if name not in self._bodies:
            start = self._position[name]
            wanted = self._order[start: start + self._batch]
            got = self.folder.fs.cat([f"{self.folder.path}/{n}" for n in wanted], on_error="omit")
            self._bodies = {key.rsplit("/", 1)[-1]: value for key, value in got.items()}
        body = self._bodies.pop(name, None)
        return body if body is not None else (self.folder / name).read_bytes()


def _listing_times(folder_path: UPath) -> dict[str, float]:
    """``{name: LastModified as epoch seconds}`` of the objects directly under ``folder_path``."""
    try:
        entries = folder_path.fs.ls(folder_path.path, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for entry in entries:
        if entry.get("type") != "file":
            continue
        stamp = entry.get("LastModified", entry.get("mtime"))
        out[entry["name"].rsplit("/", 1)[-1]] = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
    return out
