"""The validation protocol: choose hyperparameters on a validation window, score once on evaluation.

::

    ratings ──────────────────────────────────────────────────────────────────────────► time
    [ tuning training: t < tuning_cutoff ][ validation pairs ][ evaluation pairs ]
    [ final training:  t < final_cutoff                     ][ evaluation pairs ]

- evaluation pairs: the study's set (``build_eval_transitions`` over all ratings);
- validation pairs: the same procedure applied to the ratings strictly before the earliest
  evaluation pair (``final_cutoff``), so its min-count filter and recency cut see nothing of the
  evaluation window: the ``eval_size`` most recent pairs before it;
- models for choosing are trained strictly before the earliest validation pair
  (``tuning_cutoff``), the chosen ones are retrained strictly before ``final_cutoff``.

Nothing here reads the evaluation window's ratings when choosing: :func:`tune` and
:func:`tune_blend` see only validation queries, their answers and models trained before them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from rcmd_pipeline.evaluation.metrics import hits_at_k
from rcmd_pipeline.evaluation.transitions import TransitionSettings, build_eval_transitions
from rcmd_pipeline.recommenders.history import Queries, build_queries
from rcmd_pipeline.recommenders.item_knn import ItemKNN
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly, blend_lists
from rcmd_pipeline.recommenders.sequence import MODELS, split_params, with_query_params
from rcmd_pipeline.recommenders.sequence_scoring import _history_codes
from rcmd_pipeline.recommenders.slist import SLIST
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window


@dataclass(frozen=True)
class ValidationSplit:
    evaluation: pd.DataFrame
    validation: pd.DataFrame
    tuning_cutoff: int
    final_cutoff: int


def validation_split(users, movies, times, min_movie_ratings: int = 1000, eval_size: int = 3000) -> ValidationSplit:
    """The evaluation pairs, the validation pairs before them, and the two training cutoffs."""
    users = np.asarray(users, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    settings = TransitionSettings(min_movie_ratings=min_movie_ratings, eval_size=eval_size)
    evaluation = build_eval_transitions(users, movies, times, settings)
    final_cutoff = leakage_cutoff(evaluation)
    before = times < final_cutoff
    validation = build_eval_transitions(users[before], movies[before], times[before], settings)
    return ValidationSplit(evaluation, validation, leakage_cutoff(validation), final_cutoff)


def expand_grid(grid) -> list[dict]:
    """``{"a": [1, 2], "b": ["x"]}`` -> ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]``; a list passes through."""
    if isinstance(grid, dict):
        keys = list(grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    return [dict(p) for p in grid]


@dataclass(frozen=True)
class TuningResult:
    params: dict
    hit_ratio: float
    table: pd.DataFrame


def tune(strategy_factory: Callable[..., object], grid, queries: Queries, actual, k: int = 10) -> TuningResult:
    """Score every parameter set of ``grid`` on the validation queries, keep the best HitRatio@k.

    ``strategy_factory(**params)`` returns a recommender with ``recommend_queries`` trained on the
    tuning window (it may cache fits shared by several parameter sets). Ties go to the earlier
    parameter set of the grid. The table has one row per parameter set: params, hit_ratio, n.
    """
    actual = np.asarray(actual, dtype=np.int64)
    rows, best, best_hr = [], None, -1.0
    for params in expand_grid(grid):
        recs = strategy_factory(**params).recommend_queries(queries, k)
        hr = float(hits_at_k(recs, actual, k).mean()) if len(actual) else float("nan")
        rows.append({**params, "hit_ratio": hr, "n": int(len(actual))})
        if hr > best_hr:
            best, best_hr = params, hr
    if best is None:
        raise ValueError("empty grid: nothing to tune")
    return TuningResult(best, best_hr, pd.DataFrame(rows))


def tune_blend(lists: dict[str, np.ndarray], queries: Queries, actual, k: int = 10,
               weight_grid=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0), c0: float = 10.0, rounds: int = 3,
               exclude_seen: bool = True) -> TuningResult:
    """Blend weights by coordinate ascent on validation HitRatio@k.

    ``lists`` holds each part's recommendations (n x depth) on the validation queries. Start: the
    best single part at weight 1 (so the blend scores at least as well as its best part on
    validation); then, for ``rounds`` passes, each part's weight in turn takes the grid value that
    raises the hit ratio (strictly; ties keep the current weights). The table lists every tried set.
    """
    actual = np.asarray(actual, dtype=np.int64)
    names = list(lists)
    tried: dict[tuple, float] = {}
    rows = []

    def score(weights: dict) -> float:
        key = tuple(weights[n] for n in names)
        if key not in tried:
            if not any(w > 0 for w in key):
                tried[key] = -1.0
            else:
                recs = blend_lists(queries, lists, weights, k, c0, exclude_seen)
                tried[key] = float(hits_at_k(recs, actual, k).mean())
                rows.append({**{f"w_{n}": weights[n] for n in names}, "hit_ratio": tried[key], "n": len(actual)})
        return tried[key]

    singles = [{n: (1.0 if n == name else 0.0) for n in names} for name in names]
    current = max(singles, key=score)  # max keeps the first of equal scores
    best = score(current)
    for _ in range(rounds):
        improved = False
        for name in names:
            for w in weight_grid:
                candidate = {**current, name: float(w)}
                s = score(candidate)
                if s > best:
                    current, best, improved = candidate, s, True
        if not improved:
            break
    return TuningResult(current, best, pd.DataFrame(rows))


# ---------------------------------------------------------------------------- the sequence strategies

QUERY_GRID = {"last_n": [3, 10], "decay": ["harmonic", "linear"], "exclude_seen": [True]}
"""Scoring parameters tried with every fitted sequence model (no refit). ``exclude_seen`` stays on:
it won for every model and setting on the real and the demo data (docs/evaluation.md), and each
value tried doubles the scoring time."""
SEQUENCE_GRIDS = {
    "seq_rules": {"max_gap": [3, 10]},
    "item_knn": {"window": [10], "shrink": [0.0, 20.0]},
    "slist": {"window": [2, 5], "alpha": [0.25, 1.0], "reg": [10.0, 100.0]},
}
"""Fit parameters tried per sequence model: small, around what won on the real and demo data
(docs/evaluation.md), so the demo's tuning stays a few seconds and 32M a few minutes."""
BLEND_PARTS = ("next_movie", "seq_rules", "item_knn", "slist")


@dataclass(frozen=True)
class SequenceChoice:
    """What :func:`choose_sequence_parameters` chose and how every tried setting scored on validation."""

    chosen: dict[str, dict]
    validation_hit_ratio: dict[str, float]
    tables: dict[str, pd.DataFrame]
    validation_pairs: int
    tuning_cutoff: int
    final_cutoff: int
    inner_hit_ratio: dict[str, float] = field(default_factory=dict)
    """``seq_hybrid`` and ``seq_rerank`` judged alike by the inner split of the validation pairs (fitted on
    one half, scored on the other, both ways; empty without the re-ranker)"""
    selected: str = "seq_hybrid"
    """the strategy selected on validation: ``seq_rerank`` when its inner figure beats the blend's"""
    info: dict = field(default_factory=dict)


def _fits(name: str, train: tuple, fit_grid: dict, fixed: dict):
    """(fit parameters, fitted state) for every point of ``fit_grid``; SLIST's Gram matrices are
    computed once per window and solved per (alpha, reg), item-kNN's co-occurrences once per window."""
    if name == "item_knn" and list(fit_grid) == ["window", "shrink"]:  # expand_grid's order: window-major
        for window in fit_grid["window"]:
            states = ItemKNN.fit_shrinks(*train, shrinks=fit_grid["shrink"], window=window, **fixed)
            yield from zip(({"window": window, "shrink": s} for s in fit_grid["shrink"]), states, strict=True)
            del states
        return
    if name != "slist":
        for params in expand_grid(fit_grid):
            yield params, MODELS[name].fit(*train, **fixed, **params)
        return
    points = expand_grid(fit_grid)
    for window in dict.fromkeys(p["window"] for p in points):
        grams = SLIST.grams(*train, window=window, **fixed)
        for params in (p for p in points if p["window"] == window):
            yield params, SLIST.solve(grams, alpha=params["alpha"], reg=params["reg"])
        del grams


def _validation_window(ratings: Callable[[], tuple], final_cutoff: int, settings: TransitionSettings, max_len: int,
                       max_training_ratings: int | None) -> tuple[Queries, np.ndarray, tuple, int]:
    """(validation queries, their next movies, the tuning window capped to its most recent
    ``max_training_ratings``, the tuning cutoff) from the ratings strictly before ``final_cutoff``;
    the ratings are let go when this returns (memory at 32M)."""
    w = _windows(ratings, final_cutoff, settings, max_len, max_training_ratings)
    return w.queries, w.actual, w.train, w.tuning_cutoff


@dataclass(frozen=True)
class _Windows:
    queries: Queries
    actual: np.ndarray
    train: tuple
    tuning_cutoff: int
    popular: tuple | None = None
    """(ids, counts) of every rating before the validation window (uncapped; for the re-ranker)"""
    earlier: tuple = ()
    """``EarlierWindow`` s before the validation window, most recent first (for the re-ranker)"""


def _windows(ratings: Callable[[], tuple], final_cutoff: int, settings: TransitionSettings, max_len: int,
             max_training_ratings: int | None, earlier: int | None = None) -> _Windows:
    """:func:`_validation_window`'s pieces; with ``earlier`` (the re-ranker's), also the uncapped rating
    counts before the validation window and that many earlier windows of pairs before it, each the
    ``eval_size`` most recent pairs before the next one's earliest pair, with its own capped training
    ratings strictly before its own earliest pair."""
    from rcmd_pipeline.evaluation.rerank_choice import EarlierWindow, rating_counts

    users, movies, times = (np.asarray(c) for c in ratings())
    before = times < int(final_cutoff)
    if not before.all():  # (a caller may have loaded only these already: no copy then)
        users, movies, times = users[before], movies[before], times[before]
    del before
    validation = build_eval_transitions(users, movies, times, settings)
    tuning_cutoff = leakage_cutoff(validation)
    queries = build_queries(validation, users, movies, times, max_len)
    actual = validation["movieId"].to_numpy(np.int64)
    window = training_window(users, movies, times, tuning_cutoff)
    train = most_recent(window, max_training_ratings)
    if earlier is None:
        return _Windows(queries, actual, train, tuning_cutoff)
    del users, movies, times
    popular = rating_counts(window[1])
    found = []
    while len(found) < earlier:
        pairs = build_eval_transitions(*window, settings)
        if len(pairs) == 0:
            break
        cutoff = leakage_cutoff(pairs)
        q = build_queries(pairs, *window, max_len)
        window = training_window(*window, cutoff)
        found.append(EarlierWindow(q, pairs["movieId"].to_numpy(np.int64), most_recent(window, max_training_ratings),
                                   rating_counts(window[1])))
    return _Windows(queries, actual, train, tuning_cutoff, popular, tuple(found))


def _next_movie_lists(train: tuple, queries: Queries, depth: int) -> np.ndarray:
    """``next_movie``'s validation lists (default parameters), the blend's first part; the model goes
    when this returns."""
    popularity = PopularityRecommender(train[1])
    return PrevOnly(NextMovieRecommender(*train, fallback=popularity), "next_movie").recommend_queries(queries, depth)


SCORING_THREADS = max(1, min(2, os.cpu_count() or 1))
"""Query settings of one fitted model scored at once while choosing (two: the 2-core machines this runs on)."""


def _recommend(name: str, state, queries: Queries, k: int, query: dict) -> np.ndarray:
    return MODELS[name].from_state(state, **query).recommend_queries(queries, k)


def _shared_by_settings(queries: Queries) -> None:
    """Build, before the settings are scored side by side, what every setting reads from the batch of
    queries (kept on it: see ``sequence_scoring``), so no two threads build it at once."""
    _history_codes(queries)


@dataclass(frozen=True)
class _Best:
    hit_ratio: float
    params: dict
    state: object
    table: pd.DataFrame


def _best_setting(name: str, fits, query_grid: dict, queries: Queries, actual: np.ndarray, k: int,
                  fixed: dict) -> _Best:
    """Every (fit x query) setting of one model scored by validation HitRatio@k; the best (ties: the
    earlier setting) with its fitted state, its parameters (fixed, fit and query) and the table of all."""
    rows, best = [], None
    settings = expand_grid(query_grid)
    _shared_by_settings(queries)
    with ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="tuning-score") as pool:
        for fit_params, state in fits:
            # the query settings of one fit are scored side by side (NumPy's sorts, searches and arithmetic
            # run without the GIL); the results are taken in the grid's order, so the choice is the same
            scored = list(pool.map(partial(_recommend, name, state, queries, k), settings))
            for query, recs in zip(settings, scored, strict=True):
                hr = float(hits_at_k(recs, actual, k).mean())
                rows.append({**fit_params, **query, "hit_ratio": hr, "n": len(actual)})
                if best is None or hr > best[0]:
                    best = (hr, {**fixed, **fit_params, **query}, state)
            del state, scored
    return _Best(best[0], best[1], best[2], pd.DataFrame(rows))


def choose_sequence_parameters(ratings: Callable[[], tuple], final_cutoff: int, min_movie_ratings: int,
                               eval_size: int, k: int = 10, grids: dict | None = None,
                               query_grid: dict | None = None, fixed: dict | None = None, depth: int = 50,
                               max_len: int = 100_000, log: Callable[[str], None] | None = None,
                               max_training_ratings: int | None = None, rerank=None) -> SequenceChoice:
    """Choose every sequence strategy's parameters and the blend's weights on the validation window.

    ``ratings()`` returns (users, movies, times); only those strictly before ``final_cutoff`` (the
    earliest evaluation pair) are used, and they are let go once the validation pairs, their queries
    and the tuning window are built (memory at 32M). Validation pairs: ``build_eval_transitions``
    over them with the evaluation set's settings; models are fitted strictly before the earliest
    validation pair; each (fit x query) setting is scored by validation HitRatio@k (ties: the
    earlier setting); ``tune_blend`` weighs each model's best with ``next_movie``. ``fixed`` holds
    per-model fit parameters that are not tuned (SLIST's item set). The chosen dicts hold fixed,
    fit and query parameters, ready for fitting. ``log`` receives a line per step.
    ``max_training_ratings`` caps what the models for choosing learn from to the most recent ratings
    before the validation window (ties at the boundary kept), so choosing costs a bounded number of
    fits at any scale; the chosen values are then refitted on everything by the model assets.
    ``rerank`` (a :class:`~rcmd_pipeline.evaluation.rerank_choice.RerankOptions`): also choose and fit the
    learned re-ranker ``seq_rerank`` on the validation window (``rerank_choice.choose_rerank``) and
    select, by the inner split of the validation pairs, ``seq_rerank`` or ``seq_hybrid``.
    """
    say = log or (lambda message: None)
    grids = SEQUENCE_GRIDS if grids is None else grids
    query_grid = QUERY_GRID if query_grid is None else query_grid
    fixed = fixed or {}
    windows = _windows(ratings, final_cutoff, TransitionSettings(min_movie_ratings=min_movie_ratings,
                                                                 eval_size=eval_size),
                       max_len, max_training_ratings, rerank.earlier if rerank is not None else None)
    queries, actual, train, tuning_cutoff = windows.queries, windows.actual, windows.train, windows.tuning_cutoff
    say(f"{len(actual)} validation pairs; models for choosing learn from {len(train[0]):,} ratings")
    states = {}  # the chosen sequence models, kept for the re-ranker only

    # Each part is kept only as its validation lists (depth per query), never as a model.
    chosen, scores, tables, lists = {}, {}, {}, {}
    lists["next_movie"] = _next_movie_lists(train, queries, max(depth, k))
    scores["next_movie"] = float(hits_at_k(lists["next_movie"], actual, k).mean())
    for name, fit_grid in grids.items():
        best = _best_setting(name, _fits(name, train, fit_grid, fixed.get(name, {})), query_grid, queries, actual,
                             k, fixed.get(name, {}))
        scores[name], chosen[name], tables[name] = best.hit_ratio, best.params, best.table
        _, query = split_params(name, best.params)
        lists[name] = MODELS[name].from_state(best.state, **query).recommend_queries(queries, max(depth, k))
        if rerank is not None:
            states[name] = with_query_params(best.state, query)
        del best
        say(f"{name}: {chosen[name]} scores {scores[name]:.4f} on validation ({len(tables[name])} settings)")
    del train
    blend = tune_blend({name: lists[name] for name in BLEND_PARTS if name in lists}, queries, actual, k,
                       exclude_seen=True)
    chosen["seq_hybrid"], scores["seq_hybrid"], tables["seq_hybrid"] = blend.params, blend.hit_ratio, blend.table
    say(f"seq_hybrid: weights {blend.params} score {blend.hit_ratio:.4f} on validation")
    if rerank is None:
        return SequenceChoice(chosen, scores, tables, len(actual), tuning_cutoff, int(final_cutoff))
    from rcmd_pipeline.evaluation.rerank_choice import choose_rerank, query_window

    validation = query_window(queries, actual, states, windows.popular, max(depth, k), lists=lists)
    earlier = list(windows.earlier)
    del states, lists, windows
    result = choose_rerank(validation, earlier, chosen,
                           lambda part_lists, q, a: tune_blend(part_lists, q, a, k, exclude_seen=True).params,
                           k=k, grid=rerank.grid, max_iter=rerank.max_iter, depth=max(depth, k), extra=rerank.extra,
                           log=say, content=rerank.content)
    chosen["seq_rerank"], scores["seq_rerank"], tables["seq_rerank"] = (result.chosen, result.validation_hit_ratio,
                                                                        result.table)
    inner = {"seq_hybrid": result.hybrid_inner_hit_ratio, "seq_rerank": result.inner_hit_ratio}
    selected = "seq_rerank" if inner["seq_rerank"] > inner["seq_hybrid"] else "seq_hybrid"
    say(f"selected on validation: {selected} (inner split: seq_rerank {inner['seq_rerank']:.4f}, "
        f"seq_hybrid {inner['seq_hybrid']:.4f})")
    return SequenceChoice(chosen, scores, tables, len(actual), tuning_cutoff, int(final_cutoff), inner, selected,
                          result.info)


TUNING_MAX_RATINGS = 2_000_000
"""What the models for choosing learn from at most, by default (see :func:`choose_sequence_parameters`)."""


def most_recent(window: tuple[np.ndarray, ...], limit: int | None) -> tuple[np.ndarray, ...]:
    """``(users, movies, times)`` keeping only about the ``limit`` most recent ratings (every rating
    at the boundary moment too), in the same order; the window itself when it holds no more."""
    times = window[2]
    if limit is None or len(times) <= limit:
        return window
    boundary = np.partition(times, len(times) - limit)[len(times) - limit]
    keep = times >= boundary
    return tuple(column[keep] for column in window)


def encode_choice(choice: SequenceChoice) -> dict[str, np.ndarray]:
    """The chosen parameters and validation hit ratios as named 0-d arrays (a stored ``.npz``)."""
    out = {f"{name}/{param}": np.array(value) for name, params in choice.chosen.items()
           for param, value in params.items()}
    out.update({f"validation_hit_ratio/{name}": np.array(hr) for name, hr in choice.validation_hit_ratio.items()})
    out.update({f"inner_hit_ratio/{name}": np.array(hr) for name, hr in choice.inner_hit_ratio.items()})
    out["cutoffs"] = np.array([choice.tuning_cutoff, choice.final_cutoff], dtype=np.int64)
    out["selected"] = np.array(choice.selected)
    return out


_FIGURES = ("validation_hit_ratio", "inner_hit_ratio")


def decode_choice(arrays) -> dict[str, dict]:
    """``{strategy: {parameter: value}}`` of :func:`encode_choice`'s arrays (plain Python values; an array
    parameter, such as the re-ranker's weights, as a list)."""
    chosen: dict[str, dict] = {}
    for key, value in arrays.items():
        name, _, param = key.partition("/")
        if param and name not in _FIGURES:
            chosen.setdefault(name, {})[param] = np.asarray(value).tolist()
    return chosen


def decode_selected(arrays) -> str:
    """The strategy selected on validation (``seq_hybrid`` for a choice stored without one)."""
    return str(np.asarray(arrays["selected"]).item()) if "selected" in arrays else "seq_hybrid"
