"""The Dagster definitions: assets, jobs, schedules and resources, chosen from environment variables.

``dagster dev`` and ``dagster definitions validate`` find this module from the project root
(``workspace.yaml`` / ``[tool.dagster]``); ``dagster asset materialize`` needs
``-m rcmd_pipeline.definitions``.
"""

import os
from collections.abc import Sequence

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    ExecutorDefinition,
    Field,
    ScheduleDefinition,
    Selector,
    define_asset_job,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multi_or_in_process_executor,
    multiple_process_executor_requirements,
)
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, MULTI_PROC_CONFIG

from rcmd_pipeline import operations, settings
from rcmd_pipeline.assets import catalog, checks, embeddings, evaluation, movielens, tmdb
from rcmd_pipeline.assets.strategies import strategy_assets, strategy_checks
from rcmd_pipeline.recommenders.registry import REGISTRY, Strategy
from rcmd_pipeline.resources.embedder import embedder_from_environment
from rcmd_pipeline.resources.lazy_input import LAZY, LazyInputManager
from rcmd_pipeline.resources.local_state import LocalStateDir, LocalStateIOManager
from rcmd_pipeline.resources.movie_db import movie_database_from_environment
from rcmd_pipeline.resources.movielens import DatasetError, MovieLensFiles, ratings_file
from rcmd_pipeline.resources.tmdb import tmdb_client_from_environment
from rcmd_pipeline.resources.vector_store import vector_store_from_environment


def assets_for(registry: Sequence[Strategy] = REGISTRY) -> list:
    """Every asset: the stages, and per registered strategy its model and hit-ratio assets."""
    return [*load_assets_from_modules([movielens, tmdb, catalog, embeddings]),
            *evaluation.evaluation_assets(registry), *strategy_assets(registry)]


def checks_for(registry: Sequence[Strategy] = REGISTRY) -> list:
    """Every asset check: those of ``assets/checks.py``, and per registered strategy "beats random"."""
    return [*load_asset_checks_from_modules([checks]), *strategy_checks(registry)]


all_assets = assets_for()
all_checks = checks_for()

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
    tags=operations.NIGHTLY_RUN_TAGS,  # retried once, from the failed step, by the daemon (see operations)
)

nightly_reembedding = ScheduleDefinition(
    name="nightly_reembedding",
    job=nightly_reembedding_job,
    cron_schedule=operations.nightly_cron(),  # RCMD_NIGHTLY_CRON, default "0 3 * * *"
    execution_timezone=operations.NIGHTLY_TIMEZONE,
    default_status=DefaultScheduleStatus.STOPPED,
    description="03:00 Asia/Seoul: refresh TMDB details, re-embed what changed, rebuild the vector "
                "collection and re-score every strategy. Turn it on in the UI (Automation) or with "
                "`dagster schedule start nightly_reembedding`; it runs while `dagster dev` or the daemon runs.",
)


EXECUTOR_ENV = "RCMD_EXECUTOR"
EXECUTOR_CHOICES = ("auto", "in_process", "multiprocess")
AUTO_MULTIPROCESS_BYTES = 64 * 1024 * 1024
"""``auto`` runs a process per step from a ratings file of this size on (about 5 M ratings as CSV, 20 M
as Parquet); below it, every step in the run's process."""
FORKSERVER = {"forkserver": {"preload_modules": ["rcmd_pipeline.definitions"]}}
"""How step processes start: forked from a server that has imported this project once, so a step
starts in well under a second instead of importing Dagster, pandas and the project again (3.5-5 s)."""


def executor_choice(environ=os.environ) -> str:
    """``in_process`` or ``multiprocess``: ``RCMD_EXECUTOR``, where ``auto`` (the default) picks by the size
    of the ratings file in ``RCMD_DATASET_PATH`` (:data:`AUTO_MULTIPROCESS_BYTES`)."""
    choice = (environ.get(EXECUTOR_ENV) or "auto").strip()
    if choice not in EXECUTOR_CHOICES:
        raise ValueError(f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTOR_CHOICES)}; got {choice!r}")
    if choice != "auto":
        return choice
    try:
        size = ratings_file(settings.dataset_path(environ)).stat().st_size
    except (DatasetError, OSError):  # no data set yet: the ratings asset will say what is missing
        return "in_process"
    return "multiprocess" if size >= AUTO_MULTIPROCESS_BYTES else "in_process"


def executor_from_environment(environ=os.environ) -> ExecutorDefinition:
    """Dagster's own in-process / multiprocess executor, with the default taken from ``RCMD_EXECUTOR``
    (:func:`executor_choice`). A run can still choose either in its config (``execution: config:
    multiprocess:`` or ``in_process:``).

    Why ``auto``: at MovieLens-32M scale the heavy steps are independent branches (the embeddings and
    the vector index beside the sequence models), and two of them at a time on 2 cores made the cold run
    shorter (median 205 s against 242-286 s), with every step's peak lower (no memory carried from
    earlier steps: 1.65 GB at most against 1.92 GB), while an unchanged run pays about 0.4 s a step for
    its processes (35 s against 13-18 s). On a small data set (the demo, the tests)
    the steps are short and the processes would cost more than they give: one process does it all.
    Figures: docs/benchmarks.md.
    """
    choice = executor_choice(environ)
    multiprocess = {"max_concurrent": None, "start_method": FORKSERVER}  # None: one process per core
    return ExecutorDefinition(
        name="rcmd_executor",
        config_schema=Field(Selector({"multiprocess": MULTI_PROC_CONFIG, "in_process": IN_PROC_CONFIG}),
                            default_value={choice: multiprocess if choice == "multiprocess" else {}}),
        requirements=lambda config: multiple_process_executor_requirements() if "multiprocess" in config else [],
        executor_creation_fn=multi_or_in_process_executor.executor_creation_fn,
        description=f"In-process or multiprocess (default {choice}, from {EXECUTOR_ENV}).",
    )


def build_resources(environ=os.environ) -> dict:
    """Resources for the current environment (see README: configuration by environment variable)."""
    data_dir = settings.data_dir()
    local_dir = settings.local_dir(environ)  # data_dir when local; for the embedded vector store and SQLite
    return {
        "io_manager": LocalStateIOManager(base_dir=str(data_dir)),
        LAZY: LazyInputManager(base_dir=str(data_dir)),
        "local_state": LocalStateDir(base_dir=str(data_dir)),
        "movielens": MovieLensFiles(path=str(settings.dataset_path())),
        "tmdb": tmdb_client_from_environment(environ, settings.tmdb_snapshot_dir()),
        "movie_db": movie_database_from_environment(environ, local_dir),
        "embedder": embedder_from_environment(environ),
        "vector_store": vector_store_from_environment(environ, local_dir),
    }


defs = Definitions(
    assets=operations.with_freshness_policies(all_assets),  # RCMD_FRESHNESS_FAIL_HOURS (see operations)
    asset_checks=all_checks,
    jobs=[rcmd_full_pipeline, nightly_reembedding_job],
    schedules=[nightly_reembedding],
    sensors=[operations.run_failure_alert],
    resources=build_resources(),
    executor=executor_from_environment(),
)
