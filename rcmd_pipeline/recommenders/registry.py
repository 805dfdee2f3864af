"""The strategy registry: the one list every strategy is named in.

A strategy is one module in ``recommenders/`` plus one :class:`Strategy` entry in :data:`REGISTRY`.
Everything else is derived from the entry: its ``<name>_model`` asset (the learned state, built
once per run and stored as arrays), its ``hit_ratio_<name>`` asset, its beats-random check, its
row in the leaderboard, its column in ``sample_recommendations`` and its ``rcmd --strategy`` choice.

An entry says what the strategy needs (:class:`Needs`), how to build its state from those inputs
and its parameters (``build``; the parameters are a pydantic model, the model asset's run config),
how to turn a stored state back into a recommender (``load``: the state holds all the parameters
decided), which other strategies' states it is made of (``parts``),
and, for the study's strategies, the study's HitRatio@10 on MovieLens 32M. Plain Python: no Dagster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from rcmd_pipeline.recommenders.base import Recommender
from rcmd_pipeline.recommenders.hybrid import HybridRecommender
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.random_baseline import RandomRecommender
from rcmd_pipeline.recommenders.rerank import Reranker, sequence_members, state_from_choice
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly, SequenceHybrid
from rcmd_pipeline.recommenders.sequence import fit_model, load_model
from rcmd_pipeline.recommenders.series import SeriesRecommender
from rcmd_pipeline.recommenders.vector import Neighbours, SeriesVectorRecommender, VectorRecommender

State = dict[str, np.ndarray]
_NO_FILL = np.zeros(0, dtype=np.int64)


class Needs(str, Enum):
    """What a strategy's model is built from, or asks for at query time."""

    CATALOG_IDS = "catalog_ids"
    """every movie id seen in the ratings (the study's random fill)"""
    TRAINING = "training"
    """the training window: ratings strictly before the earliest evaluation pair"""
    SERIES = "series"
    """the series catalogue read from the ``movie`` table (RDBMS)"""
    VECTORS = "vectors"
    """the served vector collection, queried when recommending"""
    HISTORY = "history"
    """each query's history (the user's ratings before the pair's next movie): the recommender
    answers ``recommend_queries(Queries, k)``, see ``history.py``"""
    TUNED = "tuned"
    """the parameters ``sequence_tuning`` chose on the validation window"""


@dataclass(frozen=True)
class TrainingWindow:
    """Ratings strictly before ``cutoff`` (the earliest evaluation pair): all a learned model may see."""

    users: np.ndarray
    movies: np.ndarray
    times: np.ndarray
    cutoff: int


@dataclass(frozen=True)
class BuildInputs:
    """What a model is built from; only the fields its :class:`Needs` name are set."""

    catalog_ids: np.ndarray | None = None
    training: TrainingWindow | None = None
    series_catalog: pd.DataFrame | None = None
    tuned: Mapping[str, dict] | None = None
    """``{strategy: {parameter: value}}`` chosen on the validation window (TUNED)"""


@dataclass(frozen=True)
class QueryContext:
    """What a stored model needs to answer queries: the seed of random draws, the vector store's
    batched ``neighbours`` (strategies that need VECTORS), and the states of its ``parts``."""

    seed: int = 0
    neighbours: Neighbours | None = None
    parts: Mapping[str, State] = field(default_factory=dict)


class NoParams(BaseModel):
    """A strategy without parameters."""


@dataclass(frozen=True)
class Strategy:
    """One registry entry (see the module docstring)."""

    name: str
    summary: str
    needs: frozenset[Needs]
    build: Callable[[BuildInputs, BaseModel], State]
    load: Callable[[State, QueryContext], Recommender]
    params: type[BaseModel] = NoParams
    parts: tuple[str, ...] = ()
    study_hit_ratio: float | None = None

    @property
    def is_study(self) -> bool:
        """One of the study's four strategies (kept exactly as the study defined them)."""
        return self.study_hit_ratio is not None

    def recommender(self, state: State, context: QueryContext) -> Recommender:
        """The recommender of a stored ``state``: the state holds everything its parameters decided."""
        return self.load(state, context)


def _fill(inputs: BuildInputs) -> State:
    return {"fill": np.unique(np.asarray(inputs.catalog_ids, dtype=np.int64))}


def _series_state(inputs: BuildInputs) -> State:
    return {**_fill(inputs), **SeriesRecommender.catalog_state(inputs.series_catalog)}


def _series(state: State, fill: np.ndarray, seed: int) -> SeriesRecommender:
    return SeriesRecommender(SeriesRecommender.catalog_from_state(state), fill, seed=seed)


# ---------------------------------------------------------------------------- the study's four

RANDOM = Strategy(
    name="random",
    summary="k random ids from every movie seen in the ratings (the study's baseline)",
    needs=frozenset({Needs.CATALOG_IDS}),
    build=lambda inputs, params: _fill(inputs),
    load=lambda state, ctx: RandomRecommender(state["fill"], seed=ctx.seed),
    study_hit_ratio=0.0,
)

SERIES = Strategy(
    name="series",
    summary="the other films of the previous movie's series, newest first, then random ids (the study's)",
    needs=frozenset({Needs.CATALOG_IDS, Needs.SERIES}),
    build=lambda inputs, params: _series_state(inputs),
    load=lambda state, ctx: _series(state, state["fill"], ctx.seed),
    study_hit_ratio=0.0603,
)

VECTOR = Strategy(
    name="vector",
    summary="the k nearest overview embeddings (cosine, itself excluded), then random ids (the study's)",
    needs=frozenset({Needs.CATALOG_IDS, Needs.VECTORS}),
    build=lambda inputs, params: _fill(inputs),
    load=lambda state, ctx: VectorRecommender(ctx.neighbours, state["fill"], seed=ctx.seed),
    study_hit_ratio=0.0683,
)

SERIES_VECTOR = Strategy(
    name="series_vector",
    summary="series films first, nearest overview embeddings after, then random ids (the study's)",
    needs=frozenset({Needs.CATALOG_IDS, Needs.SERIES, Needs.VECTORS}),
    build=lambda inputs, params: _series_state(inputs),
    load=lambda state, ctx: SeriesVectorRecommender(
        _series(state, state["fill"], ctx.seed), ctx.neighbours, state["fill"], seed=ctx.seed),
    study_hit_ratio=0.0653,
)


# ---------------------------------------------------------------------------- learned from behaviour


class NextMovieParams(BaseModel):
    window: int = Field(default=1, ge=1, le=10, description="Count the next `window` ratings of a user, "
                                                             "weighted 1/distance.")
    min_support: int = Field(default=1, ge=1, description="Ignore (prev, next) pairs seen fewer times.")


POPULARITY = Strategy(
    name="popularity",
    summary="the most-rated movies of the training window, the previous movie excluded",
    needs=frozenset({Needs.TRAINING}),
    build=lambda inputs, params: PopularityRecommender(inputs.training.movies).state(),
    load=lambda state, ctx: PopularityRecommender.from_state(state),
)

NEXT_MOVIE = Strategy(
    name="next_movie",
    summary="what users of the training window most often rated right after the previous movie, "
            "then the most popular",
    needs=frozenset({Needs.TRAINING}),
    params=NextMovieParams,
    parts=("popularity",),
    build=lambda inputs, params: NextMovieRecommender(
        inputs.training.users, inputs.training.movies, inputs.training.times,
        window=params.window, min_support=params.min_support).state(),
    load=lambda state, ctx: NextMovieRecommender.from_state(
        state, fallback=PopularityRecommender.from_state(ctx.parts["popularity"])),
)


class HybridParams(BaseModel):
    next_movie_weight: float = Field(default=1.0, ge=0.0, description="Weight of the next-movie candidates.")
    series_weight: float = Field(default=1.0, ge=0.0, description="Weight of the series candidates.")
    vector_weight: float = Field(default=0.5, ge=0.0, description="Weight of the nearest-vector candidates.")
    popularity_weight: float = Field(default=0.05, ge=0.0, description="Weight of the popular fallback.")
    depth: int = Field(default=20, ge=1, description="Candidates asked of each component per query.")
    c0: float = Field(default=10.0, ge=0.0, description="Rank offset of the reciprocal-rank blend.")


def _hybrid_state(inputs: BuildInputs, params: HybridParams) -> State:
    """The blend's own state is its weights; its parts are models of their own."""
    return {"weights": np.array([params.next_movie_weight, params.series_weight, params.vector_weight,
                                 params.popularity_weight], dtype=np.float64),
            "depth": np.array(params.depth, dtype=np.int64), "c0": np.array(params.c0, dtype=np.float64)}


def _load_hybrid(state: State, ctx: QueryContext) -> HybridRecommender:
    parts = ctx.parts  # components offer only what they know (no random fill): the blend decides
    next_w, series_w, vector_w, popularity_w = (float(w) for w in state["weights"])
    return HybridRecommender(
        [(NextMovieRecommender.from_state(parts["next_movie"]), next_w),
         (_series(parts["series"], _NO_FILL, ctx.seed), series_w),
         (VectorRecommender(ctx.neighbours, _NO_FILL, seed=ctx.seed), vector_w),
         (PopularityRecommender.from_state(parts["popularity"]), popularity_w)],
        depth=int(state["depth"]), c0=float(state["c0"]),
    )


HYBRID = Strategy(
    name="hybrid",
    summary="a reciprocal-rank blend of next-movie, series and nearest-vector candidates, popular "
            "movies as a faint fallback",
    needs=frozenset({Needs.VECTORS}),
    params=HybridParams,
    parts=("next_movie", "series", "vector", "popularity"),
    build=_hybrid_state,
    load=_load_hybrid,
)


# ---------------------------------------------------------------------------- sequence-aware, tuned


def _tuned(inputs: BuildInputs, name: str) -> dict:
    if not inputs.tuned or name not in inputs.tuned:
        raise ValueError(f"no parameters chosen for {name!r}: materialize sequence_tuning first")
    return dict(inputs.tuned[name])


def _sequence_strategy(name: str, summary: str) -> Strategy:
    """A sequence model (``sequence.MODELS``): fitted on the training window with the parameters chosen
    on validation (fit and query parameters; the latter are stored in the state)."""
    def build(inputs: BuildInputs, params: BaseModel) -> State:
        w = inputs.training
        return fit_model(name, w.users, w.movies, w.times, _tuned(inputs, name))

    return Strategy(name=name, summary=summary, needs=frozenset({Needs.TRAINING, Needs.TUNED, Needs.HISTORY}),
                    build=build, load=lambda state, ctx: load_model(name, state))


SEQ_RULES = _sequence_strategy(
    "seq_rules", "sequential rules a -> b weighted 1/gap within a user's sequence, scored from the last "
                 "movies of the user's history with a decay")
ITEM_KNN = _sequence_strategy(
    "item_knn", "item-kNN: cosine of movies rated close together in users' sequences, scored from the last "
                "movies of the user's history")
SLIST_STRATEGY = _sequence_strategy(
    "slist", "SLIST (closed-form linear item-item model of the next movie) on the most rated movies, "
             "scored from the last movies of the user's history")


def _seq_hybrid_state(inputs: BuildInputs, params: BaseModel) -> State:
    weights = _tuned(inputs, "seq_hybrid")
    return SequenceHybrid({name: None for name in weights}, weights).state()


def _load_seq_hybrid(state: State, ctx: QueryContext) -> SequenceHybrid:
    parts = ctx.parts
    members = {"next_movie": PrevOnly(NextMovieRecommender.from_state(
        parts["next_movie"], fallback=PopularityRecommender.from_state(parts["popularity"])), "next_movie")}
    members.update({name: load_model(name, parts[name]) for name in ("seq_rules", "item_knn", "slist")})
    return SequenceHybrid.from_state(state, members)


SEQ_HYBRID = Strategy(
    name="seq_hybrid",
    summary="a reciprocal-rank blend of next-movie, sequential rules, item-kNN and SLIST, the user's rated "
            "movies excluded, weights chosen on the validation window",
    needs=frozenset({Needs.TUNED, Needs.HISTORY}),
    parts=("next_movie", "seq_rules", "item_knn", "slist"),
    build=_seq_hybrid_state,
    load=_load_seq_hybrid,
)


def _seq_rerank_state(inputs: BuildInputs, params: BaseModel) -> State:
    """What ``sequence_tuning`` fitted on the validation window: weights, standardisation, parts read."""
    return state_from_choice(_tuned(inputs, "seq_rerank"))


def _load_seq_rerank(state: State, ctx: QueryContext) -> Reranker:
    """The stored weights (or trees) over the parts refitted before the evaluation window (their model
    assets); the views are the same sequence states scored from the previous movie; log counts from
    ``popularity``; the content neighbours from the TMDB metadata stored in the state (``sequence_tuning``
    read it from ``tmdb_movie_info_kr``), ties ordered by ``popularity``'s counts."""
    parts = ctx.parts
    popularity = PopularityRecommender.from_state(parts["popularity"])
    next_movie = PrevOnly(NextMovieRecommender.from_state(parts["next_movie"], fallback=popularity), "next_movie")
    members = sequence_members(next_movie, {name: parts[name] for name in ("seq_rules", "item_knn", "slist")})
    return Reranker.from_state(state, members, popularity.ranked_ids, popularity.ranked_counts)


SEQ_RERANK = Strategy(
    name="seq_rerank",
    summary="a learned re-ranker (conditional logit or LambdaMART trees) of the candidates of next-movie, "
            "sequential rules, item-kNN, SLIST and the previous movie's TMDB content neighbours, the user's rated "
            "movies excluded, chosen and fitted on the validation window",
    needs=frozenset({Needs.TUNED, Needs.HISTORY}),
    parts=("next_movie", "popularity", "seq_rules", "item_knn", "slist"),
    build=_seq_rerank_state,
    load=_load_seq_rerank,
)


DEFAULT_REGISTRY: tuple[Strategy, ...] = (RANDOM, SERIES, VECTOR, SERIES_VECTOR, POPULARITY, NEXT_MOVIE, HYBRID,
                                          SEQ_RULES, ITEM_KNN, SLIST_STRATEGY, SEQ_HYBRID)
"""The strategies of every run, in the order the UI and the leaderboard's inputs list them. ``random``
first: every other strategy is checked against it."""

OPTIONAL_STRATEGIES: tuple[Strategy, ...] = (SEQ_RERANK,)
"""Strategies a deployment adds by name in :data:`EXTRA_STRATEGIES_ENV`: registry entries like the
others, left out by default for what they cost. ``seq_rerank``'s choice and fit make ``sequence_tuning``
take 4.5 minutes instead of 8 s on the demo (and 2.5 minutes more at MovieLens-32M scale), for 1.54x
``next_movie`` on the demo instead of the blend's 1.39x and no measurable gain on real ratings
(docs/evaluation.md)."""

EXTRA_STRATEGIES_ENV = "RCMD_EXTRA_STRATEGIES"


def registry_from_environment(environ: Mapping[str, str] | None = None) -> tuple[Strategy, ...]:
    """:data:`DEFAULT_REGISTRY` plus the optional strategies named (comma-separated) in
    ``RCMD_EXTRA_STRATEGIES``; an unknown name is an error that lists the optional ones."""
    value = (os.environ if environ is None else environ).get(EXTRA_STRATEGIES_ENV, "")
    names = [name.strip() for name in value.split(",") if name.strip()]
    optional = {strategy.name: strategy for strategy in OPTIONAL_STRATEGIES}
    unknown = [name for name in names if name not in optional]
    if unknown:
        raise ValueError(f"{EXTRA_STRATEGIES_ENV}={value!r}: {', '.join(map(repr, unknown))} is not an optional "
                         f"strategy; expected a comma-separated list of {sorted(optional)} (or nothing)")
    return DEFAULT_REGISTRY + tuple(s for s in OPTIONAL_STRATEGIES if s.name in names)


REGISTRY: tuple[Strategy, ...] = registry_from_environment()
"""Every strategy of this deployment: :data:`DEFAULT_REGISTRY` and the optional ones it names in
``RCMD_EXTRA_STRATEGIES``."""


def by_name(registry: Sequence[Strategy] = REGISTRY) -> dict[str, Strategy]:
    """``{name: strategy}``; raises on a repeated name or a part that is not registered."""
    named = {}
    for strategy in registry:
        if strategy.name in named:
            raise ValueError(f"strategy {strategy.name!r} is registered twice")
        named[strategy.name] = strategy
    for strategy in registry:
        missing = [p for p in strategy.parts if p not in named]
        if missing:
            raise ValueError(f"strategy {strategy.name!r} is made of unregistered part(s) {missing}")
    return named


def all_parts(strategy: Strategy, registry: Sequence[Strategy] = REGISTRY) -> list[str]:
    """The names of every model ``strategy`` loads besides its own: its parts, their parts, ..."""
    named = by_name(registry)
    seen: list[str] = []

    def visit(name: str) -> None:
        for part in named[name].parts:
            if part not in seen and part != strategy.name:
                seen.append(part)
                visit(part)
    visit(strategy.name)
    return seen


def needs_of(strategy: Strategy, registry: Sequence[Strategy] = REGISTRY) -> frozenset[Needs]:
    """What answering queries needs: the strategy's own needs and those of every part."""
    named = by_name(registry)
    needs = set(strategy.needs)
    for part in all_parts(strategy, registry):
        needs |= named[part].needs
    return frozenset(needs)
