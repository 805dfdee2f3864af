"""The Dagster definitions: assets, jobs and resources, chosen from environment variables.

``dagster dev`` and ``dagster definitions validate`` find this module from the project root
(``workspace.yaml`` / ``[tool.dagster]``); ``dagster asset materialize`` needs
``-m rcmd_pipeline.definitions``.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, load_assets_from_modules

from rcmd_pipeline import settings
from rcmd_pipeline.assets import evaluation, movielens
from rcmd_pipeline.resources.local_state import LocalStateIOManager
from rcmd_pipeline.resources.movielens import MovieLensFiles

all_assets = load_assets_from_modules([movielens, evaluation])

rcmd_full_pipeline = define_asset_job(
    "rcmd_full_pipeline",
    selection=AssetSelection.all(),
    description="Every asset: MovieLens → evaluation set → every strategy's hit ratio.",
)


def build_resources() -> dict:
    """Resources for the current environment (see README: configuration by environment variable)."""
    return {
        "io_manager": LocalStateIOManager(base_dir=str(settings.data_dir())),
        "movielens": MovieLensFiles(path=str(settings.dataset_path())),
    }


defs = Definitions(assets=all_assets, jobs=[rcmd_full_pipeline], resources=build_resources())
