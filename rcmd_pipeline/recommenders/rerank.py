"""A learned second stage over the sequence parts' lists: a conditional-logit re-ranker.

The reciprocal-rank blend (``seq_hybrid.py``) gives each part one weight and a fixed curve
``w / (rank + c0)``. A re-ranker instead learns, from validation queries, how much "rank r in part
p" is worth, for every part and rank band, how that changes with the length of the user's history,
and what agreement between parts adds (the standard two-stage practice: candidate generation,
then a learned ranking of the candidates).

- **Candidates** of a query: the union of the parts' lists (each ``depth`` long), minus PAD, the
  previous movie and (``exclude_seen``) every movie of the history; kept in first-listing order
  (parts in the given order, then rank), as :func:`~rcmd_pipeline.recommenders.hybrid.blend_ranked`
  lists them.
- **Features** of a (query, candidate) (:func:`features`): per part, one-hot rank bands
  (:data:`RANK_BANDS`; not listed = all zero), the reciprocal rank 1/r (0 when not listed) and,
  optionally, its raw score divided by the query's best candidate score; log(1 + training rating
  count) and its square. With ``interactions``: each part's 1/r and the log count times the query's
  history-length band (:data:`HISTORY_BANDS`, the first band the baseline), the products of two
  parts' 1/r. A feature constant within a query (the history band alone) cannot change an order,
  so the band enters only through the products; how many parts list a candidate is the sum of the
  rank indicators, so it is no column of its own.
- **Model**: a conditional logit (softmax over a query's candidates, Luce/McFadden; the listwise
  loss of ListNet with a single relevant item): P(c | query) = exp(x_c . w) / sum_c' exp(x_c' . w),
  fitted by L-BFGS on the mean negative log-likelihood of each query's next movie plus
  ``l2`` / 2 * |w|^2, features standardised (mean, std over the training candidates). Queries
  whose next movie is not a candidate carry no information for the order and are skipped.
  Or (:func:`fit_boosted`) gradient-boosted trees over the raw features: LightGBM's LambdaMART,
  chosen against the logit on the validation window.
- **Content** (optional, :class:`~rcmd_pipeline.recommenders.content.ContentTable`): the previous
  movie's TMDB content neighbours as one more part, their similarities as further columns.
- **Ranking**: the k highest scores per query; equal scores (to 12 decimals) go to the candidate
  listed first; rows short of candidates are filled with the most rated movies (as the parts do).

The registry strategy ``seq_rerank`` (``registry.py``): ``sequence_tuning`` chooses and fits it on the
validation window (``evaluation/rerank_choice.py``); its model asset stores :meth:`Reranker.state`.
Plain numpy/scipy (and LightGBM for the trees), no Dagster imports.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from rcmd_pipeline.recommenders.base import PAD, append_usable
from rcmd_pipeline.recommenders.content import NEIGHBOURS, ContentNeighbours, ContentTable, content_features
from rcmd_pipeline.recommenders.history import Queries, history_lengths
from rcmd_pipeline.recommenders.sequence_scoring import _excluded, _single_item_queries

RANK_BANDS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, None))
"""Rank bands (first, last or None) of a part's list, one indicator each; unlisted: all zero."""
HISTORY_BANDS = ((None, 1), (2, 5), (6, 20), (21, None))
"""History-length bands (earlier ratings) for the interactions; 0 or 1 earlier rating is the first."""


SEQUENCE_PARTS = ("seq_rules", "item_knn", "slist")
BASE_PARTS = ("next_movie", *SEQUENCE_PARTS)
"""The re-ranker's parts: the blend's (``seq_hybrid``), in its order."""
VIEW = {"last_n": 1, "decay": "harmonic", "exclude_seen": True}
"""A sequence model's previous-movie-only view: the same fitted state scored from the last movie alone."""


def view_name(name: str) -> str:
    return f"{name}@prev"


CONTENT_PART = "content"
"""The previous movie's content neighbours (``content.py``), a part when the TMDB details are given."""


def part_names(views: bool, content: bool = False) -> list[str]:
    """The lists the re-ranker reads: the blend's parts, then (``views``) the sequence models' views,
    then (``content``) the previous movie's content neighbours."""
    names = [*BASE_PARTS, *(view_name(n) for n in SEQUENCE_PARTS)] if views else list(BASE_PARTS)
    return [*names, CONTENT_PART] if content else names


def view_models(states: dict) -> dict:
    """The previous-movie-only view of each fitted sequence model (same state, :data:`VIEW`)."""
    from rcmd_pipeline.recommenders.sequence import MODELS

    return {view_name(n): MODELS[n].from_state(state, **VIEW) for n, state in states.items()}


def sequence_members(next_movie, states: dict) -> dict:
    """Every list a re-ranker may read: ``next_movie`` (a query recommender), the sequence models of
    ``states`` (fitted, with their query parameters) and their views."""
    from rcmd_pipeline.recommenders.sequence import load_model

    return {"next_movie": next_movie, **{n: load_model(n, states[n]) for n in SEQUENCE_PARTS},
            **view_models({n: states[n] for n in SEQUENCE_PARTS})}


CONTENT_PREFIX = "content_"
"""The content table's arrays in a state or choice (``content_ids``, ``content_genres``, ...)."""


def state_from_choice(chosen: dict) -> dict[str, np.ndarray]:
    """The ``seq_rerank`` model's arrays from what ``sequence_tuning`` chose and fitted (lists and values)."""
    content = {key: np.asarray(value, dtype=np.int64) for key, value in chosen.items()
               if key.startswith(CONTENT_PREFIX)}
    return {**content, "part_names": np.array(chosen["part_names"], dtype=str),
            "feature_names": np.array(chosen["feature_names"], dtype=str),
            "weights": np.array(chosen["weights"], dtype=np.float64),
            "mean": np.array(chosen["mean"], dtype=np.float64),
            "std": np.array(chosen["std"], dtype=np.float64), "interactions": np.array(bool(chosen["interactions"])),
            "depth": np.array(int(chosen["depth"])), "exclude_seen": np.array(bool(chosen["exclude_seen"])),
            "use_scores": np.array(bool(chosen["scores"])),
            "booster": np.array(str(chosen.get("booster", "")))}


@dataclass(frozen=True)
class Candidates:
    """Every (query, candidate) of a batch: ``rows`` sorted, within a row in first-listing order;
    ``ranks[i, p]`` is the candidate's 1-based rank in part p's list, 0 when that part does not list it."""

    rows: np.ndarray
    ids: np.ndarray
    ranks: np.ndarray
    n_queries: int


def candidates(q: Queries, lists: list[np.ndarray], exclude_seen: bool = True) -> Candidates:
    """The union of the parts' lists per query (PAD, prev and, with ``exclude_seen``, history dropped)."""
    n = len(q)
    widths = [np.asarray(ids).shape[1] for ids in lists]
    cand = np.concatenate([np.asarray(ids, dtype=np.int64).reshape(n, -1) for ids in lists], axis=1)
    part = np.concatenate([np.full(w, p, dtype=np.int64) for p, w in enumerate(widths)])
    rank = np.concatenate([np.arange(1, w + 1, dtype=np.int64) for w in widths])
    width = cand.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    flat, first = cand.ravel(), np.tile(np.arange(width, dtype=np.int64), n)
    ok = flat != PAD
    ok[ok] = ~_excluded(q, rows[ok], flat[ok], exclude_seen)
    rows, flat, first = rows[ok], flat[ok], first[ok]
    order = np.lexsort((first, flat, rows))
    rows, flat, first = rows[order], flat[order], first[order]
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (flat[1:] != flat[:-1])]) if len(rows) else \
        np.zeros(0, dtype=np.int64)
    group = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(rows)]))
    best = np.full((len(start), len(lists)), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, (group, part[first]), rank[first])  # a part listing a movie twice: its best rank
    ranks = np.where(best == np.iinfo(np.int64).max, 0, best)
    rows, ids, first = rows[start], flat[start], first[start]
    keep = np.lexsort((first, rows))
    return Candidates(rows[keep], ids[keep], ranks[keep], n)


def history_band(q: Queries) -> np.ndarray:
    """Each query's index in :data:`HISTORY_BANDS` (0 for 0 or 1 earlier rating)."""
    lengths = history_lengths(q)
    band = np.zeros(len(lengths), dtype=np.int64)
    for b, (low, _) in enumerate(HISTORY_BANDS):
        if low is not None:
            band[lengths >= low] = b
    return band


def row_normalised(c: Candidates, values: np.ndarray) -> np.ndarray:
    """``values`` divided by the largest value among the same query's candidates (0 where that is <= 0)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    top = np.maximum.reduceat(values, _segments(c.rows, c.n_queries)[:-1][np.unique(c.rows)])
    top_of = np.zeros(c.n_queries)
    top_of[np.unique(c.rows)] = top
    t = top_of[c.rows]
    return np.where(t > 0, values / np.where(t > 0, t, 1.0), 0.0)


def features(c: Candidates, log_count: np.ndarray, band: np.ndarray, part_names: list[str],
             interactions: bool = True, scores: dict[str, np.ndarray] | None = None,
             extra: dict[str, np.ndarray] | None = None, dtype=np.float64) -> tuple[np.ndarray, list[str]]:
    """The feature matrix (one row per candidate) and its column names (see the module docstring).

    ``log_count`` is log(1 + training rating count) per candidate, ``band`` the history band per
    query; ``scores`` (optional) each named part's raw score per candidate, used divided by the
    query's largest candidate score. Exactly collinear columns are left out (how many parts list a
    candidate is the sum of the rank indicators; each part's 1/r is the sum of its products with
    the history bands, so the first band is the baseline). ``extra``: further named columns, one
    value per candidate, appended as they are (e.g. a content similarity to the previous movie).
    ``dtype``: of the matrix (float32 halves what a large batch of candidates holds); the columns are
    written into it as they are computed (no list of columns beside the matrix).
    """
    n_parts, n_scored = len(part_names), sum(1 for part in part_names if scores is not None and part in scores)
    width = n_parts * (len(RANK_BANDS) + 1) + n_scored + 2 + len(extra or {})
    if interactions:
        width += (len(HISTORY_BANDS) - 1) * (n_parts + 1) + n_parts * (n_parts - 1) // 2
    cols, names = _Columns(len(c.rows), width, dtype), []
    rr = np.where(c.ranks > 0, 1.0 / np.maximum(c.ranks, 1), 0.0)
    for p, part in enumerate(part_names):
        r = c.ranks[:, p]
        for low, high in RANK_BANDS:
            cols.append(((r >= low) & ((r <= high) if high is not None else True)).astype(np.float64))
            names.append(f"{part}:rank {low}" + ("" if high == low else f"-{high}" if high else "+"))
        cols.append(rr[:, p])
        names.append(f"{part}:1/r")
        if scores is not None and part in scores:
            cols.append(row_normalised(c, scores[part]))
            names.append(f"{part}:score/max")
    log_count = np.asarray(log_count, dtype=np.float64)
    cols += [log_count, log_count ** 2]
    names += ["log count", "log count^2"]
    if interactions:
        qb = np.asarray(band, dtype=np.int64)[c.rows]
        for b in range(1, len(HISTORY_BANDS)):
            in_band = (qb == b).astype(np.float64)
            for p, part in enumerate(part_names):
                cols.append(rr[:, p] * in_band)
                names.append(f"{part}:1/r x history band {b}")
            cols.append(log_count * in_band)
            names.append(f"log count x history band {b}")
        for p in range(len(part_names)):
            for p2 in range(p + 1, len(part_names)):
                cols.append(rr[:, p] * rr[:, p2])
                names.append(f"{part_names[p]}:1/r x {part_names[p2]}:1/r")
    for name, values in (extra or {}).items():
        cols.append(np.asarray(values, dtype=np.float64))
        names.append(name)
    assert cols.filled == width == len(names), (cols.filled, width, len(names))
    return cols.out, names


class _Columns:
    """The feature matrix, filled a column at a time."""

    def __init__(self, rows: int, width: int, dtype) -> None:
        self.out = np.empty((rows, width), dtype=dtype)
        self.filled = 0

    def append(self, column) -> None:
        self.out[:, self.filled] = column
        self.filled += 1

    def __iadd__(self, columns):
        for column in columns:
            self.append(column)
        return self


def _segments(rows: np.ndarray, n: int) -> np.ndarray:
    """Start of each query's run of candidates (rows sorted), ``n + 1`` offsets."""
    return np.searchsorted(rows, np.arange(n + 1))


def softmax_loss(w: np.ndarray, x: np.ndarray, rows: np.ndarray, positive: np.ndarray, n: int,
                 l2: float) -> tuple[float, np.ndarray]:
    """Mean over the ``n`` queries of -log P(positive | query) plus ``l2`` / 2 |w|^2, and its gradient.

    ``rows`` (sorted, values 0..n-1) gives each candidate's query; ``positive`` marks exactly one
    candidate of each query. The plain form on standardised rows: the fits use :func:`_folded_loss`,
    tested equal to it.
    """
    s = (x @ w.astype(x.dtype)).astype(np.float64)
    offsets = _segments(rows, n)  # every query has candidates (fit_conditional_logit keeps only those)
    top = np.maximum.reduceat(s, offsets[:-1])
    e = np.exp(s - top[rows])
    z = np.add.reduceat(e, offsets[:-1])
    p = e / z[rows]
    loss = float(np.sum(top + np.log(z)) - s[positive].sum()) / n + 0.5 * l2 * float(w @ w)
    grad = ((p.astype(x.dtype) @ x).astype(np.float64) - x[positive].sum(axis=0, dtype=np.float64)) / n + l2 * w
    return loss, grad


@dataclass(frozen=True)
class Fitted:
    """A fitted scorer of candidates: linear (``weights`` of the standardised features) or, with a
    ``booster`` (LightGBM's model text), gradient-boosted trees over the raw features; then ``weights``
    holds each feature's share of the trees' total gain (for reading, not for scoring)."""

    weights: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    queries_used: int
    converged: bool
    booster: str = ""

    def score(self, x: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
        """Each row's score (higher: better), a block of rows at a time."""
        if len(x) == 0:
            return np.zeros(0)
        if self.booster:
            model = _booster(self.booster)
            return np.concatenate([model.predict(x[s:s + rows], num_threads=BOOST_THREADS)
                                   for s in range(0, len(x), rows)])
        return np.concatenate([((x[s:s + rows] - self.mean) / self.std) @ self.weights for s in range(0, len(x), rows)])


BOOST_PARAMS = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
                "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambdarank_truncation_level": 20,
                "seed": 0, "deterministic": True, "force_row_wise": True, "verbose": -1}
"""LightGBM's LambdaMART (``lambdarank``: gradients of NDCG over each query's candidates) with the usual
regularisation by row and feature sampling; ``deterministic`` and a fixed seed: the same data, the same
trees (the choice is tested to be repeatable). Not tuned beyond the number of rounds (the grid's)."""
BOOST_THREADS = 2


def _lightgbm():
    """LightGBM, its OpenMP threads told to wait passively (``OMP_WAIT_POLICY``, unless already set; it
    takes effect when LightGBM brings OpenMP into the process, which nothing else here does). With the
    default spinning, two processes of two threads each on two cores (the multiprocess executor) took
    106 s each for a fit that takes 19 s alone; passive, 35 s each."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import lightgbm

    return lightgbm


@functools.lru_cache(maxsize=4)
def _booster(text: str):
    return _lightgbm().Booster(model_str=text)


def fit_boosted(blocks: list[tuple[np.ndarray, Candidates, np.ndarray]], rounds: int = 300) -> Fitted:
    """LambdaMART (:data:`BOOST_PARAMS`) on the queries whose next movie is among their candidates (label 1
    for it, 0 for the others), several batches at once; copies only those queries' rows (float32).
    All-zero scores (first-listing order) when no query has its next movie among its candidates."""
    lightgbm = _lightgbm()

    xs, labels, groups = [], [], []
    for x, c, actual in blocks:
        positive = c.ids == np.asarray(actual, dtype=np.int64)[c.rows]
        has = np.zeros(c.n_queries, dtype=bool)
        has[c.rows[positive]] = True
        keep = has[c.rows]
        xs.append(np.asarray(x if keep.all() else x[keep], dtype=np.float32))  # one copy: the concatenation
        labels.append(positive[keep].astype(np.float32))
        groups.append(np.bincount(c.rows[keep], minlength=c.n_queries)[has])
    width = blocks[0][0].shape[1]
    used = int(sum(len(g) for g in groups))
    if used == 0:
        return Fitted(np.zeros(width), np.zeros(width), np.ones(width), 0, True)
    data = lightgbm.Dataset(np.concatenate(xs), np.concatenate(labels), group=np.concatenate(groups),
                            free_raw_data=True)
    del xs
    model = lightgbm.train({**BOOST_PARAMS, "num_threads": BOOST_THREADS}, data, num_boost_round=int(rounds))
    gain = model.feature_importance(importance_type="gain").astype(np.float64)
    share = gain / gain.sum() if gain.sum() > 0 else gain
    return Fitted(share, np.zeros(width), np.ones(width), used, True, model.model_to_string())


def fit_conditional_logit(x: np.ndarray, c: Candidates, actual: np.ndarray, l2: float = 0.01,
                          max_iter: int = 200) -> Fitted:
    """Fit the weights on the queries whose next movie (``actual``) is among their candidates."""
    return fit_blocks([(x, c, actual)], l2, max_iter)


_ROWS = 1 << 16


@dataclass(frozen=True)
class _Batch:
    """One batch of a fit: its features as given (not standardised, not copied) and what the loss needs."""

    x: np.ndarray
    starts: np.ndarray
    """first row of each query that has candidates (rows are sorted by query)"""
    segment: np.ndarray
    """each row's index among those queries"""
    used: np.ndarray
    """per such query: its next movie is a candidate (it enters the loss)"""
    positive: np.ndarray
    """per such query used: the row of its next movie"""
    row_used: np.ndarray


def _batch(x: np.ndarray, c: Candidates, actual: np.ndarray) -> _Batch:
    actual = np.asarray(actual, dtype=np.int64)
    is_positive = c.ids == actual[c.rows]
    nonempty = np.flatnonzero(np.diff(_segments(c.rows, c.n_queries)) > 0)
    starts = _segments(c.rows, c.n_queries)[nonempty]
    segment = np.searchsorted(nonempty, c.rows)
    has = np.zeros(len(nonempty), dtype=bool)
    has[segment[is_positive]] = True
    positive = np.full(len(nonempty), -1, dtype=np.int64)
    positive[segment[is_positive]] = np.flatnonzero(is_positive)
    return _Batch(x, starts, segment, has, positive[has], has[segment])


def _folded_loss(w: np.ndarray, batches: list[_Batch], mean: np.ndarray, std: np.ndarray, n: int, l2: float,
                 sum_positive: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`softmax_loss` of the standardised features ``(x - mean) / std`` without building them:
    ``(x - mean) / std . w = x . v - mean . v`` with ``v = w / std``, and the gradient's ``mean`` terms
    cancel (a query's probabilities sum to 1). ``sum_positive``: the sum of the used queries' positive rows."""
    v = w / std
    shift = float(mean @ v)
    loss, grad = 0.0, -sum_positive.copy()
    v32 = v.astype(np.float32)
    for b in batches:
        s = np.empty(len(b.x))
        for start in range(0, len(b.x), _ROWS):
            s[start:start + _ROWS] = b.x[start:start + _ROWS] @ v32
        s -= shift
        top = np.maximum.reduceat(s, b.starts)
        e = np.exp(s - top[b.segment])
        z = np.add.reduceat(e, b.starts)
        loss += float(np.sum((top + np.log(z))[b.used]) - s[b.positive].sum())
        p = np.where(b.row_used, e / z[b.segment], 0.0).astype(np.float32)
        for start in range(0, len(b.x), _ROWS):
            grad += (p[start:start + _ROWS] @ b.x[start:start + _ROWS]).astype(np.float64)
    return loss / n + 0.5 * l2 * float(w @ w), grad / n / std + l2 * w


def fit_blocks(blocks: list[tuple[np.ndarray, Candidates, np.ndarray]], l2: float = 0.01,
               max_iter: int = 200) -> Fitted:
    """:func:`fit_conditional_logit` on several batches of queries at once, ``(x, candidates, actual)``
    each, without a copy of their features: the mean and std of the usable rows (queries whose next
    movie is a candidate) are accumulated in float64 a block of rows at a time, and the loss works on
    the features as given (:func:`_folded_loss`), so a fit holds nothing of the size of ``x``."""
    batches = [_batch(x, c, actual) for x, c, actual in blocks]
    used = sum(int(b.used.sum()) for b in batches)
    if used == 0:
        raise ValueError("no query has its next movie among its candidates: nothing to learn")
    width = blocks[0][0].shape[1]
    count, total = 0, np.zeros(width)
    for b in batches:
        for start in range(0, len(b.x), _ROWS):
            rows = b.x[start:start + _ROWS][b.row_used[start:start + _ROWS]]
            total += rows.sum(axis=0, dtype=np.float64)
            count += len(rows)
    mean = total / count
    var, sum_positive = np.zeros(width), np.zeros(width)
    for b in batches:
        for start in range(0, len(b.x), _ROWS):
            rows = b.x[start:start + _ROWS][b.row_used[start:start + _ROWS]]
            var += ((rows - mean) ** 2).sum(axis=0)
        sum_positive += b.x[b.positive].sum(axis=0, dtype=np.float64)
    std = np.sqrt(var / count)
    std = np.where(std > 0, std, 1.0)
    result = minimize(_folded_loss, np.zeros(width), args=(batches, mean, std, used, float(l2), sum_positive),
                      jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return Fitted(result.x, mean, std, used, bool(result.success))


def fit_or_zero(blocks: list[tuple[np.ndarray, Candidates, np.ndarray]], l2: float, max_iter: int) -> Fitted:
    """:func:`fit_blocks`, or all-zero weights (candidates in first-listing order) when no query has
    its next movie among its candidates (a tiny validation window): nothing to learn."""
    if not any((c.ids == np.asarray(actual, dtype=np.int64)[c.rows]).any() for _, c, actual in blocks):
        width = blocks[0][0].shape[1]
        return Fitted(np.zeros(width), np.zeros(width), np.ones(width), 0, True)
    return fit_blocks(blocks, l2=l2, max_iter=max_iter)


def rank_candidates(c: Candidates, score: np.ndarray, k: int) -> np.ndarray:
    """Top-k candidate ids per query by score (ties: the one listed first), PAD where short."""
    out = np.full((c.n_queries, k), PAD, dtype=np.int64)
    if len(c.rows) == 0 or k == 0:
        return out
    order = np.lexsort((np.arange(len(c.rows)), -np.round(score, 12), c.rows))
    rows, ids = c.rows[order], c.ids[order]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    take = place < k
    out[rows[take], place[take]] = ids[take]
    return out


def fill_popular(out: np.ndarray, q: Queries, popular_ids: np.ndarray, exclude_seen: bool = True) -> np.ndarray:
    """Rows with PAD get the most rated movies not yet listed nor excluded (in place, returned)."""
    k = out.shape[1]
    counts = (out != PAD).sum(axis=1)
    short = np.flatnonzero(counts < k)
    if len(short) == 0 or len(popular_ids) == 0:
        return out
    for i in short:  # rare (a query with fewer than k candidates): a loop is fine
        listed = set(out[i, :counts[i]].tolist())
        cand = np.array([m for m in popular_ids if m not in listed], dtype=np.int64)
        bad = _excluded(q, np.full(len(cand), i, dtype=np.int64), cand, exclude_seen)
        append_usable(out, counts, np.array([i]), cand[None, :], bad[None, :])
    return out


class Reranker:
    """The fitted re-ranker over ``parts`` (query recommenders, in the order of ``part_names``).

    ``popular_ids``/``popular_counts``: the rating count of each movie in the parts' training window
    (the ``popularity`` model's arrays), for the log-count features and the fill of short rows. They
    are not part of :meth:`state` (the ``popularity_model`` asset holds them). ``feature_names``,
    when given, must be the names :func:`features` gives: a stored state fitted on another layout of
    the features is refused rather than misread.
    """

    name = "seq_rerank"

    def __init__(self, parts: dict, part_names: list[str], fitted: Fitted, popular_ids: np.ndarray,
                 popular_counts: np.ndarray, interactions: bool = True, depth: int = 50,
                 exclude_seen: bool = True, use_scores: bool = False, extra_features=None,
                 feature_names: list[str] | None = None, content: ContentTable | None = None) -> None:
        self.content = content
        if content is not None:  # its neighbours a part (when read), its similarities features
            if CONTENT_PART in part_names and CONTENT_PART not in parts:
                parts = {**parts, CONTENT_PART: ContentNeighbours.build(content, popular_ids, popular_counts,
                                                                        max(int(depth), NEIGHBOURS))}
            similarity = content_features(content)
            extra_features = similarity if extra_features is None else (
                lambda q, c, first=extra_features: {**first(q, c), **similarity(q, c)})
        missing = [n for n in part_names if n not in parts]
        if missing:
            raise ValueError(f"no part for {missing}")
        self.parts, self.part_names, self.fitted = parts, list(part_names), fitted
        self.popular_ids = np.asarray(popular_ids, dtype=np.int64)
        self.popular_counts = np.asarray(popular_counts, dtype=np.int64)
        self.interactions, self.depth, self.exclude_seen = bool(interactions), int(depth), bool(exclude_seen)
        self.use_scores = bool(use_scores)
        self.extra_features = extra_features  # (queries, candidates) -> {name: column}; not part of the state
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        if self.feature_names is not None and len(self.feature_names) != len(fitted.weights):
            raise ValueError(f"{len(self.feature_names)} feature names for {len(fitted.weights)} weights")
        self._sorted = np.argsort(self.popular_ids, kind="stable")

    def log_count(self, ids: np.ndarray) -> np.ndarray:
        """log(1 + training rating count) of each id (0 for a movie not rated in the training window)."""
        return log_counts(self.popular_ids, self.popular_counts, ids, self._sorted)

    def state(self) -> dict[str, np.ndarray]:
        """The fitted re-ranker as arrays: its weights and standardisation, the parts it reads and how."""
        state = {"part_names": np.array(self.part_names, dtype=str), "weights": self.fitted.weights,
                 "booster": np.array(self.fitted.booster),
                 "mean": self.fitted.mean, "std": self.fitted.std, "interactions": np.array(self.interactions),
                 "depth": np.array(self.depth), "exclude_seen": np.array(self.exclude_seen),
                 "use_scores": np.array(self.use_scores)}
        if self.feature_names is not None:
            state["feature_names"] = np.array(self.feature_names, dtype=str)
        if self.content is not None:
            state.update(self.content.arrays(CONTENT_PREFIX))
        return state

    @classmethod
    def from_state(cls, state: dict, parts: dict, popular_ids: np.ndarray, popular_counts: np.ndarray,
                   extra_features=None) -> Reranker:
        fitted = Fitted(np.asarray(state["weights"], np.float64), np.asarray(state["mean"], np.float64),
                        np.asarray(state["std"], np.float64), 0, True,
                        str(np.asarray(state["booster"]).item()) if "booster" in state else "")
        names = [str(n) for n in state["feature_names"]] if "feature_names" in state else None
        content = ContentTable.from_arrays(state, CONTENT_PREFIX) if f"{CONTENT_PREFIX}ids" in state else None
        return cls(parts, [str(n) for n in state["part_names"]], fitted, popular_ids, popular_counts,
                   bool(state["interactions"]), int(state["depth"]), bool(state["exclude_seen"]),
                   bool(state["use_scores"]), extra_features, names, content)

    def score_lists(self, q: Queries, lists: list[np.ndarray], k: int) -> np.ndarray:
        """Top-k from the parts' lists already computed (``lists`` in ``part_names`` order)."""
        c = candidates(q, lists, self.exclude_seen)
        scores = part_scores(self.parts, self.part_names, q, c) if self.use_scores else None
        extra = self.extra_features(q, c) if self.extra_features is not None else None
        x, names = features(c, self.log_count(c.ids), history_band(q), self.part_names, self.interactions, scores,
                            extra)
        if self.feature_names is not None and names != self.feature_names:
            raise ValueError("the stored re-ranker was fitted on other features than these parts give: "
                             f"{self.feature_names} != {names}")
        score = self.fitted.score(x)
        return fill_popular(rank_candidates(c, score, int(k)), q, self.popular_ids, self.exclude_seen)

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        depth = max(self.depth, int(k))
        lists = [np.asarray(self.parts[n].recommend_queries(q, depth), dtype=np.int64) for n in self.part_names]
        return self.score_lists(q, lists, k)

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie."""
        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)


def log_counts(popular_ids: np.ndarray, popular_counts: np.ndarray, ids: np.ndarray,
               order: np.ndarray | None = None) -> np.ndarray:
    """log(1 + count) of each of ``ids`` from (id, count) arrays; 0 for an id not among them."""
    popular_ids = np.asarray(popular_ids, dtype=np.int64)
    order = np.argsort(popular_ids, kind="stable") if order is None else order
    sorted_ids = popular_ids[order]
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids))
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    found = sorted_ids[at] == ids
    return np.where(found, np.log1p(np.asarray(popular_counts, dtype=np.float64)[order][at]), 0.0)


def part_scores(parts: dict, part_names: list[str], q: Queries, c: Candidates) -> dict[str, np.ndarray]:
    """Each part's raw score of every candidate, for the parts that can give one (``candidate_scores``)."""
    return {n: parts[n].candidate_scores(q, c.rows, c.ids) for n in part_names
            if hasattr(parts[n], "candidate_scores")}
