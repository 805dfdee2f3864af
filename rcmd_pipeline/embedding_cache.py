"""What is embedded for a movie, and the cache that makes re-embedding incremental (plain Python).

A vector is kept under the hash of (cache space, embedded text), the cache space being the
embedder's ``cache_space(dimension)``: model name, dimension and the optional namespace
(``RCMD_EMBEDDING_NAMESPACE``), not the endpoint. So a re-run on an unchanged catalogue embeds
nothing, a changed overview re-embeds that movie only, another model or dimension re-embeds
everything, and the same model behind another gateway re-embeds nothing. Caches written when the key
was ``model_id()`` (which holds an OpenAI-compatible server's host and port) are migrated on read:
a text missing under the new key is looked up under the old one, and a hit is reused and stored
again under the new key. The cache is written chunk by chunk while the embedder works, so vectors
paid for before a failure are never paid for twice.

The embeddings asset's value is a dict of NumPy arrays (:func:`embeddings_value`), stored as one
``.npz``: ``movieId`` int64 (n,), ``text_hash`` fixed-width str (n,), ``vector`` float32 (n, d), so
reading 82,702 x 1536 vectors is one contiguous read instead of a column of Python arrays.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rcmd_pipeline import storage

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


_PARQUET_OPTIONS = {"use_dictionary": False, "compression": "none", "write_statistics": False}
"""How cache parts are written: the hashes are unique and the vectors random-looking floats, so a
dictionary, compression and statistics only cost time (a 256 x 1536 part: 77 ms with Parquet's
defaults, which try a dictionary of the floats; 13 ms without; 25 s of a 32M-scale catalogue)."""


class EmbeddingCache:
    """Vectors by text hash in ``<folder>/part-*.parquet``; one part per embedded chunk. ``folder``
    may be an object-store prefix (``rcmd_pipeline.storage``): each part is then one object."""

    def __init__(self, folder: str | Path | storage.StatePath) -> None:
        self.folder = storage.folder(storage.state_path(folder))

    def _parts(self) -> list[storage.StatePath]:
        return storage.listing(self.folder, "part-*.parquet")

    def load(self) -> dict[str, np.ndarray]:
        """``{key: vector}``; read row group by row group, so each group's vectors are one buffer of
        their own that is freed once none of its vectors is used any more."""
        cached: dict[str, np.ndarray] = {}
        for part in self._parts():
            source = storage.parquet_file(part)
            for group in range(source.num_row_groups):
                table = source.read_row_group(group)
                for key, vector in zip(table.column("text_hash").to_pylist(), table_vectors(table), strict=True):
                    cached[key] = vector
        return cached

    def append(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist one embedded chunk at once (atomically), before anything else can fail."""
        if keys:
            table = vectors_table(keys, vectors)
            path = self.folder / f"part-{uuid.uuid4().hex}.parquet"
            storage.atomic_write(path, lambda p: pq.write_table(table, p, **_PARQUET_OPTIONS))

    def compact(self, keys: list[str], vectors: np.ndarray, rows: np.ndarray) -> None:
        """Rewrite the cache as one part holding exactly ``keys`` with the vectors ``vectors[rows]``
        (drops vectors no longer used). Written :data:`CACHE_GROUP_ROWS` rows at a time, so the whole
        matrix is never copied, and read back group by group (:meth:`load`)."""
        old = self._parts()

        def write(path: Path) -> None:
            schema = vectors_table([], np.zeros((0, vectors.shape[1]), np.float32)).schema
            with pq.ParquetWriter(path, schema, **_PARQUET_OPTIONS) as out:
                for start in range(0, len(keys), CACHE_GROUP_ROWS):
                    stop = start + CACHE_GROUP_ROWS
                    out.write_table(vectors_table(keys[start:stop], vectors[rows[start:stop]]))
        storage.atomic_write(self.folder / f"part-{uuid.uuid4().hex}.parquet", write)
        for part in old:
            storage.remove(part)

    def parts(self) -> int:
        return len(self._parts())


COMPACT_UNUSED_SHARE = 0.25
"""The cache is rewritten without unused vectors only when they are more than this share of it (or
when it has more than :data:`COMPACT_MAX_PARTS` parts): a night that re-embeds a few overviews then
appends one small part instead of rewriting 500 MB of vectors."""
COMPACT_MAX_PARTS = 64
PROGRESS_SECONDS = 10.0
CACHE_GROUP_ROWS = 4096
"""Rows per row group of a compacted cache part (24 MB of 1536-d vectors)."""


def embed_with_cache(texts: list[str], embedder: Any, cache: EmbeddingCache, chunk_size: int,
                     log: Callable[[str], None] = lambda message: None) -> tuple[list[str], np.ndarray, dict]:
    """The vector of each (non-empty) text, from the cache or else from ``embedder``, in order.

    Returns (cache key per text, float32 (len(texts), d) vectors, counts: ``embedded`` texts sent,
    ``migrated`` vectors found under the old key, ``dimension``). Every embedded chunk is saved
    before the next one is sent.

    The key needs the dimension. When the embedder cannot tell it without a request (an
    OpenAI-compatible server of unknown model, no ``dimensions`` set), the dimension of the cached
    vectors is assumed and checked against the first embedded chunk; if there is nothing to embed,
    one probe request checks it, as an unchecked cache could be another model's vectors.
    """
    call = _CachedEmbedding(texts, embedder, cache, log)
    call.look_up()
    call.embed_missing(chunk_size)
    return call.result()


class _CachedEmbedding:
    """One call of :func:`embed_with_cache`: each text's key, the vectors found in the cache (``found``;
    ``migrated`` those found under the old key) and the texts still to embed (``todo``)."""

    def __init__(self, texts: list[str], embedder: Any, cache: EmbeddingCache, log: Callable[[str], None]) -> None:
        self.texts, self.embedder, self.cache, self.log = texts, embedder, cache, log
        self.unique = list(dict.fromkeys(texts))
        self.cached = cache.load()
        self.legacy_space = embedder.model_id()
        self.dimension: int | None = embedder.known_dimension()
        self.guess = self.dimension
        self.key_of: dict[str, str] = {}
        self.found: dict[str, np.ndarray] = {}
        self.migrated: dict[str, np.ndarray] = {}
        self.todo: list[str] = []

    def _resolve(self, dimension: int) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(key of each text, cached vector of each text found, vectors found under the old key by new key)
        in the cache space of ``dimension``."""
        space = self.embedder.cache_space(dimension)
        key_of = {t: text_hash(space, t) for t in self.unique}
        found: dict[str, np.ndarray] = {}
        migrated: dict[str, np.ndarray] = {}
        for text, key in key_of.items():
            vector = self.cached.get(key)
            if vector is None and space != self.legacy_space:
                vector = self.cached.get(text_hash(self.legacy_space, text))
                if vector is not None and len(vector) == dimension:
                    migrated[key] = vector
            if vector is not None and len(vector) == dimension:
                found[text] = vector
        return key_of, found, migrated

    def _store_migrated(self) -> None:
        if self.migrated:
            self.cache.append(list(self.migrated), np.stack(list(self.migrated.values())))

    def look_up(self) -> None:
        """The cached vectors, in the embedder's dimension or else the cached one that finds the most."""
        if self.guess is None and self.cached:
            candidates = {len(v) for v in self.cached.values()}
            self.guess = max(sorted(candidates), key=lambda d: len(self._resolve(d)[1]))
        if self.guess is not None:
            self.key_of, self.found, self.migrated = self._resolve(self.guess)
        self.todo = [t for t in self.unique if t not in self.found]
        if self.dimension is None and self.unique and not self.todo:  # all cached: check the assumed dimension once
            self.dimension = self.embedder.dimension()
            if self.dimension != self.guess:
                self.key_of, self.found, self.migrated = self._resolve(self.dimension)
                self.todo = [t for t in self.unique if t not in self.found]
        if self.migrated:
            self._store_migrated()
            self.log(f"reused {len(self.migrated)} vectors cached under the old key (model id with endpoint), "
                     "stored again under the new key")

    def embed_missing(self, chunk_size: int) -> None:
        """Embed ``todo`` chunk by chunk, each chunk cached before the next is sent; progress logged at
        most every :data:`PROGRESS_SECONDS` (a Dagster log line is an event-log write: 9 s for 324
        chunks) and at the end."""
        done, logged = 0, time.monotonic()
        while done < len(self.todo):
            chunk = self.todo[done: done + chunk_size]
            vectors = self.embedder.embed(chunk)
            if self.dimension is None:  # the first answer tells the dimension
                self.dimension = int(vectors.shape[1])
                if self.dimension != self.guess:
                    self.key_of, self.found, self.migrated = self._resolve(self.dimension)
                    self._store_migrated()
                    sent = set(chunk)
                    self.todo = chunk + [t for t in self.unique if t not in self.found and t not in sent]
            self.cache.append([self.key_of[t] for t in chunk], vectors)  # paid for: kept even if a later chunk fails
            self.found.update(zip(chunk, vectors, strict=True))
            done += len(chunk)
            if done >= len(self.todo) or time.monotonic() - logged >= PROGRESS_SECONDS:
                self.log(f"embedded {done}/{len(self.todo)} texts")
                logged = time.monotonic()

    def result(self) -> tuple[list[str], np.ndarray, dict]:
        """(key per text, vectors, counts) as :func:`embed_with_cache` returns them; the cache compacted
        when it holds many unused vectors or parts."""
        if self.dimension is None:
            self.dimension = self.guess if self.guess is not None else self.embedder.dimension()
        dimension = int(self.dimension)
        keys = [self.key_of[t] for t in self.texts]
        stored = len(self.cached) + len(self.migrated) + len(self.todo)
        counts = {"embedded": len(self.todo), "migrated": len(self.migrated), "dimension": dimension}
        self.cached.clear()  # from here on ``found`` alone holds the vectors: ``out`` takes them over
        self.migrated.clear()
        out = _stack_consuming(self.texts, self.found, dimension)
        self._compact(out, stored)
        return keys, out, counts

    def _compact(self, out: np.ndarray, stored: int) -> None:
        """Rewrite the cache as the vectors in use (``out``'s rows) when it holds :data:`COMPACT_UNUSED_SHARE`
        unused ones or more than :data:`COMPACT_MAX_PARTS` parts. An empty catalogue never empties it."""
        unique = self.unique
        if unique and (stored - len(unique) > COMPACT_UNUSED_SHARE * stored or self.cache.parts() > COMPACT_MAX_PARTS):
            first = dict(zip(reversed(self.texts), range(len(self.texts) - 1, -1, -1), strict=True))  # text -> row
            rows = np.array([first[t] for t in unique], dtype=np.int64)
            self.cache.compact([self.key_of[t] for t in unique], out, rows)


def _stack_consuming(texts: list[str], found: dict[str, np.ndarray], dimension: int) -> np.ndarray:
    """``np.stack([found[t] for t in texts])`` as float32, emptying ``found`` on the way: a vector is
    dropped after its text's last row, so the chunk and cache arrays it views are freed while the
    result fills (at 82,702 x 1536 the step holds 0.5 GB of vectors, not twice that)."""
    out = np.empty((len(texts), dimension), dtype=np.float32)
    last = {t: i for i, t in enumerate(texts)}
    for i, text in enumerate(texts):
        out[i] = found[text]
        if last[text] == i:
            del found[text]
    return out


def embeddings_value(movie_ids: np.ndarray, keys: list[str], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The embeddings asset's value: ``movieId`` int64, ``text_hash`` fixed-width str, ``vector`` float32 (n, d)."""
    return {"movieId": np.asarray(movie_ids, dtype=np.int64),
            "text_hash": np.array(keys, dtype="U64") if keys else np.zeros(0, dtype="U64"),
            "vector": np.ascontiguousarray(vectors, dtype=np.float32)}


def content_version(value: Mapping[str, np.ndarray]) -> str:
    """A hash of (movieId, text_hash) pairs: it changes exactly when some movie's vector would."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(value["movieId"], dtype="<i8").data)
    h.update("\n".join(map(str, value["text_hash"].tolist())).encode())
    h.update(str(value["vector"].shape[1] if value["vector"].ndim == 2 else 0).encode())
    return h.hexdigest()


def load_embeddings(base_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The stored embeddings value (as :func:`embeddings_value`) read straight from ``RCMD_DATA_DIR``:
    for a consumer that decides first whether it needs it at all, or needs only some of its arrays
    (``names``, e.g. the movie ids without the 0.5 GB of vectors at 32M). A value stored by an older
    version (Parquet with a list column) is converted."""
    from rcmd_pipeline.resources.local_state import stored_value_path

    path = stored_value_path(base_dir, ["movie_overview_embeddings"])
    if path is None:
        raise FileNotFoundError(f"No stored value for asset movie_overview_embeddings under {base_dir}; "
                                "materialize it first (RCMD_DATA_DIR decides where values are kept).")
    if path.suffix == ".npz":
        return storage.load_npz(path, names)
    table = storage.read_parquet(path)
    value = embeddings_value(table.column("movieId").to_numpy(), table.column("text_hash").to_pylist(),
                             table_vectors(table))
    return value if names is None else {name: value[name] for name in names}


def frame_vectors(frame: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
    """The vectors of an embeddings value as one (n, d) float32 array (no copy for the dict form)."""
    if isinstance(frame, Mapping):
        return np.asarray(frame["vector"], dtype=np.float32)
    if len(frame) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(frame["vector"].to_numpy()).astype(np.float32, copy=False)
