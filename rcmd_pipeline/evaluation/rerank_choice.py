"""The learned re-ranker (``seq_rerank``) chosen and fitted on the validation window only.

``choose_sequence_parameters`` (``tuning.py``) calls :func:`choose_rerank` once it has chosen the
sequence models' settings and the blend, with what it already holds of the validation window:

- **training queries**: the validation pairs, each with the chosen parts' top-``depth`` lists from
  the models fitted before the validation window; optionally also **earlier windows**: the
  ``eval_size`` most recent pairs before the validation window (then before that one, ...), each
  with the parts refitted strictly before its own earliest pair (capped like the tuning window),
  so every window's lists are what the parts could know then (:func:`earlier_windows`);
- **the choice** (:data:`RERANK_GRID`: the parts' previous-movie views, their scores, the L2
  strength, how many earlier windows): the validation pairs in time order are split in halves;
  each setting is fitted on the earlier windows it uses plus one half and scored (HitRatio@k) on
  the other half, both ways, and the best mean wins (ties: the earlier setting). The blend is
  judged the same way (weights tuned on one half, scored on the other), so the two inner figures
  compare like with like: that decides which of the two is **selected on validation**;
- **the final fit**: the chosen setting on its earlier windows plus all the validation pairs.

The caller gives only ratings before the evaluation window: nothing here can read it. Features
(``recommenders/rerank.py``) are built once per (views, scores) for every window, as float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rcmd_pipeline.evaluation.metrics import hits_at_k
from rcmd_pipeline.lib.blas import blas_threads
from rcmd_pipeline.recommenders.content import ContentNeighbours, ContentTable, content_features
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.rerank import (
    BASE_PARTS,
    CONTENT_PART,
    CONTENT_PREFIX,
    SEQUENCE_PARTS,
    Candidates,
    candidates,
    features,
    fit_boosted,
    fit_or_zero,
    history_band,
    log_counts,
    part_names,
    part_scores,
    rank_candidates,
    sequence_members,
)
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly, blend_lists
from rcmd_pipeline.recommenders.sequence import fit_model

RERANK_GRID = [{"model": "logit", "views": True, "scores": True, "l2": l2, "earlier": 1} for l2 in (1e-3, 1e-2, 1e-1)]
"""What the inner split chooses for the conditional logit: the L2 strength; with the three sequence models'
previous-movie views as parts of their own and their scores (divided by the query's best) beside their
ranks, and one earlier window of training queries. Cut from views x scores x L2 x earlier windows {0, 1, 2}
(``eval_real_small.py --rerank --rerank-grid full``; docs/evaluation.md): the earlier window raised the
inner figure (demo 0.7190 -> 0.7210, real 0.183 -> 0.192), a second one changed it by one or two pairs,
views and scores apart never won; since the content part, views and scores on beat both off on the demo
(0.7210 against 0.7133), the real data (0.208 against 0.203) and the 32M-like data (0.0700 against 0.0673),
so "off" left the grid (it cost a third of the choice's time). Each point costs two fits."""
BOOST_ROUNDS = 300
"""LambdaMART's trees per fit (``rerank.fit_boosted``)."""
RERANK_GRID = [*RERANK_GRID, {"views": True, "scores": True, "model": "boosted", "rounds": BOOST_ROUNDS, "earlier": 1}]
"""... and gradient-boosted trees (LambdaMART, LightGBM) over the same features with the views and scores:
a non-linear ranker, the usual second stage in practice."""
MAX_ITER = 200
"""L-BFGS iterations of each fit (unless the grid has a ``max_iter``)."""
DEPTH = 50


def next_movie_lists(train: tuple, queries: Queries, depth: int) -> np.ndarray:
    popularity = PopularityRecommender(train[1])
    return PrevOnly(NextMovieRecommender(*train, fallback=popularity), "next_movie").recommend_queries(queries, depth)


@dataclass
class QueryWindow:
    """One window of training queries: the queries, their next movies, every part's (and view's) lists,
    the sequence models (for their scores) and the rating counts of the window's training ratings."""

    queries: Queries
    actual: np.ndarray
    lists: dict[str, np.ndarray]
    models: dict
    popular_ids: np.ndarray
    popular_counts: np.ndarray


@dataclass(frozen=True)
class EarlierWindow:
    """An earlier window before the validation one, as read from the ratings: its queries, next movies,
    the (capped) training ratings before its earliest pair, and the rating counts of all of them."""

    queries: Queries
    actual: np.ndarray
    train: tuple
    popular: tuple[np.ndarray, np.ndarray]


def rating_counts(movies: np.ndarray, piece: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, counts) most rated first, ties by id: the ``popularity`` model's arrays, counted a
    piece at a time (no int64 copy of 28 M movie ids at MovieLens-32M scale)."""
    movies = np.asarray(movies)
    if len(movies) == 0 or int(movies.min()) < 0 or int(movies.max()) >= 1 << 26:
        pop = PopularityRecommender(movies)
        return pop.ranked_ids, pop.ranked_counts
    size = int(movies.max()) + 1
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(movies), piece):
        counts += np.bincount(movies[start:start + piece], minlength=size)
    ids = np.flatnonzero(counts)
    order = np.lexsort((ids, -counts[ids]))
    return ids[order].astype(np.int64), counts[ids[order]]


def query_window(queries: Queries, actual: np.ndarray, states: dict, popular: tuple, depth: int,
                 lists: dict | None = None, train: tuple | None = None) -> QueryWindow:
    """The window of ``queries`` with the sequence models of ``states`` (fitted, with their query
    parameters) and their views; ``lists`` already computed are reused (``next_movie``'s, or else it is
    fitted on ``train``)."""
    models = sequence_members(None, states)
    del models["next_movie"]
    lists = dict(lists or {})
    if "next_movie" not in lists:
        lists["next_movie"] = next_movie_lists(train, queries, depth)
    for name, model in models.items():
        if name not in lists:
            lists[name] = np.asarray(model.recommend_queries(queries, depth), dtype=np.int64)
    return QueryWindow(queries, np.asarray(actual, dtype=np.int64), lists, models,
                       np.asarray(popular[0], dtype=np.int64), np.asarray(popular[1], dtype=np.int64))


def fitted_window(earlier: EarlierWindow, chosen: dict, depth: int, content: ContentTable | None = None) -> QueryWindow:
    """An earlier window with the chosen parts fitted on its own training ratings."""
    states = {n: fit_model(n, *earlier.train, chosen[n]) for n in SEQUENCE_PARTS}
    return with_content(query_window(earlier.queries, earlier.actual, states, earlier.popular, depth,
                                     train=earlier.train), content, depth)


def with_content(w: QueryWindow, content: ContentTable | None, depth: int) -> QueryWindow:
    """The window with the content neighbours' lists (ties by the window's own rating counts); as it is
    without ``content``."""
    if content is not None and CONTENT_PART not in w.lists:
        part = ContentNeighbours.build(content, w.popular_ids, w.popular_counts, depth)
        w.lists[CONTENT_PART] = part.recommend_queries(w.queries, depth)
    return w


def window_features(w: QueryWindow, views: bool, scores: bool, extra: Callable | None = None,
                    idx: np.ndarray | None = None, content: bool = False) -> tuple[Candidates, np.ndarray, list[str]]:
    """The window's candidates and float32 feature matrix for one (views, scores, content) setting; with
    ``idx`` (sorted), of those queries only (renumbered 0..len(idx)-1)."""
    names = part_names(views, content)
    q = w.queries if idx is None else subset_queries(w.queries, idx)
    lists = [w.lists[n] if idx is None else w.lists[n][idx] for n in names]
    c = candidates(q, lists)
    raw = part_scores(w.models, [n for n in names if n in w.models], q, c) if scores else None
    x, cols = features(c, log_counts(w.popular_ids, w.popular_counts, c.ids), history_band(q), names,
                       True, raw, extra(q, c) if extra is not None else None, dtype=np.float32)
    return c, x, cols


@dataclass(frozen=True)
class Block:
    """Candidates, features and next movies of some queries (rows 0..n-1), standing for ``n`` queries:
    the others, whose next movie is no candidate, are misses whatever the scores (and teach a fit
    nothing), so their features are never built (at MovieLens-32M scale three queries in four)."""

    c: Candidates
    x: np.ndarray
    actual: np.ndarray
    n: int


def block_hit_ratio(block: Block, fitted, k: int, rows: int = 1 << 16) -> float:
    """HitRatio@k of the fitted scorer over the ``block.n`` queries (scores a block of rows at a time)."""
    score = fitted.score(block.x, rows)
    return float(hits_at_k(rank_candidates(block.c, score, k), block.actual, k).sum()) / max(block.n, 1)


def usable_queries(w: QueryWindow, views: bool, content: bool, idx: np.ndarray | None = None) -> np.ndarray:
    """The queries of ``w`` (of ``idx``, sorted) whose next movie is among their candidates, sorted."""
    names = part_names(views, content)
    sel = np.arange(len(w.actual)) if idx is None else np.asarray(idx)
    c = candidates(subset_queries(w.queries, sel), [w.lists[n][sel] for n in names])
    return sel[np.unique(c.rows[c.ids == w.actual[sel][c.rows]])]


def usable_block(w: QueryWindow, views: bool, scores: bool, extra: Callable | None, content: bool,
                 idx: np.ndarray | None = None) -> tuple[Block, list[str]]:
    """The :class:`Block` of ``w``'s queries (or of ``idx``), built for the usable ones only."""
    use = usable_queries(w, views, content, idx)
    c, x, cols = window_features(w, views, scores, extra, use, content)
    return Block(c, x, w.actual[use], len(w.actual) if idx is None else len(idx)), cols


def subset_queries(q: Queries, idx: np.ndarray) -> Queries:
    """Queries ``idx`` of ``q`` (with their histories)."""
    lengths = np.diff(q.offsets)[idx]
    offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.concatenate([q.history(i) for i in idx]) if len(idx) else q.items[:0]
    n_earlier = q.n_earlier[idx] if q.n_earlier is not None else None
    return Queries(q.prev[idx], q.users[idx], q.times[idx], offsets, items, n_earlier)


def halves(q: Queries) -> tuple[np.ndarray, np.ndarray]:
    """The first and second half of the queries in time order (each sorted by position)."""
    order = np.lexsort((np.arange(len(q)), q.times))
    return np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])


@dataclass(frozen=True)
class RerankChoice:
    chosen: dict
    """the chosen setting and the fitted arrays (``part_names``, ``feature_names``, ``weights``, ``mean``,
    ``std`` as lists), what the ``seq_rerank`` model asset stores"""
    inner_hit_ratio: float
    hybrid_inner_hit_ratio: float
    validation_hit_ratio: float
    """the final fit scored on all validation pairs (in sample, like the blend's validation figure)"""
    table: pd.DataFrame
    info: dict = field(default_factory=dict)


def choose_rerank(validation: QueryWindow, earlier: list[EarlierWindow], chosen: dict, blend_tuner: Callable,
                  k: int = 10, grid: dict | None = None, max_iter: int = MAX_ITER, depth: int = DEPTH,
                  extra: Callable | None = None, log: Callable[[str], None] | None = None,
                  content: ContentTable | None = None) -> RerankChoice:
    """The re-ranker's setting chosen by the inner split of the validation pairs, then fitted on them
    (and on the earlier windows it chose). ``chosen``: the sequence models' chosen parameters (refitted
    on each earlier window); ``blend_tuner(lists, queries, actual)``: the blend's weights (``tune_blend``),
    for its inner figure. The fits run with one BLAS thread (``lib/blas.py``: faster here)."""
    with blas_threads(1):
        return _choose_rerank(validation, earlier, chosen, blend_tuner, k, grid, max_iter, depth, extra, log, content)


def _choose_rerank(validation: QueryWindow, earlier: list[EarlierWindow], chosen: dict, blend_tuner: Callable,
                   k: int, grid: dict | None, max_iter: int, depth: int, extra: Callable | None,
                   log: Callable[[str], None] | None, content: ContentTable | None = None) -> RerankChoice:
    say = log or (lambda message: None)
    started = time.perf_counter()
    grid = RERANK_GRID if grid is None else grid
    from rcmd_pipeline.evaluation.tuning import expand_grid

    points = expand_grid(grid)
    need_earlier = max(p.get("earlier", 0) for p in points)
    with_content(validation, content, depth)
    windows = [validation] + [fitted_window(w, chosen, depth, content) for w in earlier[:need_earlier]]
    if content is not None:
        extra = _joined(extra, content_features(content))
    if need_earlier > len(earlier):
        raise ValueError(f"the grid asks for {need_earlier} earlier windows, {len(earlier)} were given")
    say(f"seq_rerank: {len(validation.actual)} validation queries, {need_earlier} earlier window(s) of "
        f"{[len(w.actual) for w in windows[1:]]} queries ({time.perf_counter() - started:.1f} s)")
    half = halves(validation.queries)

    hybrid = []
    for fit_half in (0, 1):
        q, a = subset_queries(validation.queries, half[fit_half]), validation.actual[half[fit_half]]
        weights = blend_tuner({n: validation.lists[n][half[fit_half]] for n in BASE_PARTS}, q, a)
        other = half[1 - fit_half]
        recs = blend_lists(subset_queries(validation.queries, other),
                           {n: validation.lists[n][other] for n in BASE_PARTS}, weights, k)
        hybrid.append(float(hits_at_k(recs, validation.actual[other], k).mean()))
    hybrid_inner = float(np.mean(hybrid))

    rows, best = [], None
    settings = list(dict.fromkeys((p["views"], p["scores"]) for p in points))
    for views, scores in settings:
        blocks = [None]  # the validation window only as its halves, built apart (no copy of the whole)
        blocks += [usable_block(w, views, scores, extra, content is not None)[0] for w in windows[1:]]
        val_halves = [usable_block(validation, views, scores, extra, content is not None, h)[0] for h in half]
        for point in (p for p in points if (p["views"], p["scores"]) == (views, scores)):
            used = blocks[1:1 + point.get("earlier", 0)]
            hrs = []
            for fit_half in (0, 1):
                fitted = _fit(point, [(b.x, b.c, b.actual) for b in (*used, val_halves[fit_half])], max_iter)
                hrs.append(block_hit_ratio(val_halves[1 - fit_half], fitted, k))
            hr = float(np.mean(hrs))
            rows.append({**point, "hit_ratio_first_to_second": hrs[0], "hit_ratio_second_to_first": hrs[1],
                         "hit_ratio": hr, "n": len(validation.actual)})
            say(f"seq_rerank {point}: inner HR@{k} {hr:.4f} ({time.perf_counter() - started:.1f} s)")
            if best is None or hr > best[0]:
                best = (hr, point)
        del blocks, val_halves
    hr, point = best
    built = [usable_block(w, point["views"], point["scores"], extra, content is not None)
             for w in windows[:1 + point.get("earlier", 0)]]
    cols = built[0][1]
    blocks = [block for block, _ in built]
    del built
    max_iter = point.get("max_iter", max_iter)
    fitted = _fit(point, [(b.x, b.c, b.actual) for b in (*blocks[1:], blocks[0])], max_iter)
    in_sample = block_hit_ratio(blocks[0], fitted, k)
    recall = blocks[0].c.n_queries / max(blocks[0].n, 1)
    say(f"seq_rerank: chose {point} (inner HR@{k} {hr:.4f}, the blend's {hybrid_inner:.4f}); fitted on "
        f"{sum(b.n for b in blocks)} queries ({fitted.queries_used} with the next movie among the "
        f"candidates; converged: {fitted.converged}); {time.perf_counter() - started:.1f} s")
    out = {**point, "max_iter": int(max_iter), "depth": int(depth), "interactions": True, "exclude_seen": True,
           "part_names": part_names(point["views"], content is not None), "feature_names": cols,
           "weights": [float(v) for v in fitted.weights], "mean": [float(v) for v in fitted.mean],
           "std": [float(v) for v in fitted.std], "booster": fitted.booster,
           **({key: value.tolist() for key, value in content.arrays(CONTENT_PREFIX).items()} if content is not None
              else {})}
    info = {"queries_used": fitted.queries_used, "converged": fitted.converged, "candidate_recall": recall,
            "hybrid_inner_halves": hybrid, "seconds": round(time.perf_counter() - started, 2)}
    return RerankChoice(out, hr, hybrid_inner, in_sample, pd.DataFrame(rows), info)


def _fit(point: dict, blocks: list, max_iter: int):
    """The point's model on the blocks: the conditional logit (L2 ``l2``, L-BFGS) or, with ``model``
    "boosted", LambdaMART trees (``rounds``)."""
    if point.get("model", "logit") == "boosted":
        return fit_boosted(blocks, int(point.get("rounds", BOOST_ROUNDS)))
    return fit_or_zero(blocks, point["l2"], point.get("max_iter", max_iter))


def _joined(first: Callable | None, second: Callable) -> Callable:
    """Two feature functions as one (``first``'s columns, then ``second``'s)."""
    if first is None:
        return second
    return lambda q, c: {**first(q, c), **second(q, c)}


@dataclass(frozen=True)
class RerankOptions:
    """How ``choose_sequence_parameters`` chooses the re-ranker (None there: not at all)."""

    grid: dict | None = None
    """:data:`RERANK_GRID` when None"""
    max_iter: int = MAX_ITER
    extra: Callable | None = None
    """further features, ``(queries, candidates) -> {name: column}`` (a benchmark's trial; not stored)"""
    content: ContentTable | None = None
    """the catalogue's TMDB metadata: the content neighbours become a part and their similarities features"""

    @property
    def earlier(self) -> int:
        from rcmd_pipeline.evaluation.tuning import expand_grid
        return max(p.get("earlier", 0) for p in expand_grid(RERANK_GRID if self.grid is None else self.grid))
