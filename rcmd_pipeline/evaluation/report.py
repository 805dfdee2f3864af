"""Beyond HitRatio@k: ranking quality, diversity, uncertainty and significance of each strategy.

Plain Python (numpy, pandas and the standard library; no Dagster, no scipy). Every function takes
the arrays the strategies already produce:

- ``recommendations``: int64 array ``(n, k)``, one row per evaluation pair, best first, padded with
  :data:`~rcmd_pipeline.recommenders.base.PAD` (-1) when a strategy had fewer than k to offer;
- ``actual``: int64 array ``(n,)``, the movie watched next (the one relevant item of each pair);
- ``hits``: boolean array ``(n,)``, per pair whether ``actual`` is among the first k recommendations
  (:func:`rcmd_pipeline.evaluation.metrics.hits_at_k`);
- ``popularity``: movie id -> number of ratings in the training window (a pandas Series or a dict);
- ``catalog_size``: how many movies a strategy could have recommended;
- ``flags``: named boolean arrays ``(n,)`` splitting the pairs (e.g. ``in_series``, ``has_overview``).

Pads never count as a recommendation: they are never a hit, never covered, never popular.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np
import pandas as pd

from rcmd_pipeline.recommenders.base import PAD

__all__ = [
    "catalogue_coverage",
    "compare_to_best",
    "hit_ratio_by",
    "hit_ratio_interval",
    "leaderboard_markdown",
    "mcnemar_exact",
    "mean_popularity",
    "mrr_at_k",
    "ndcg_at_k",
    "strategy_report",
]

NAN = float("nan")


# --------------------------------------------------------------------------------------------- input checks

def _recs_and_actual(recommendations, actual, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k columns of ``recommendations`` and ``actual`` as int64, checked against each other."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    recs = np.asarray(recommendations)
    actual = np.asarray(actual)
    if actual.ndim != 1:
        raise ValueError(f"expected actual of shape (n,), got {actual.shape}")
    if recs.ndim != 2 or recs.shape[0] != len(actual):
        raise ValueError(f"expected recommendations of shape ({len(actual)}, k), got {recs.shape}")
    if len(actual) == 0:
        raise ValueError("a metric of an empty evaluation set is undefined")
    return recs[:, :k].astype(np.int64, copy=False), actual.astype(np.int64, copy=False)


def _bools(values, name: str, n: int | None = None) -> np.ndarray:
    """``values`` as a 1-D boolean array; 0/1 integers are accepted, anything else is an error."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} values, expected {n} (one per evaluation pair)")
    if arr.dtype != bool:
        if len(arr) and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got values such as {arr[~np.isin(arr, (0, 1))][:3]}")
        arr = arr.astype(bool)
    return arr


def _hit_ranks(recs: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per pair the 1-based rank of the next movie among ``recs``, 0 where it is absent.

    Only the first occurrence counts (a strategy repeating an id gains nothing); a pad never matches.
    """
    match = (recs == actual[:, None]) & (recs != PAD)
    return np.where(match.any(axis=1), match.argmax(axis=1) + 1, 0)


# ------------------------------------------------------------------------------------------------- metrics

def hit_ratio_interval(hits: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for the share of hits, at the given two-sided confidence.

    Why Wilson and not the normal ("Wald") interval p ± z·sqrt(p(1-p)/n): the hit ratios here are
    small (the study's 32M figures are 0.00-0.07 on n = 3,000 pairs), and near 0 the Wald interval
    is both too narrow (its coverage drops well below the nominal 95%) and can reach below 0 —
    for p = 0 it is the degenerate [0, 0], claiming certainty from zero hits. Wilson's interval
    inverts the score test instead: it stays within [0, 1], is asymmetric around p as it should be
    near a bound, has close to nominal coverage even for n·p of a few units, and for 0 hits still
    gives a useful upper bound (about 3.84 / (n + 3.84) at 95%). For n·p large the two coincide.

    With z the normal quantile of (1 + confidence) / 2 and p = hits / n::

        centre = (p + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/(4n²))

    Returns ``(centre - half, centre + half)`` (exactly 0 / 1 at p = 0 / 1, clipped to [0, 1]
    against rounding); ``(nan, nan)`` when there are no pairs.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    hits = _bools(hits, "hits")
    n = len(hits)
    if n == 0:
        return NAN, NAN
    successes = int(hits.sum())
    p = successes / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # exactly 0 with no hit and 1 with all hits (the formula gives them up to rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def ndcg_at_k(recommendations: np.ndarray, actual: np.ndarray, k: int = 10) -> float:
    """NDCG@k with one relevant item per pair, averaged over pairs.

    The ideal ranking puts the next movie first (ideal DCG = 1/log2(2) = 1), so a pair scores
    1/log2(rank + 1) with rank the 1-based position of the next movie among the first k
    recommendations, and 0 when it is not there. A hit at rank 1 scores 1, at rank 3 scores 0.5.
    """
    recs, actual = _recs_and_actual(recommendations, actual, k)
    ranks = _hit_ranks(recs, actual)
    gains = np.zeros(len(ranks), dtype=np.float64)
    found = ranks > 0
    gains[found] = 1.0 / np.log2(ranks[found] + 1.0)
    return float(gains.mean())


def mrr_at_k(recommendations: np.ndarray, actual: np.ndarray, k: int = 10) -> float:
    """MRR@k: mean over pairs of 1/rank of the next movie within the first k, 0 when absent."""
    recs, actual = _recs_and_actual(recommendations, actual, k)
    ranks = _hit_ranks(recs, actual)
    reciprocal = np.zeros(len(ranks), dtype=np.float64)
    found = ranks > 0
    reciprocal[found] = 1.0 / ranks[found]
    return float(reciprocal.mean())


def catalogue_coverage(recommendations: np.ndarray, catalog_size: int, k: int = 10) -> float:
    """Share of the catalogue that appears at least once among the first k picks of any row.

    Distinct non-pad ids over ``catalog_size``. Ids outside the catalogue are not filtered out (the
    function does not know the catalogue, only its size), so a strategy recommending unknown ids can
    exceed 1; the recommenders here draw only from the catalogue.
    """
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    recs = np.asarray(recommendations)
    if recs.ndim != 2:
        raise ValueError(f"expected recommendations of shape (n, k), got {recs.shape}")
    picked = recs[:, :k].ravel()
    return float(len(np.unique(picked[picked != PAD]))) / catalog_size


def mean_popularity(recommendations: np.ndarray, popularity, k: int = 10) -> float:
    """Mean training-window rating count of the recommended movies (popularity bias).

    Averaged over recommendation slots: every non-pad id among the first k of every row counts once
    per time it is recommended, so a strategy that keeps recommending blockbusters scores high. Ids
    missing from ``popularity`` (never rated in the training window), and missing/NaN counts, count
    0. ``nan`` when there is no non-pad recommendation at all.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    recs = np.asarray(recommendations)
    if recs.ndim != 2:
        raise ValueError(f"expected recommendations of shape (n, k), got {recs.shape}")
    picked = recs[:, :k].ravel().astype(np.int64, copy=False)
    picked = picked[picked != PAD]
    if len(picked) == 0:
        return NAN
    ids, times = np.unique(picked, return_counts=True)
    if isinstance(popularity, pd.Series):
        counts = pd.to_numeric(popularity.reindex(ids), errors="coerce").fillna(0.0).to_numpy(np.float64)
    elif isinstance(popularity, Mapping):
        counts = np.array([_count(popularity.get(int(i), 0)) for i in ids], dtype=np.float64)
    else:
        raise TypeError(f"popularity must be a pandas Series or a mapping, got {type(popularity).__name__}")
    return float((counts * times).sum() / times.sum())


def _count(value) -> float:
    value = float(value) if value is not None else 0.0
    return 0.0 if math.isnan(value) else value


def hit_ratio_by(hits: np.ndarray, flags: Mapping[str, np.ndarray],
                 confidence: float = 0.95) -> dict[str, dict]:
    """Hit ratio within each side of each named boolean split of the pairs.

    Returns ``{flag: {True: part, False: part}}`` where ``part`` is
    ``{"hit_ratio": float, "n": int, "low": float, "high": float}`` (the Wilson interval at
    ``confidence``); an empty side has ``n == 0`` and ``nan`` for the other three.
    """
    hits = _bools(hits, "hits")
    out: dict[str, dict] = {}
    for name, flag in flags.items():
        flag = _bools(flag, f"flag {name!r}", len(hits))
        out[name] = {side: _part(hits[flag == side], confidence) for side in (True, False)}
    return out


def _part(hits: np.ndarray, confidence: float) -> dict:
    low, high = hit_ratio_interval(hits, confidence)
    return {"hit_ratio": float(hits.mean()) if len(hits) else NAN, "n": int(len(hits)), "low": low, "high": high}


def mcnemar_exact(hits_a: np.ndarray, hits_b: np.ndarray) -> dict:
    """Exact two-sided McNemar test of two strategies scored on the same pairs.

    Only discordant pairs carry information: ``b`` = pairs A hit and B missed, ``c`` = pairs A
    missed and B hit. Under the null hypothesis (equal hit ratios) each discordant pair is a fair
    coin, so with X ~ Binomial(b + c, 1/2)::

        p = min(1, 2 · P(X <= min(b, c))) = min(1, 2 · sum_{i <= min(b,c)} C(b+c, i) / 2^(b+c))

    computed exactly in Python integers (no overflow for any b + c; a p-value below the smallest
    float rounds to 0.0). ``p_value`` is 1.0 when there is no discordant pair.
    Returns ``{"b": int, "c": int, "p_value": float}``.
    """
    a = _bools(hits_a, "hits_a")
    other = _bools(hits_b, "hits_b", len(a))
    b = int((a & ~other).sum())
    c = int((~a & other).sum())
    return {"b": b, "c": c, "p_value": _exact_binomial_two_sided(b, c)}


def _exact_binomial_two_sided(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = 0
    term = 1  # C(n, 0)
    for i in range(min(b, c) + 1):
        tail += term
        term = term * (n - i) // (i + 1)  # C(n, i + 1), exact
    # int / int is correctly rounded for arbitrarily large ints; the ratio is <= 1, so it cannot overflow
    return min(1.0, (2 * tail) / (1 << n))


# ------------------------------------------------------------------------------------------------- reports

def strategy_report(name: str, recommendations: np.ndarray, actual: np.ndarray, hits: np.ndarray | None = None,
                    *, k: int = 10, popularity, catalog_size: int,
                    flags: Mapping[str, np.ndarray] | None = None) -> dict:
    """Every metric of one strategy as one flat dict of plain ints, floats and the name.

    Keys: ``strategy, k, n, hit_ratio, hit_ratio_low, hit_ratio_high`` (95% Wilson interval),
    ``ndcg, mrr, coverage, mean_popularity``, and for each flag ``hit_ratio_<flag>,
    hit_ratio_not_<flag>, n_<flag>, n_not_<flag>``. ``hits`` defaults to HitRatio@k's per-pair
    hits computed from ``recommendations`` (as :func:`~rcmd_pipeline.evaluation.metrics.hits_at_k`,
    a pad never matching); pass the strategy's own to avoid recomputing them.
    """
    recs, actual = _recs_and_actual(recommendations, actual, k)
    hits = _hit_ranks(recs, actual) > 0 if hits is None else _bools(hits, "hits", len(actual))
    low, high = hit_ratio_interval(hits)
    report = {
        "strategy": str(name),
        "k": int(k),
        "n": int(len(actual)),
        "hit_ratio": float(hits.mean()),
        "hit_ratio_low": low,
        "hit_ratio_high": high,
        "ndcg": ndcg_at_k(recs, actual, k),
        "mrr": mrr_at_k(recs, actual, k),
        "coverage": catalogue_coverage(recs, catalog_size, k),
        "mean_popularity": mean_popularity(recs, popularity, k),
    }
    for flag, sides in hit_ratio_by(hits, flags or {}).items():
        report[f"hit_ratio_{flag}"] = sides[True]["hit_ratio"]
        report[f"hit_ratio_not_{flag}"] = sides[False]["hit_ratio"]
        report[f"n_{flag}"] = sides[True]["n"]
        report[f"n_not_{flag}"] = sides[False]["n"]
    return report


def compare_to_best(reports: list[dict], hits: Mapping[str, np.ndarray],
                    baseline: str | None = "random") -> pd.DataFrame:
    """The strategies side by side, best first, each tested against the best.

    One row per report (its columns unchanged) plus:

    - ``gain_over_random``: hit_ratio minus the ``baseline`` strategy's hit ratio;
    - ``relative_gain``: hit_ratio / the baseline's (``nan`` when the baseline's is 0);
    - ``best``: True for the first row only;
    - ``mcnemar_b``, ``mcnemar_c``, ``p_value_vs_best``: :func:`mcnemar_exact` of the best (as A)
      against this strategy (as B) — b = pairs only the best hit, c = pairs only this one hit;
      missing (``<NA>``/``nan``) on the best's own row.

    Rows are sorted by hit_ratio, then ndcg, both descending (then by name, so ties are
    deterministic). ``hits`` maps each strategy name to its per-pair hits on the same pairs. The
    baseline must be one of the strategies (KeyError otherwise); ``baseline=None`` leaves both gain
    columns ``nan``.
    """
    if not reports:
        raise ValueError("no strategy to compare")
    frame = pd.DataFrame(list(reports))
    names = frame["strategy"].tolist()
    if len(set(names)) != len(names):
        raise ValueError(f"strategy names must be unique, got {names}")
    missing = [s for s in names if s not in hits]
    if missing:
        raise KeyError(f"no per-pair hits for {missing}")
    frame = frame.sort_values(["hit_ratio", "ndcg", "strategy"], ascending=[False, False, True],
                              kind="mergesort").reset_index(drop=True)

    if baseline is None:
        frame["gain_over_random"] = NAN
        frame["relative_gain"] = NAN
    else:
        if baseline not in names:
            raise KeyError(f"baseline strategy {baseline!r} is not among {names}")
        base = float(frame.loc[frame["strategy"] == baseline, "hit_ratio"].iloc[0])
        frame["gain_over_random"] = frame["hit_ratio"].astype(float) - base
        frame["relative_gain"] = frame["hit_ratio"].astype(float) / base if base > 0 else NAN

    best_name = frame["strategy"].iloc[0]
    best_hits = _bools(hits[best_name], f"hits of {best_name!r}")
    frame["best"] = frame["strategy"] == best_name
    tests = [None if s == best_name else mcnemar_exact(best_hits, _bools(hits[s], f"hits of {s!r}", len(best_hits)))
             for s in frame["strategy"]]
    frame["mcnemar_b"] = pd.array([pd.NA if t is None else t["b"] for t in tests], dtype="Int64")
    frame["mcnemar_c"] = pd.array([pd.NA if t is None else t["c"] for t in tests], dtype="Int64")
    frame["p_value_vs_best"] = [NAN if t is None else t["p_value"] for t in tests]
    return frame


# ------------------------------------------------------------------------------------------------ markdown

BAR_WIDTH = 30


def leaderboard_markdown(frame: pd.DataFrame, width: int = BAR_WIDTH) -> str:
    """The :func:`compare_to_best` frame as a Markdown table for the Dagster UI, best first.

    Columns: strategy (the best in bold), HitRatio@k with its 95% interval, a bar, NDCG@k, MRR@k,
    coverage, mean popularity, gain over the baseline (with the ratio), p-value against the best,
    n, queries/s and the study's figure (the last two "—" when the frame has no such column).
    The bar is drawn in monospace on a common scale (the largest upper bound fills ``width``
    cells): ``█`` up to the interval's lower bound, ``▓`` on to the point estimate, ``░`` on to the
    upper bound, closed by ``┤``; overlapping ▓░ stretches of two strategies mean their intervals
    overlap. A legend line follows the table.
    """
    ks = sorted({int(k) for k in frame["k"]}) if "k" in frame else []
    at = f"@{ks[0]}" if len(ks) == 1 else "@k"
    finite_highs = [float(h) for h in frame["hit_ratio_high"] if _finite(h)]
    top = max(finite_highs, default=0.0)
    lines = [
        f"| strategy | HitRatio{at} [95% CI] | | NDCG{at} | MRR{at} | coverage | mean popularity "
        "| gain over random | p vs best | n | queries/s | study (ML-32M) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in frame.to_dict("records"):
        name = str(row["strategy"]).replace("|", "\\|")
        if bool(row.get("best", False)):
            name = f"**{name}**"
        interval = f"{_num(row['hit_ratio'])} [{_num(row['hit_ratio_low'])}, {_num(row['hit_ratio_high'])}]"
        bar = _bar(row["hit_ratio_low"], row["hit_ratio"], row["hit_ratio_high"], top, width)
        lines.append(
            f"| {name} | {interval} | {'`' + bar + '`' if bar else ''} | {_num(row['ndcg'])} | {_num(row['mrr'])} "
            f"| {_percent(row['coverage'])} | {_popularity(row['mean_popularity'])} "
            f"| {_gain(row.get('gain_over_random'), row.get('relative_gain'))} "
            f"| {_p_value(row.get('p_value_vs_best'), bool(row.get('best', False)))} "
            f"| {row['n']} | {_rate(row.get('queries_per_second'))} | {_num(row.get('study_hit_ratio'))} |"
        )
    lines += ["", "Bar: █ to the 95% interval's lower bound, ▓ to the hit ratio, ░ to the upper bound ┤. "
              "p vs best: exact McNemar test against the best strategy on the same pairs."]
    return "\n".join(lines)


def _rate(value) -> str:
    return f"{float(value):,.0f}" if _finite(value) else "—"


def _finite(value) -> bool:
    try:
        return value is not None and value is not pd.NA and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _num(value, digits: int = 4) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "—"


def _percent(value) -> str:
    return f"{100 * float(value):.1f}%" if _finite(value) else "—"


def _popularity(value) -> str:
    return f"{float(value):,.1f}" if _finite(value) else "—"


def _gain(gain, relative) -> str:
    if not _finite(gain):
        return "—"
    text = f"{float(gain):+.4f}"
    return f"{text} (×{float(relative):.2f})" if _finite(relative) else text


def _p_value(p, best: bool) -> str:
    if best or not _finite(p):
        return "—"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def _bar(low, point, high, top: float, width: int) -> str:
    if not (_finite(low) and _finite(point) and _finite(high)) or top <= 0:
        return ""
    scale = width / top
    low_cells = round(float(low) * scale)
    point_cells = max(low_cells, round(float(point) * scale))
    high_cells = max(point_cells, round(float(high) * scale))
    return "█" * low_cells + "▓" * (point_cells - low_cells) + "░" * (high_cells - point_cells) + "┤"
