"""The Dagster definitions: assets, jobs and resources, chosen from environment variables.

``dagster dev`` and ``dagster definitions validate`` find this module from the project root
(``workspace.yaml`` / ``[tool.dagster]``); ``dagster asset materialize`` needs
``-m rcmd_pipeline.definitions``.
"""

import os

from dagster import AssetSelection, Definitions, define_asset_job, load_assets_from_modules

from rcmd_pipeline import settings
from rcmd_pipeline.assets import catalog, evaluation, movielens, tmdb
from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager
from rcmd_pipeline.resources.movie_db import movie_database_from_environment
from rcmd_pipeline.resources.movielens import MovieLensFiles
from rcmd_pipeline.resources.tmdb import tmdb_client_from_environment

all_assets = load_assets_from_modules([movielens, tmdb, catalog, evaluation])

rcmd_full_pipeline = define_asset_job(
    "rcmd_full_pipeline",
    selection=AssetSelection.all(),
    description="Every asset: MovieLens and TMDB → catalogue tables → evaluation set → every strategy's hit ratio.",
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
    }


defs = Definitions(assets=all_assets, jobs=[rcmd_full_pipeline], resources=build_resources())
