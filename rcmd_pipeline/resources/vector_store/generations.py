"""Generations of a collection on local disk, for a store that keeps its files in a folder.

``<root>/<C>/g<n>/`` holds one generation (the engine's files, ``manifest.json``, ``points.npz``,
``readers.lock``); ``<root>/<C>/CURRENT`` names the served one and is replaced atomically, and
``write.lock`` lets one writer at a time build the next. Engine-independent: :class:`GenerationSession`
does the folders, locks, switch, clean-up and the ``sync``/``upsert`` decisions, and an engine's
session fills a generation's folder and answers queries. Why it is safe across processes:
``docs/vector_store.md``.
"""

import fcntl
import json
import logging
import os
import re
import shutil
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from rcmd_pipeline.resources.vector_store.points import Points, point_diff, points_digest
from rcmd_pipeline.resources.vector_store.session import VectorSession, VectorStoreError
from rcmd_pipeline.storage import atomic_write

log = logging.getLogger(__name__)

_GENERATION_FOLDER = re.compile(r"^g(\d{6,})$")
_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_READERS_LOCK = "readers.lock"
_WRITE_LOCK = "write.lock"
_POINTS = "points.npz"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it onto ``path``, fsync the folder."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Generation:
    """One generation opened by a session: the engine's open data (``shard``), and a shared lock that
    keeps it from deletion."""

    def __init__(self, folder: Path, manifest: dict[str, Any], shard: Any, lock_fd: int) -> None:
        self.folder, self.manifest, self.shard, self.lock_fd = folder, manifest, shard, lock_fd

    @property
    def name(self) -> str:
        return self.folder.name

    def close(self) -> None:
        try:
            with suppress(Exception):
                self.shard.close()
        finally:
            with suppress(OSError):
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            with suppress(OSError):
                os.close(self.lock_fd)


class GenerationSession(VectorSession):
    """A session over the generation folders of ``root``; the engine's subclass implements
    :meth:`_open_data`, :meth:`_rebuild_locked`, :meth:`_patched` and the reads."""

    def __init__(self, root: Path, path: str, lock_timeout_seconds: float) -> None:
        self._root = root
        self._path = path
        self._lock_timeout_seconds = lock_timeout_seconds
        self._open: dict[str, Generation] = {}
        self._touched: set[str] = set()

    # -- folders, locks, the CURRENT pointer

    def _folder(self, collection: str) -> Path:
        return self._root / collection

    @contextmanager
    def _write_lock(self, collection: str, wait: bool = True) -> Iterator[bool]:
        """The collection's exclusive write lock; yields False at once if busy and not ``wait``."""
        folder = self._folder(collection)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / _WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self._lock_timeout_seconds
            acquired = False
            while not acquired:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    acquired = True
                except BlockingIOError:
                    if not wait:
                        break
                    if time.monotonic() > deadline:
                        raise VectorStoreError(
                            f"another process has been writing collection {collection!r} in {self._path} "
                            f"for over {self._lock_timeout_seconds:.0f} s (lock {folder / _WRITE_LOCK})"
                        ) from None
                    time.sleep(0.2)
            try:
                yield acquired
            finally:
                if acquired:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _current_name(self, collection: str) -> str | None:
        name = _read_text(self._folder(collection) / _CURRENT)
        return name if name and _GENERATION_FOLDER.match(name) else None

    def _attach(self, folder: Path) -> Generation | None:
        """Open a generation for reading, or None if it was deleted meanwhile."""
        try:
            fd = os.open(folder / _READERS_LOCK, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a clean-up deletes this folder (then it is gone)
            try:
                manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
            except FileNotFoundError:
                os.close(fd)
                return None
            shard = self._open_data(folder)
        except BaseException:
            with suppress(OSError):
                os.close(fd)
            raise
        return Generation(folder, manifest, shard, fd)

    def _served(self, collection: str) -> Generation | None:
        """The served generation, opened (or kept open) in this session; None if the collection is absent."""
        self._touched.add(collection)
        for _ in range(50):
            name = self._current_name(collection)
            cached = self._open.get(collection)
            if name is None:
                if cached is not None:
                    cached.close()
                    del self._open[collection]
                return None
            if cached is not None and cached.name == name:
                return cached
            generation = self._attach(self._folder(collection) / name)
            if generation is None:
                time.sleep(0.02)  # replaced and deleted between reading CURRENT and locking: read it again
                continue
            self._open[collection] = generation
            if cached is not None:
                cached.close()
            return generation
        raise VectorStoreError(f"collection {collection!r} in {self._path} kept changing while being opened")

    def _generation_folder(self, collection: str, number: int) -> Path:
        return self._folder(collection) / f"g{number:06d}"

    def _next_number(self, collection: str) -> int:
        numbers = [int(m.group(1)) for child in self._folder(collection).iterdir()
                   if (m := _GENERATION_FOLDER.match(child.name))]
        return max(numbers, default=0) + 1

    def _collect_garbage(self, collection: str) -> None:
        """Delete generations other than the served one that no session reads (caller holds the write lock)."""
        folder = self._folder(collection)
        current = self._current_name(collection)
        for child in folder.iterdir():
            if child.name == current or not _GENERATION_FOLDER.match(child.name) or not child.is_dir():
                continue
            try:
                fd = os.open(child / _READERS_LOCK, os.O_RDWR)
            except FileNotFoundError:
                shutil.rmtree(child, ignore_errors=True)  # an interrupted build
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # still read by a session (of any process): a later clean-up removes it
                (child / _MANIFEST).unlink(missing_ok=True)  # first: a folder without manifest is never opened
                shutil.rmtree(child, ignore_errors=True)
            finally:
                os.close(fd)

    # -- building a generation

    def _publish(self, collection: str, folder: Path, shard: Any, manifest: dict[str, Any]) -> Generation:
        """Write the manifest, take a reader lock, switch CURRENT to ``folder``, drop old generations."""
        _write_atomically(folder / _MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
        fd = os.open(folder / _READERS_LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            _write_atomically(self._folder(collection) / _CURRENT, folder.name + "\n")  # THE switch
        except BaseException:
            os.close(fd)
            raise
        generation = Generation(folder, manifest, shard, fd)
        previous = self._open.pop(collection, None)
        self._open[collection] = generation
        if previous is not None:
            previous.close()
        try:
            self._collect_garbage(collection)
        except OSError as exc:  # the switch is done; a leftover is only disk space
            log.warning(f"could not clean old generations of {collection!r}: {exc}")
        return generation

    def _build(self, collection: str, fill: Callable[[Path], tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        """A new generation folder, filled by ``fill(folder) -> (open shard, manifest)`` (which closes
        its shard if it fails), then published. Removed again if anything fails before the switch."""
        number = self._next_number(collection)
        folder = self._generation_folder(collection, number)
        folder.mkdir()
        (folder / _READERS_LOCK).touch()
        shard = None
        try:
            shard, manifest = fill(folder)
            manifest = {"format": 1, "collection": collection, "generation": number, **manifest}
            self._publish(collection, folder, shard, manifest)
        except BaseException:
            if self._current_name(collection) != folder.name:  # not switched: nobody reads it
                if shard is not None:
                    with suppress(Exception):
                        shard.close()
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return manifest

    # -- writes: one writer per collection at a time (write.lock)

    def _rebuild(self, collection, points):
        with self._write_lock(collection):
            return self._rebuild_locked(collection, points)

    def _upsert(self, collection, points):
        with self._write_lock(collection):
            self._touched.add(collection)
            served = self._served(collection)
            if served is None:
                stats = self._rebuild_locked(collection, points)
                return {**stats, "upserted": len(points.ids), "created": True}
            parent = served.manifest
            self._check_same_space(collection, parent, int(points.vectors.shape[1]), points.model)
            hashes, digest = None, None
            known = self._read_point_hashes(served.folder) if parent.get("digest") else None
            if known is not None:  # keep the point hashes exact: the parent's, updated by these points
                merged = dict(zip(known[0].tolist(), known[1].tolist(), strict=True))
                merged.update(zip(points.ids.tolist(), points.hashes.tolist(), strict=True))
                all_ids = np.fromiter(merged, dtype=np.int64, count=len(merged))
                all_hashes = np.fromiter(merged.values(), dtype=np.uint64, count=len(merged))
                hashes = (all_ids, all_hashes)
                digest = points_digest(all_ids, all_hashes, points.model, int(parent["dimension"]))
            stats = self._patched(collection, served, points, np.arange(len(points.ids)),
                                  np.zeros(0, dtype=np.int64), hashes, digest, "upsert")
            return {**stats, "created": False}

    def _sync(self, collection, points, max_changed_share):
        with self._write_lock(collection):
            self._touched.add(collection)
            served = self._served(collection)
            dimension = int(points.vectors.shape[1])
            manifest = served.manifest if served is not None else {}
            known = None
            if served is None:
                reason = "no served collection yet"
            elif manifest.get("model") != points.model:
                reason = f"model changed ({manifest.get('model')!r} -> {points.model!r})"
            elif manifest.get("dimension") != dimension:
                reason = f"dimension changed ({manifest.get('dimension')} -> {dimension})"
            elif manifest.get("digest") == points.digest:
                return {"action": "kept", "reason": "served generation holds exactly these points",
                        "collection": collection, "points": int(manifest["points"]), "dimension": dimension,
                        "model": points.model, "generation": manifest["generation"], "location": str(served.folder)}
            elif not manifest.get("digest") or (known := self._read_point_hashes(served.folder)) is None:
                reason = "served generation records no point hashes"
            else:
                write, delete = point_diff(known[0], known[1], points.ids, points.hashes)
                changed = len(write) + len(delete)
                share = changed / max(len(points.ids), len(known[0]), 1)
                if share > max_changed_share:
                    reason = f"{share:.1%} of the points changed (more than {max_changed_share:.0%})"
                else:
                    stats = self._patched(collection, served, points, write, delete,
                                          (points.ids, points.hashes), points.digest, "sync")
                    return {**stats, "action": "updated", "changed_share": share,
                            "reason": f"{len(write)} new or changed, {len(delete)} removed ({share:.2%})"}
            stats = self._rebuild_locked(collection, points)
            return {**stats, "action": "rebuilt", "reason": reason, "upserted": len(points.ids)}

    # -- the point hashes of a generation (points.npz)

    @staticmethod
    def _write_point_hashes(folder: Path, ids: np.ndarray, hashes: np.ndarray) -> None:
        """``points.npz``: ids (sorted) and their content hashes, what the next ``sync`` diffs against."""
        order = np.argsort(ids, kind="stable")
        with open(folder / _POINTS, "wb") as out:  # a file object: np.savez would append ".npz" to a name
            np.savez(out, ids=ids[order].astype(np.int64), hashes=hashes[order].astype(np.uint64))

    @staticmethod
    def _read_point_hashes(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(folder / _POINTS, allow_pickle=False) as stored:
                return stored["ids"], stored["hashes"]
        except (FileNotFoundError, KeyError, ValueError, OSError):
            return None

    # -- reads

    def _need(self, collection: str) -> Generation:
        served = self._served(collection)
        if served is None:
            self._require(collection)  # raises with the usual message
        return served

    def _close(self) -> None:
        for generation in self._open.values():
            generation.close()
        self._open.clear()
        for collection in sorted(self._touched):  # drop generations this session was the last to read
            if not self._folder(collection).is_dir():
                continue
            try:
                with self._write_lock(collection, wait=False) as locked:
                    if locked:
                        self._collect_garbage(collection)
            except OSError as exc:
                log.warning(f"could not clean old generations of {collection!r}: {exc}")

    # -- what the engine does

    @abstractmethod
    def _open_data(self, folder: Path) -> Any:
        """Open the engine's data of the generation in ``folder`` for reading (an object with ``close()``)."""

    @abstractmethod
    def _rebuild_locked(self, collection: str, points: Points) -> dict[str, Any]:
        """:meth:`rebuild` (the caller holds the write lock): :meth:`_build` a generation of exactly ``points``."""

    @abstractmethod
    def _patched(self, collection: str, served: Generation, points: Points, write: np.ndarray,
                 delete: np.ndarray, hashes: tuple[np.ndarray, np.ndarray] | None, digest: str | None,
                 source: str) -> dict[str, Any]:
        """:meth:`_build` a copy of ``served`` with rows ``write`` of ``points`` upserted and the ids
        ``delete`` deleted, carrying the point hashes/digest given (None: unknown); ``source`` is
        ``"sync"`` or ``"upsert"`` (the caller holds the write lock). ``served`` is never modified."""
