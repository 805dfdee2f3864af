"""Asset checks: what must hold after each materialization, shown beside each asset in the UI.

``definitions.checks_for`` finds every check of this module (no list to keep); the "<strategy> beats
random" checks are made per registered strategy in ``assets/strategies.py``.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    Config,
    MetadataValue,
    asset_check,
)
from pydantic import Field

from rcmd_pipeline import storage
from rcmd_pipeline.assets.strategies import beats_random  # noqa: F401 - re-exported
from rcmd_pipeline.embedding_cache import load_embeddings
from rcmd_pipeline.resources.local_state import LocalStateDir, stored_value_path
from rcmd_pipeline.resources.movie_db import MovieDatabase


class EmbeddingCoverageConfig(Config):
    min_share: float = Field(default=0.9, ge=0.0, le=1.0,
                             description="Least share of the evaluated movies that must have a vector.")


@asset_check(asset="movie_overview_embeddings", additional_deps=["eval_transitions"],
             description="Enough of the movies in the evaluation set have an overview vector.")
def evaluated_movies_have_vectors(config: EmbeddingCoverageConfig, local_state: LocalStateDir) -> AssetCheckResult:
    # The evaluation set is read only if it exists (where LocalStateIOManager keeps it), so that
    # materializing the embeddings before any evaluation warns instead of failing the run. Of the
    # embeddings only the movie ids are read (not the vectors: 0.5 GB at MovieLens-32M scale).
    stored = stored_value_path(local_state.base_dir, ["eval_transitions"])  # a Path or an object-store UPath
    if stored is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description="eval_transitions is not materialized yet: nothing to compare with.")
    eval_transitions = storage.read_parquet(stored, columns=["prev_movieId", "movieId"]).to_pandas()
    evaluated = pd.unique(eval_transitions[["prev_movieId", "movieId"]].to_numpy().ravel())
    with_vector = pd.Index(load_embeddings(local_state.base_dir, ["movieId"])["movieId"])
    missing = sorted(int(m) for m in evaluated if m not in with_vector)
    share = 1.0 - len(missing) / len(evaluated) if len(evaluated) else 1.0
    return AssetCheckResult(
        passed=share >= config.min_share,
        metadata={"share": MetadataValue.float(share), "min_share": MetadataValue.float(config.min_share),
                  "evaluated_movies": len(evaluated),
                  "without_vector": MetadataValue.text(", ".join(map(str, missing[:50])) or "none")},
    )


@asset_check(asset="movie_table", additional_deps=["series_table"],
             description="Every movie.series_id > 0 exists in the series table.")
def movie_series_exist(movie_db: MovieDatabase) -> AssetCheckResult:
    orphans = movie_db.orphan_series()
    return AssetCheckResult(
        passed=not orphans,
        metadata={"missing_series": len(orphans), "movies_affected": sum(orphans.values()),
                  "first_missing": MetadataValue.text(", ".join(map(str, list(orphans)[:20])) or "none")},
    )


@asset_check(asset="eval_transitions", description="The evaluation set has the configured size, no pair "
                                                    "twice and no missing previous movie.")
def evaluation_set_is_complete(context: AssetCheckExecutionContext,
                               eval_transitions: pd.DataFrame) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(AssetKey("eval_transitions"))
    configured = event.asset_materialization.metadata["eval_size"].value if event else None
    duplicates = int(eval_transitions.duplicated(["userId", "timestamp", "movieId"]).sum())
    no_prev = int((eval_transitions["prev_movieId"] <= 0).sum())
    passed = configured is not None and len(eval_transitions) == configured and duplicates == 0 and no_prev == 0
    return AssetCheckResult(
        passed=bool(passed),
        metadata={"pairs": len(eval_transitions), "configured_eval_size": configured if configured else -1,
                  "duplicate_pairs": duplicates, "pairs_without_previous": no_prev},
    )

