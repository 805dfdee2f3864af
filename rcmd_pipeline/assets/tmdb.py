"""TMDB movie details in Korean for every MovieLens movie that has a TMDB id.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from rcmd_pipeline.assets import versioning
from rcmd_pipeline.resources.local_state import LocalStateDir
from rcmd_pipeline.resources.tmdb import RECORD_COLUMNS, FetchReport, SnapshotTmdbClient, TmdbClient

GROUP = "tmdb"
LANGUAGE = "ko-KR"


class TmdbFetchConfig(Config):
    max_failed_share: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="Fail the asset when more than this share of the requested movies failed. What was "
                    "fetched stays in the cache, so the next run asks TMDB only for the rest.",
    )


def _failures_table(failed: list[tuple[int, str]], limit: int = 20) -> str:
    lines = ["| movieId | reason |", "|---|---|"]
    lines += [f"| {movie_id} | {reason.replace('|', '/')} |" for movie_id, reason in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"| … | and {len(failed) - limit} more |")
    return "\n".join(lines)


@asset(group_name=GROUP, kinds={"python", "parquet"}, pool="tmdb_api")  # rcmd_pipeline.operations.TMDB_POOL
def tmdb_movie_info_kr(
    context: AssetExecutionContext,
    config: TmdbFetchConfig,
    tmdb: TmdbClient,
    local_state: LocalStateDir,
    movielens_links: pd.DataFrame,
) -> Output:
    """Korean (ko-KR) TMDB details, one record per MovieLens movie that has a tmdbId.

    Live TMDB when ``TMDB_READ_ACCESS_TOKEN`` or ``TMDB_API_KEY`` is set — rate-limited, retried,
    and cached movie by movie under ``RCMD_DATA_DIR/tmdb_cache`` as each answer arrives, so an
    interrupted run loses nothing and the next one fetches only what is missing — otherwise the
    TMDB-shaped JSON snapshot of the data set (``<RCMD_DATASET_PATH>/tmdb/ko-KR``). Movies TMDB
    does not know (404) are counted, not retried. A snapshot whose files did not change is not read
    again; the data version is a hash of the details, so a refresh that changed nothing leaves
    everything downstream up to date.
    """
    snapshot = isinstance(tmdb, SnapshotTmdbClient)
    if snapshot and not Path(tmdb.snapshot_dir).is_dir():
        raise Failure(
            f"No TMDB credentials (TMDB_READ_ACCESS_TOKEN or TMDB_API_KEY) and no TMDB snapshot folder at "
            f"{tmdb.snapshot_dir} (RCMD_TMDB_SNAPSHOT_DIR). Set one of them."
        )
    # A snapshot that did not change gives the same details: keep them. The live client always asks
    # (its cache answers what is fresh, TMDB_MAX_AGE_DAYS decides what is refreshed).
    version = versioning.inputs_version(context, config=config, upstream=["movielens_links"],
                                        extra=tmdb.fingerprint() if snapshot else context.run.run_id)
    previous = versioning.unchanged_since(context, version, snapshot and versioning.value_is_stored(context))
    if previous is not None:
        return versioning.kept(context, version, previous)
    links = movielens_links.dropna(subset=["tmdbId"])
    items = list(zip(links["movieId"].astype(int), links["tmdbId"].astype(int), strict=True))
    if not items:
        raise Failure("movielens_links has no movie with a tmdbId: nothing to fetch from TMDB.")
    records, report = tmdb.fetch_details(items, local_state.folder("tmdb_cache", LANGUAGE), log=context.log)
    metadata = _report_metadata(report)
    _fail_on_a_bad_fetch(records, report, config, metadata)
    frame = pd.DataFrame.from_records(list(records.values()), columns=list(RECORD_COLUMNS))
    frame = frame.sort_values("movieId").reset_index(drop=True)
    frame["vote_count"] = frame["vote_count"].astype("Int64")  # None (absent) stays missing, not NaN floats
    metadata.update({
        "dagster/row_count": len(frame),
        "with_overview": int((frame["overview"] != "").sum()),
        "in_a_series": int((frame["collection_id"] > 0).sum()),
    })
    return versioning.computed(frame, version, metadata, data_version=versioning.frame_digest(frame))


def _report_metadata(report: FetchReport) -> dict:
    metadata = {
        "requested": report.requested,
        "served_from_cache": report.from_cache,
        "fetched": report.fetched,
        "not_found": report.not_found,
        "failed": len(report.failed),
        "requests_per_second": MetadataValue.float(round(report.requests_per_second, 2)),
    }
    if report.failed:
        metadata["failures"] = MetadataValue.md(_failures_table(report.failed))
    return metadata


def _fail_on_a_bad_fetch(records: dict, report: FetchReport, config: TmdbFetchConfig, metadata: dict) -> None:
    """Too many failures, or no record at all: fail rather than replace the catalogue with a worse one."""
    if len(report.failed) > config.max_failed_share * report.requested:
        raise Failure(
            f"{len(report.failed)} of {report.requested} TMDB requests failed (more than max_failed_share="
            f"{config.max_failed_share}); the {report.from_cache + report.fetched} movies fetched so far are "
            "kept in the cache and the next run fetches only the rest.",
            metadata=metadata,
        )
    if not records:
        raise Failure(f"TMDB gave details for none of the {report.requested} requested movies "
                      f"({report.not_found} not found, {len(report.failed)} failed): refusing to replace the "
                      "catalogue with an empty one.", metadata=metadata)
