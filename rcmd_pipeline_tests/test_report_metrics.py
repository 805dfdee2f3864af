"""The strategy report metrics, each against a case worked out by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcmd_pipeline.evaluation.report import (
    catalogue_coverage,
    compare_to_best,
    hit_ratio_by,
    hit_ratio_interval,
    leaderboard_markdown,
    mcnemar_exact,
    mean_popularity,
    mrr_at_k,
    ndcg_at_k,
    strategy_report,
)

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def _hits(n_hit: int, n: int) -> np.ndarray:
    return np.arange(n) < n_hit


# ------------------------------------------------------------------------------------------ Wilson interval

def test_wilson_interval_of_6_hits_in_100():
    # z = 1.959963984540054, z² = 3.841458820694124, p = 0.06, n = 100
    # denominator = 1 + z²/n = 1.0384145882069412
    # centre = (p + z²/(2n)) / denominator = (0.06 + 0.01920729410347062) / 1.0384145882069412 = 0.0762771392
    # half = z / denominator · sqrt(p(1-p)/n + z²/(4n²))
    #      = 1.959963984540054 / 1.0384145882069412 · sqrt(0.000564 + 0.0000960364705173531)
    #      = 1.8874572 · 0.0256911749 = 0.0484910152
    # interval = (0.0762771392 - 0.0484910152, 0.0762771392 + 0.0484910152) = (0.0277861240, 0.1247681545)
    # (the published Wilson 95% interval for 6/100 is 0.0278 to 0.1248)
    low, high = hit_ratio_interval(_hits(6, 100))
    assert low == pytest.approx(0.0277861240, abs=1e-9)
    assert high == pytest.approx(0.1247681545, abs=1e-9)


def test_wilson_interval_at_the_bounds_empty_and_other_confidences():
    # 0 hits of n: centre = half = (z²/(2n)) / (1 + z²/n), so low = 0 and high = z² / (n + z²)
    low, high = hit_ratio_interval(_hits(0, 2))
    assert low == 0.0
    assert high == pytest.approx(Z95**2 / (2 + Z95**2))  # 3.8414588 / 5.8414588 = 0.6576198
    assert high == pytest.approx(0.6576198, abs=1e-7)
    # n of n: the mirror image
    low, high = hit_ratio_interval(_hits(2, 2))
    assert low == pytest.approx(1 - 0.6576198, abs=1e-7) and high == 1.0
    # 0/1 integers are accepted as hits
    assert hit_ratio_interval(np.array([1, 0, 0, 0])) == hit_ratio_interval(_hits(1, 4))
    assert all(math.isnan(x) for x in hit_ratio_interval(np.array([], dtype=bool)))
    narrow, wide = hit_ratio_interval(_hits(6, 100), 0.90), hit_ratio_interval(_hits(6, 100), 0.99)
    assert wide[0] < narrow[0] < 0.06 < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        hit_ratio_interval(_hits(6, 100), 1.0)
    with pytest.raises(ValueError):
        hit_ratio_interval(np.array([0, 2, 1]))


@given(st.integers(0, 3000), st.integers(1, 3000))
def test_wilson_interval_holds_the_share_and_stays_within_0_and_1(k, n):
    k = min(k, n)
    low, high = hit_ratio_interval(_hits(k, n))
    assert 0.0 <= low <= k / n <= high <= 1.0


# ------------------------------------------------------------------------------------------ ranking metrics

# pair 0: next movie 5 at rank 1; pair 1: next movie 3 at rank 3; pair 2: next movie 8 absent (row padded)
RECS = np.array([[5, 7, 9], [1, 2, 3], [4, -1, -1]], dtype=np.int64)
ACTUAL = np.array([5, 3, 8], dtype=np.int64)


def test_ndcg_and_mrr_on_three_pairs():
    # NDCG: 1/log2(1+1) = 1, 1/log2(3+1) = 1/2, 0  -> (1 + 0.5 + 0) / 3 = 0.5
    assert ndcg_at_k(RECS, ACTUAL, k=3) == pytest.approx(0.5)
    # MRR: 1/1, 1/3, 0 -> (1 + 1/3) / 3 = 4/9
    assert mrr_at_k(RECS, ACTUAL, k=3) == pytest.approx(4 / 9)
    # k = 2 cuts pair 1's hit at rank 3: NDCG (1 + 0 + 0) / 3, MRR the same
    assert ndcg_at_k(RECS, ACTUAL, k=2) == pytest.approx(1 / 3)
    assert mrr_at_k(RECS, ACTUAL, k=2) == pytest.approx(1 / 3)
    # k beyond the row width is the whole row
    assert ndcg_at_k(RECS, ACTUAL, k=10) == pytest.approx(0.5)


def test_rank_two_first_occurrence_and_pads_never_match():
    recs = np.array([[9, 3, 3], [-1, -1, -1]])
    actual = np.array([3, -1])
    # pair 0: first occurrence of 3 at rank 2 -> NDCG 1/log2(3) = 0.6309297535714575, MRR 1/2
    # pair 1: the "next movie" -1 meets only pads, which never count -> 0
    assert ndcg_at_k(recs, actual, k=3) == pytest.approx(0.6309297535714575 / 2)
    assert mrr_at_k(recs, actual, k=3) == pytest.approx(0.25)


def test_metrics_reject_mismatched_or_empty_inputs():
    with pytest.raises(ValueError):
        ndcg_at_k(RECS, ACTUAL[:2])
    with pytest.raises(ValueError):
        mrr_at_k(RECS[0], ACTUAL)
    with pytest.raises(ValueError):
        mrr_at_k(np.empty((0, 3), np.int64), np.empty(0, np.int64))
    with pytest.raises(ValueError):
        ndcg_at_k(RECS, ACTUAL, k=0)


# ------------------------------------------------------------------------------------- coverage, popularity

def test_catalogue_coverage_counts_distinct_non_pad_ids():
    recs = np.array([[1, 2, 3], [2, 3, 4], [5, -1, -1]])
    # k = 3: {1, 2, 3, 4, 5} -> 5 / 10
    assert catalogue_coverage(recs, 10, k=3) == pytest.approx(0.5)
    # k = 1: {1, 2, 5} -> 3 / 10
    assert catalogue_coverage(recs, 10, k=1) == pytest.approx(0.3)
    assert catalogue_coverage(np.full((2, 3), -1), 10, k=3) == 0.0
    with pytest.raises(ValueError):
        catalogue_coverage(recs, 0)


def test_mean_popularity_with_unknown_ids_and_pads():
    recs = np.array([[1, 2, -1], [1, 99, -1]])
    popularity = {1: 100, 2: 50}
    # slots 1, 2, 1, 99 (pads dropped; 99 unknown -> 0): (100 + 50 + 100 + 0) / 4 = 62.5
    assert mean_popularity(recs, popularity, k=3) == pytest.approx(62.5)
    assert mean_popularity(recs, pd.Series(popularity), k=3) == pytest.approx(62.5)
    # a Series with a NaN count, as a left join leaves it, counts 0 too: (100 + 0 + 100 + 0) / 4 = 50
    assert mean_popularity(recs, pd.Series({1: 100.0, 2: np.nan}), k=3) == pytest.approx(50.0)
    # k = 1: slots 1, 1 -> 100
    assert mean_popularity(recs, popularity, k=1) == pytest.approx(100.0)
    assert math.isnan(mean_popularity(np.full((2, 3), -1), popularity))
    with pytest.raises(TypeError):
        mean_popularity(recs, [100, 50])


# ------------------------------------------------------------------------------------------------- splits

def test_hit_ratio_by_splits_including_an_empty_group():
    hits = np.array([True, False, True, False, False])
    flags = {"in_series": np.array([True, True, True, False, False]), "has_overview": np.ones(5, bool)}
    split = hit_ratio_by(hits, flags)
    # in_series: True side pairs 0-2 -> 2 hits / 3; False side pairs 3-4 -> 0 / 2
    assert split["in_series"][True]["hit_ratio"] == pytest.approx(2 / 3)
    assert split["in_series"][True]["n"] == 3
    assert (split["in_series"][True]["low"], split["in_series"][True]["high"]) == hit_ratio_interval(_hits(2, 3))
    assert split["in_series"][False] == {"hit_ratio": 0.0, "n": 2, "low": 0.0,
                                         "high": pytest.approx(0.6576198, abs=1e-7)}  # z²/(2+z²)
    # has_overview: every pair True -> 2 / 5; the False side is empty
    assert split["has_overview"][True]["hit_ratio"] == pytest.approx(0.4)
    empty = split["has_overview"][False]
    assert empty["n"] == 0 and all(math.isnan(empty[key]) for key in ("hit_ratio", "low", "high"))
    with pytest.raises(ValueError):
        hit_ratio_by(hits, {"short": np.ones(4, bool)})


# ------------------------------------------------------------------------------------------------ McNemar

def test_mcnemar_exact_on_b_10_c_2():
    # 10 pairs only A hit, 2 only B hit, 5 both, 3 neither
    a = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    # p = 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · (1 + 12 + 66) / 4096 = 158 / 4096 = 0.03857421875
    assert mcnemar_exact(a, b) == {"b": 10, "c": 2, "p_value": pytest.approx(0.03857421875, rel=1e-12)}
    # symmetric: swapping the strategies swaps b and c only
    assert mcnemar_exact(b, a) == {"b": 2, "c": 10, "p_value": pytest.approx(0.03857421875, rel=1e-12)}


def test_mcnemar_without_discordant_pairs_or_with_equal_counts_is_1():
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same) == {"b": 0, "c": 0, "p_value": 1.0}
    # b = c = 5: 2 · P(X <= 5), X ~ Bin(10, 1/2) = 2 · 638/1024 > 1 -> clipped to 1
    assert mcnemar_exact(_hits(5, 10), ~_hits(5, 10))["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(same, same[:2])


def _discordant(b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(b, bool), np.zeros(c, bool)], np.r_[np.zeros(b, bool), np.ones(c, bool)]


def _log_space_p(b: int, c: int) -> float:
    """An independent computation: log C(n,i) by lgamma, summed with log-sum-exp."""
    n = b + c
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(min(b, c) + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(x - top) for x in logs))


def test_mcnemar_with_thousands_of_discordant_pairs_does_not_overflow():
    # b + c = 3000 (every pair discordant on the study's 3,000): 2^3000 is far beyond a float
    result = mcnemar_exact(*_discordant(1600, 1400))
    assert (result["b"], result["c"]) == (1600, 1400)
    assert result["p_value"] == pytest.approx(_log_space_p(1600, 1400), rel=1e-9)
    # sanity against the continuity-corrected chi-square: (|1600-1400| - 1)² / 3000 = 13.2 -> p ≈ 0.00028
    assert 0.0002 < result["p_value"] < 0.0004
    assert mcnemar_exact(*_discordant(1500, 1500))["p_value"] == 1.0
    assert mcnemar_exact(*_discordant(6000, 4000))["p_value"] == pytest.approx(_log_space_p(6000, 4000), rel=1e-6)
    # 2 / 2^10000 is below the smallest float: 0.0, not an OverflowError
    assert mcnemar_exact(*_discordant(10000, 0))["p_value"] == 0.0


# ------------------------------------------------------------------------------------------------ reports

def test_strategy_report_is_flat_and_holds_every_metric():
    flags = {"in_series": np.array([True, False, False])}
    report = strategy_report("vector", RECS, ACTUAL, k=3, popularity={5: 30, 7: 10, 1: 4}, catalog_size=20,
                             flags=flags)
    assert list(report) == ["strategy", "k", "n", "hit_ratio", "hit_ratio_low", "hit_ratio_high", "ndcg", "mrr",
                            "coverage", "mean_popularity", "hit_ratio_in_series", "hit_ratio_not_in_series",
                            "n_in_series", "n_not_in_series"]
    assert report["strategy"] == "vector" and report["k"] == 3 and report["n"] == 3
    assert report["hit_ratio"] == pytest.approx(2 / 3)  # pairs 0 and 1 hit
    assert (report["hit_ratio_low"], report["hit_ratio_high"]) == hit_ratio_interval(_hits(2, 3))
    assert report["ndcg"] == pytest.approx(0.5) and report["mrr"] == pytest.approx(4 / 9)
    # ids 5 7 9 1 2 3 4 -> 7 / 20
    assert report["coverage"] == pytest.approx(0.35)
    # 7 slots: 30 + 10 + 0 + 4 + 0 + 0 + 0 = 44 -> 44 / 7
    assert report["mean_popularity"] == pytest.approx(44 / 7)
    # in_series: pair 0 (hit) -> 1/1; not: pairs 1 (hit), 2 (miss) -> 1/2
    assert report["hit_ratio_in_series"] == 1.0 and report["n_in_series"] == 1
    assert report["hit_ratio_not_in_series"] == 0.5 and report["n_not_in_series"] == 2
    assert all(type(v) in (str, int, float) for v in report.values())
    # passing the hits gives the same report; without flags there are no split keys
    same = strategy_report("vector", RECS, ACTUAL, np.array([True, True, False]), k=3,
                           popularity={5: 30, 7: 10, 1: 4}, catalog_size=20, flags=flags)
    assert same == report
    bare = strategy_report("vector", RECS, ACTUAL, k=3, popularity={}, catalog_size=20, flags={})
    assert list(bare)[-1] == "mean_popularity" and bare["mean_popularity"] == 0.0


N = 20
NEXT = np.arange(1, N + 1, dtype=np.int64)  # the next movie of pair i is i + 1


def _strategy(hit_rows, rank: int) -> np.ndarray:
    """k = 3 recommendations of misses (ids 101+), with the next movie at ``rank`` on ``hit_rows``."""
    recs = np.tile(np.array([101, 102, 103], dtype=np.int64), (N, 1))
    recs[list(hit_rows), rank - 1] = NEXT[list(hit_rows)]
    return recs


STRATEGIES = {
    "random": _strategy([], 1),                  # 0 hits
    "series": _strategy(range(0, 6), 1),         # pairs 0-5 at rank 1: HitRatio 0.3, NDCG 0.3
    "series_vector": _strategy(range(9, 15), 2),  # pairs 9-14 at rank 2: HitRatio 0.3, NDCG 6·0.6309/20 = 0.1893
    "vector": _strategy(range(0, 12), 1),        # pairs 0-11 at rank 1: HitRatio 0.6, NDCG 0.6
}


def _compare(baseline="random"):
    reports, hits = [], {}
    for name, recs in STRATEGIES.items():
        hits[name] = (recs == NEXT[:, None]).any(axis=1)
        reports.append(strategy_report(name, recs, NEXT, hits[name], k=3, popularity={101: 7}, catalog_size=200,
                                       flags={"in_series": NEXT <= 10}))
    return compare_to_best(reports, hits, baseline=baseline)


def test_compare_to_best_orders_by_hit_ratio_then_ndcg_and_tests_against_the_best():
    frame = _compare()
    # series and series_vector tie at 0.3: series first by its higher NDCG (0.3 > 0.1893)
    assert frame["strategy"].tolist() == ["vector", "series", "series_vector", "random"]
    assert frame["best"].tolist() == [True, False, False, False]
    assert frame["hit_ratio"].tolist() == pytest.approx([0.6, 0.3, 0.3, 0.0])
    assert frame.loc[2, "ndcg"] == pytest.approx(6 * 0.6309297535714575 / 20)
    # gain over random (0 hits): the hit ratio itself; the ratio to 0 is undefined
    assert frame["gain_over_random"].tolist() == pytest.approx([0.6, 0.3, 0.3, 0.0])
    assert frame["relative_gain"].isna().all()
    # vector vs series: b = pairs 6-11 (only vector) = 6, c = 0 -> p = 2 · C(6,0) / 2^6 = 2/64 = 0.03125
    # vector vs series_vector: b = pairs 0-8 = 9, c = pairs 12-14 = 3
    #   -> p = 2 · (C(12,0) + C(12,1) + C(12,2) + C(12,3)) / 2^12 = 2 · (1 + 12 + 66 + 220) / 4096 = 598/4096
    # vector vs random: b = 12, c = 0 -> p = 2 / 2^12 = 0.00048828125
    assert frame["mcnemar_b"].tolist()[1:] == [6, 9, 12]
    assert frame["mcnemar_c"].tolist()[1:] == [0, 3, 0]
    assert frame["mcnemar_b"].isna().tolist() == [True, False, False, False]
    assert frame["p_value_vs_best"].tolist()[1:] == pytest.approx([0.03125, 598 / 4096, 0.00048828125])
    assert math.isnan(frame.loc[0, "p_value_vs_best"])
    # the report columns come through untouched
    assert {"hit_ratio_low", "mrr", "coverage", "mean_popularity", "n_in_series", "hit_ratio_not_in_series"} \
        <= set(frame.columns)


def test_compare_to_best_relative_gain_and_its_baseline_checks():
    frame = _compare(baseline="series").set_index("strategy")
    # vector: 0.6 - 0.3 = 0.3, 0.6 / 0.3 = 2; random: 0 - 0.3, 0 / 0.3 = 0
    assert frame.loc["vector", "gain_over_random"] == pytest.approx(0.3)
    assert frame.loc["vector", "relative_gain"] == pytest.approx(2.0)
    assert frame.loc["series", "relative_gain"] == pytest.approx(1.0)
    assert frame.loc["random", "relative_gain"] == 0.0
    assert _compare(baseline=None)["gain_over_random"].isna().all()
    with pytest.raises(KeyError):
        _compare(baseline="popular")
    with pytest.raises(KeyError):
        compare_to_best([{"strategy": "x", "hit_ratio": 0.1, "ndcg": 0.1}], {}, baseline=None)


def test_leaderboard_markdown_shows_every_strategy_with_interval_bar_and_p_values():
    frame = _compare()
    text = leaderboard_markdown(frame)
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| strategy")]
    assert len(rows) == 4
    assert lines[0].startswith("| strategy | HitRatio@3 [95% CI]")
    for name, row in zip(["vector", "series", "series_vector", "random"], rows, strict=True):
        assert f"| {name} |" in row or f"| **{name}** |" in row
    vector, series, series_vector, random = rows
    assert vector.startswith("| **vector** |")  # the best in bold
    low, high = hit_ratio_interval(_hits(12, 20))
    assert f"0.6000 [{low:.4f}, {high:.4f}]" in vector
    def p_cell(line: str) -> str:  # the p column, before n, queries/s and study
        return line.split("|")[-5].strip()

    assert p_cell(vector) == "—"  # no p-value against itself
    assert p_cell(series) == "0.031"  # 0.03125
    assert p_cell(series_vector) == "0.146"  # 598/4096 = 0.14599609375
    assert p_cell(random) == "<0.001"  # 0.00048828125
    assert series.rstrip().endswith("| 20 | — | — |")  # n, then no queries/s or study column given
    assert "+0.6000" in vector and "+0.0000" in random
    # bars: the best's upper bound fills the width (30 cells + the ┤ marker); 0 hits has no solid part
    bar = vector.split("`")[1]
    assert len(bar) == 31 and bar.endswith("┤") and bar.startswith("█")
    assert random.split("`")[1].startswith(("░", "┤"))
    assert "█" in text and "┤" in text
