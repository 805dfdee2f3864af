"""The Dagster definitions: assets, jobs, schedules and resources, chosen from environment variables.

``dagster dev`` and ``dagster definitions validate`` find this module from the project root
(``workspace.yaml`` / ``[tool.dagster]``); ``dagster asset materialize`` needs
``-m rcmd_pipeline.definitions``.
"""

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    define_asset_job,
    load_assets_from_modules,
)

from rcmd_pipeline import settings
from rcmd_pipeline.assets import catalog, embeddings, evaluation, movielens, tmdb
from rcmd_pipeline.assets.checks import all_checks
from rcmd_pipeline.resources.embedder import embedder_from_environment
from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager
from rcmd_pipeline.resources.movie_db import movie_database_from_environment
from rcmd_pipeline.resources.movielens import MovieLensFiles
from rcmd_pipeline.resources.tmdb import tmdb_client_from_environment
from rcmd_pipeline.resources.vector_store import vector_store_from_environment

all_assets = load_assets_from_modules([movielens, tmdb, catalog, embeddings, evaluation])

rcmd_full_pipeline = define_asset_job(
    "rcmd_full_pipeline",
    selection=AssetSelection.all(),
    description="Every asset: MovieLens and TMDB → catalogue tables and vectors → evaluation → leaderboard.",
)

nightly_reembedding_job = define_asset_job(
    "nightly_reembedding_job",
    selection=AssetSelection.assets("tmdb_movie_info_kr").downstream(),
    description="TMDB refresh → movie/series tables → embeddings (incremental) → vectors → every strategy's "
                "hit ratio → leaderboard, in one run. The evaluation set is read as last materialized.",
)

nightly_reembedding = ScheduleDefinition(
    name="nightly_reembedding",
    job=nightly_reembedding_job,
    cron_schedule="0 3 * * *",
    execution_timezone="Asia/Seoul",
    default_status=DefaultScheduleStatus.STOPPED,
    description="03:00 Asia/Seoul: refresh TMDB details, re-embed what changed, rebuild the vector "
                "collection and re-score every strategy. Turn it on in the UI (Automation) or with "
                "`dagster schedule start nightly_reembedding`; it runs while `dagster dev` or the daemon runs.",
)


def build_resources(environ=os.environ) -> dict:
    """Resources for the current environment (see README: configuration by environment variable)."""
    data_dir = settings.data_dir()
    return {
        "io_manager": LocalStateIOManager(base_dir=str(data_dir)),
        "local_state": LocalStateDir(base_dir=str(data_dir)),
        "movielens": MovieLensFiles(path=str(settings.dataset_path())),
        "tmdb": tmdb_client_from_environment(environ, settings.tmdb_snapshot_dir()),
        "movie_db": movie_database_from_environment(environ, data_dir),
        "embedder": embedder_from_environment(environ),
        "vector_store": vector_store_from_environment(environ, data_dir),
    }


defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[rcmd_full_pipeline, nightly_reembedding_job],
    schedules=[nightly_reembedding],
    resources=build_resources(),
)
