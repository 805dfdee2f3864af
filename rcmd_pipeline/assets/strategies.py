"""Per strategy of the registry: a model asset, a hit-ratio asset and a beats-random check.

``<name>_model`` builds the strategy's learned state once per run (popularity counts, next-movie
transitions, the series index, the blend's weights, ...) from what the registry entry needs, and
stores it as arrays. ``hit_ratio_<name>`` loads that state (and its parts'), answers every
evaluation pair in one batch call and records HitRatio@k. Neither rebuilds anything the other
built; ``sample_recommendations`` and ``rcmd`` load the same stored states.

Both skip their work when their inputs did not change (see ``versioning``).

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

import inspect
import time
from collections.abc import Sequence
from contextlib import ExitStack

import pandas as pd
import pydantic
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from rcmd_pipeline import settings
from rcmd_pipeline.assets import versioning
from rcmd_pipeline.evaluation import Evaluation, evaluate
from rcmd_pipeline.evaluation.report import hit_ratio_interval, mrr_at_k, ndcg_at_k
from rcmd_pipeline.evaluation.tuning import decode_choice
from rcmd_pipeline.lib.memory import release_memory
from rcmd_pipeline.recommenders.history import Queries, queries_from_arrays, queries_match_pairs
from rcmd_pipeline.recommenders.registry import (
    REGISTRY,
    BuildInputs,
    Needs,
    QueryContext,
    Strategy,
    TrainingWindow,
    all_parts,
    by_name,
    needs_of,
)
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window
from rcmd_pipeline.resources.lazy_input import LAZY, LazyValue

MODEL_GROUP = "evaluation"  # with the evaluation set they learn before: "Materialize all" keeps them consistent
EVALUATION_GROUP = "evaluation"
TRAINING_COLUMNS = ["userId", "movieId", "timestamp"]
TUNING_KEY = "sequence_tuning"
QUERIES_KEY = "eval_queries"
"""The evaluation pairs with their users' histories, stored once (``assets/evaluation.py``)."""


def model_key(name: str) -> str:
    return f"{name}_model"


def hit_ratio_key(name: str) -> str:
    return f"hit_ratio_{name}"


class HitRatioConfig(Config):
    k: int = Field(default=10, ge=1, description="How many movies each strategy recommends (HitRatio@k).")
    seed: int = Field(default=0, description="Seed of every random draw, so a score is reproducible.")


def _config_class(strategy: Strategy) -> type[Config] | None:
    """The model asset's run config: the registry entry's parameters as a Dagster Config."""
    fields = strategy.params.model_fields
    if not fields:
        return None
    camel = "".join(part.title() for part in strategy.name.split("_"))
    return pydantic.create_model(f"{camel}ModelConfig", __base__=Config,
                                 **{name: (f.annotation, f) for name, f in fields.items()})


def _kinds(needs: frozenset) -> set[str]:
    kinds = {"python", "numpy"}
    if Needs.SERIES in needs:
        kinds.add("sql")
    if Needs.VECTORS in needs:
        kinds.add("qdrant")
    return kinds


def _with_signature(fn, names: Sequence[str], config: type | None):
    """``fn(context, [config], **inputs)`` with the explicit signature Dagster reads its inputs from."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("context", kind, annotation=AssetExecutionContext)]
    if config is not None:
        params.append(inspect.Parameter("config", kind, annotation=config))
    params += [inspect.Parameter(name, kind) for name in names]
    fn.__signature__ = inspect.Signature(params)
    return fn


def _training(ratings: LazyValue, cutoff: int) -> TrainingWindow:
    """The training window (:func:`training_window`: the ratings strictly before ``cutoff``) read
    straight from the stored ratings into its three arrays, row group by row group: at MovieLens 32M
    0.45 GB, where a DataFrame of every rating and its filtered copy took about 1.5 GB."""
    window = ratings.arrays(TRAINING_COLUMNS, below=("timestamp", cutoff))
    users, movies, times = training_window(window["userId"], window["movieId"], window["timestamp"], cutoff)
    return TrainingWindow(users, movies, times, cutoff)


def build_model_asset(strategy: Strategy, registry: Sequence[Strategy]) -> AssetsDefinition:
    needs = strategy.needs
    ins: dict[str, AssetIn] = {}
    if Needs.TRAINING in needs:
        ins["movielens_ratings"] = AssetIn(metadata={"columns": TRAINING_COLUMNS}, input_manager_key=LAZY)
        ins["eval_transitions"] = AssetIn(metadata={"columns": ["timestamp"]}, input_manager_key=LAZY)
    elif Needs.CATALOG_IDS in needs:
        ins["movielens_ratings"] = AssetIn(metadata={"columns": ["movieId"]}, input_manager_key=LAZY)
    deps = [model_key(part) for part in strategy.parts]
    if Needs.TUNED in needs:
        ins[TUNING_KEY] = AssetIn(input_manager_key=LAZY)
    if Needs.SERIES in needs:
        deps.append("movie_table")
    resources = {"local_state"} | ({"movie_db"} if Needs.SERIES in needs else set())
    config_class = _config_class(strategy)

    def model(context: AssetExecutionContext, config=None, **inputs) -> object:
        params = strategy.params(**{k: getattr(config, k) for k in strategy.params.model_fields}) \
            if config is not None else strategy.params()
        upstream = [*ins, *deps]
        version = versioning.inputs_version(context, config=params.model_dump(), upstream=upstream)
        previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
        if previous is not None:
            return versioning.kept(context, version, previous)
        started = time.perf_counter()
        metadata: dict = {}
        catalog_ids = training = series_catalog = tuned = None
        if Needs.TUNED in needs:
            tuned = decode_choice(inputs[TUNING_KEY].load())
            metadata["chosen_on_validation"] = MetadataValue.json(tuned.get(strategy.name, {}))
        if Needs.CATALOG_IDS in needs:
            catalog_ids = pd.unique(inputs["movielens_ratings"].arrays(["movieId"])["movieId"])
        if Needs.TRAINING in needs:
            training = _training(inputs["movielens_ratings"], leakage_cutoff(inputs["eval_transitions"].load()))
            metadata.update({"training_ratings": len(training.movies),
                             "training_cutoff": MetadataValue.timestamp(float(training.cutoff))})
        release_memory()  # what reading left behind goes back before the model is built
        if Needs.SERIES in needs:
            series_catalog = context.resources.movie_db.series_catalog()
        state = strategy.build(BuildInputs(catalog_ids=catalog_ids, training=training,
                                           series_catalog=series_catalog, tuned=tuned), params)
        del training
        metadata.update({
            "strategy": strategy.name,
            "build_seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "state_megabytes": MetadataValue.float(round(sum(a.nbytes for a in state.values()) / 2**20, 3)),
            "arrays": MetadataValue.md("| array | dtype | shape |\n|---|---|---|\n" + "\n".join(
                f"| {name} | {a.dtype} | {a.shape} |" for name, a in state.items())),
            **({"params": MetadataValue.json(params.model_dump())} if strategy.params.model_fields else {}),
        })
        return versioning.computed(state, version, metadata)

    description = (f"The learned state of the `{strategy.name}` strategy: {strategy.summary}. Built once per "
                   f"run and stored as arrays; `hit_ratio_{strategy.name}`, `sample_recommendations` and `rcmd` "
                   "load it. Kept as is when its inputs did not change.")
    return asset(
        name=model_key(strategy.name), group_name=MODEL_GROUP, kinds=_kinds(needs), ins=ins, deps=deps,
        required_resource_keys=resources, description=description,
    )(_with_signature(model, list(ins), config_class))


def build_hit_ratio_asset(strategy: Strategy, registry: Sequence[Strategy]) -> AssetsDefinition:
    parts = all_parts(strategy, registry)
    needs = needs_of(strategy, registry)
    models = [model_key(strategy.name)] + [model_key(part) for part in parts]
    ins = {"eval_transitions": AssetIn(input_manager_key=LAZY),
           **{name: AssetIn(input_manager_key=LAZY) for name in models}}
    if Needs.HISTORY in needs:
        ins[QUERIES_KEY] = AssetIn(input_manager_key=LAZY)
    deps = ["movie_vectors"] if Needs.VECTORS in needs else []
    resources = {"local_state"} | ({"vector_store"} if Needs.VECTORS in needs else set())

    def hit_ratio(context: AssetExecutionContext, config: HitRatioConfig, **inputs) -> object:
        version = versioning.inputs_version(context, config=config, upstream=[*ins, *deps])
        previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
        if previous is not None:
            return versioning.kept(context, version, previous)
        with ExitStack() as stack:
            neighbours = None
            if Needs.VECTORS in needs:
                session = stack.enter_context(context.resources.vector_store.open())
                collection = settings.qdrant_collection()

                def neighbours(ids, k):
                    return session.neighbours(collection, ids, k)
            started = time.perf_counter()
            recommender = strategy.recommender(
                inputs[model_key(strategy.name)].load(),
                QueryContext(seed=config.seed, neighbours=neighbours,
                             parts={part: inputs[model_key(part)].load() for part in parts}))
            setup = time.perf_counter() - started
            pairs = inputs["eval_transitions"].load()
            queries = stored_queries(inputs[QUERIES_KEY], pairs) if Needs.HISTORY in needs else None
            score = score_strategy(context, recommender, pairs, config.k, setup, queries)
        return versioning.computed(score, version)

    study = (f" The study measured {strategy.study_hit_ratio:.4f} on MovieLens 32M."
             if strategy.is_study else " Beyond the study: its model learned only from the training window.")
    description = (f"HitRatio@k of the `{strategy.name}` strategy ({strategy.summary}) on the evaluation pairs, "
                   f"from its stored model, all pairs in one batch call.{study}")
    return asset(
        name=hit_ratio_key(strategy.name), group_name=EVALUATION_GROUP, kinds=_kinds(needs), ins=ins, deps=deps,
        required_resource_keys=resources, description=description,
    )(_with_signature(hit_ratio, list(ins), HitRatioConfig))


def stored_queries(stored: LazyValue, pairs: pd.DataFrame) -> Queries:
    """The stored ``eval_queries`` of ``pairs``; refuses queries built from other evaluation pairs (a
    run that rebuilt ``eval_transitions`` but not ``eval_queries``)."""
    queries = queries_from_arrays(stored.load())
    if not queries_match_pairs(queries, pairs):
        raise ValueError(f"{QUERIES_KEY} holds the queries of other evaluation pairs than eval_transitions: "
                         f"materialize {QUERIES_KEY} again")
    return queries


def score_strategy(context: AssetExecutionContext, recommender, pairs: pd.DataFrame, k: int,
                   setup_seconds: float = 0.0, queries: Queries | None = None) -> dict:
    """Evaluate one strategy on the pairs (with ``queries``: their histories too), record its metadata,
    and return what the leaderboard needs: the per-pair hits (for paired tests) and the
    recommendations (for NDCG, MRR, coverage, ...)."""
    result: Evaluation = evaluate(recommender, pairs["prev_movieId"], pairs["movieId"], k, setup_seconds,
                                  queries=queries)
    low, high = hit_ratio_interval(result.hits)
    actual = pairs["movieId"].to_numpy()
    context.add_output_metadata({
        "hit_ratio": MetadataValue.float(result.hit_ratio),
        "hit_ratio_low": MetadataValue.float(low),
        "hit_ratio_high": MetadataValue.float(high),
        "ndcg": MetadataValue.float(ndcg_at_k(result.recommendations, actual, k)),
        "mrr": MetadataValue.float(mrr_at_k(result.recommendations, actual, k)),
        "k": result.k,
        "n": result.n,
        "hits": int(result.hits.sum()),
        "queries_per_second": MetadataValue.float(round(result.queries_per_second, 1)),
    })
    context.log.info(
        f"{result.strategy}: HitRatio@{result.k} = {result.hit_ratio:.4f} [{low:.4f}, {high:.4f}] over "
        f"{result.n} pairs ({result.queries_per_second:,.0f} queries/s)"
    )
    return {
        "strategy": result.strategy,
        "k": result.k,
        "n": result.n,
        "hit_ratio": result.hit_ratio,
        "queries_per_second": result.queries_per_second,
        "hits": result.hits,
        "recommendations": result.recommendations,
    }


def beats_random(scored: dict, baseline: dict) -> AssetCheckResult:
    """Passes when the strategy's HitRatio@k is above the random baseline's on the same pairs."""
    passed = scored["hit_ratio"] > baseline["hit_ratio"] and scored["n"] == baseline["n"]
    return AssetCheckResult(
        passed=bool(passed),
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"{scored['strategy']} scores {scored['hit_ratio']:.4f}, not above random's {baseline['hit_ratio']:.4f}"
        ),
        metadata={"hit_ratio": MetadataValue.float(float(scored["hit_ratio"])),
                  "random_hit_ratio": MetadataValue.float(float(baseline["hit_ratio"])),
                  "n": int(scored["n"])},
    )


def build_beats_random_check(strategy: Strategy):
    """``<name>_beats_random``: the strategy's hit ratio is above random's on the same pairs."""
    checked, baseline = hit_ratio_key(strategy.name), hit_ratio_key("random")

    def check(**inputs) -> AssetCheckResult:
        return beats_random(inputs[checked], inputs[baseline])

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    check.__signature__ = inspect.Signature([inspect.Parameter(checked, kind), inspect.Parameter(baseline, kind)])
    return asset_check(asset=checked, name=f"{strategy.name}_beats_random", additional_ins={baseline: AssetIn()},
                       description=f"The {strategy.name} strategy beats random.")(check)


def strategy_assets(registry: Sequence[Strategy] = REGISTRY) -> list[AssetsDefinition]:
    """The model and hit-ratio asset of every registered strategy."""
    by_name(registry)  # fails early on a repeated name or an unregistered part
    return [make(strategy, registry) for strategy in registry for make in (build_model_asset, build_hit_ratio_asset)]


def strategy_checks(registry: Sequence[Strategy] = REGISTRY) -> list:
    """A beats-random check for every registered strategy but random itself."""
    return [build_beats_random_check(s) for s in registry if s.name != "random"]


def study_figures(registry: Sequence[Strategy] = REGISTRY) -> dict[str, float]:
    return {s.name: s.study_hit_ratio for s in registry if s.is_study}


def stored_models_loader(loaded: dict[str, dict], registry: Sequence[Strategy], seed: int, neighbours):
    """``name -> recommender`` for every strategy whose model (and parts) are in ``loaded``
    (states, or :class:`LazyValue` s of them)."""
    loaded = {name: value.load() if isinstance(value, LazyValue) else value for name, value in loaded.items()}
    out = {}
    for strategy in registry:
        parts = all_parts(strategy, registry)
        out[strategy.name] = strategy.recommender(
            loaded[model_key(strategy.name)],
            QueryContext(seed=seed, neighbours=neighbours, parts={p: loaded[model_key(p)] for p in parts}))
    return out


