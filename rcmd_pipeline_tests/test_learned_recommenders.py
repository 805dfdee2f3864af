"""Learned strategies (popularity, next movie, hybrid) and the leakage guard of their training data."""

from __future__ import annotations

import time
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rcmd_pipeline.evaluation import InsufficientDataError, TransitionSettings, build_eval_transitions
from rcmd_pipeline.recommenders import PAD, Recommender, ratings
from rcmd_pipeline.recommenders.hybrid import HybridRecommender
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender, transition_pairs
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window

EVAL_KEY = ["userId", "prev_movieId", "movieId", "timestamp"]


def columns(rows):
    """(users, movies, times) arrays of (user, movie, time) tuples."""
    frame = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"], dtype="int64")
    return frame.userId.to_numpy(), frame.movieId.to_numpy(), frame.timestamp.to_numpy()


def assert_well_formed(out: np.ndarray, prev, k: int) -> None:
    """int64 (n, k), each row's real picks first and distinct, PAD only at the end."""
    assert out.dtype == np.int64 and out.shape == (len(prev), k)
    for row in out.tolist():
        real = [x for x in row if x != PAD]
        assert row[:len(real)] == real and len(set(real)) == len(real)


class Fixed:
    """A test input: a strategy with fixed ranked lists per previous movie (PAD after the list)."""

    def __init__(self, lists: dict[int, list[int]], name: str = "fixed") -> None:
        self.lists = lists
        self.name = name
        self.calls: list[tuple[list[int], int]] = []

    def recommend(self, prev_movie_ids, k):
        prev = np.asarray(prev_movie_ids, dtype=np.int64)
        self.calls.append((prev.tolist(), k))
        out = np.full((len(prev), k), PAD, dtype=np.int64)
        for i, p in enumerate(prev.tolist()):
            row = self.lists.get(p, [])[:k]
            out[i, :len(row)] = row
        return out


# ---------------------------------------------------------------------------- training window


def test_training_window_keeps_only_ratings_strictly_before_the_cutoff():
    users, movies, times = columns([(1, 10, 5), (2, 20, 9), (1, 30, 10), (3, 40, 11), (2, 50, 3)])
    u, m, t = training_window(users, movies, times, cutoff=10)
    assert u.tolist() == [1, 2, 2] and m.tolist() == [10, 20, 50] and t.tolist() == [5, 9, 3]
    assert all(a.dtype == np.int64 for a in (u, m, t))
    eval_pairs = pd.DataFrame({"userId": [1, 3], "prev_movieId": [10, 9], "movieId": [30, 40], "timestamp": [11, 10]})
    assert leakage_cutoff(eval_pairs) == 10
    with pytest.raises(ValueError, match="empty"):
        leakage_cutoff(eval_pairs.iloc[:0])
    with pytest.raises(ValueError, match="same length"):
        training_window(users, movies[:-1], times, 10)


# ---------------------------------------------------------------------------- popularity


def test_popularity_order_ties_by_id_and_self_exclusion():
    movies = np.array([5, 7, 7, 3, 3, 9, 9, 9, 1])  # 9:3, 3:2, 7:2, 1:1, 5:1
    rec = PopularityRecommender(movies)
    assert isinstance(rec, Recommender) and rec.name == "popularity"
    assert rec.ranked_ids.tolist() == [9, 3, 7, 1, 5]
    assert rec.popularity.to_dict() == {9: 3, 3: 2, 7: 2, 1: 1, 5: 1}
    out = rec.recommend(np.array([9, 3, 1, 42]), 3)
    assert out.tolist() == [[3, 7, 1], [9, 7, 1], [9, 3, 7], [9, 3, 7]]  # itself dropped, next one moves up
    assert_well_formed(out, [9, 3, 1, 42], 3)


def test_popularity_min_count_padding_and_empty_window():
    rec = PopularityRecommender(np.array([1, 1, 2, 2, 3]), min_count=2)
    assert rec.recommend(np.array([1, 5]), 3).tolist() == [[2, PAD, PAD], [1, 2, PAD]]
    assert rec.recommend(np.array([1]), 0).shape == (1, 0)
    empty = PopularityRecommender(np.array([], dtype=np.int64))
    assert empty.recommend(np.array([1, 2]), 2).tolist() == [[PAD, PAD], [PAD, PAD]]
    with pytest.raises(ValueError):
        PopularityRecommender(np.array([1]), min_count=0)


# ---------------------------------------------------------------------------- next movie

HAND_MADE = [
    (1, 10, 1), (1, 20, 2), (1, 30, 3),   # 10 -> 20 -> 30
    (2, 10, 1), (2, 20, 2), (2, 40, 3),   # 10 -> 20 -> 40
    (3, 10, 5), (3, 30, 6),               # 10 -> 30
    (4, 20, 1), (4, 30, 2),               # 20 -> 30
]


def test_next_movie_counts_consecutive_transitions_most_frequent_first():
    rec = NextMovieRecommender(*columns(HAND_MADE))
    assert isinstance(rec, Recommender) and rec.name == "next_movie"
    assert rec.next_movies(10) == [(20, 2.0), (30, 1.0)]
    assert rec.next_movies(20) == [(30, 2.0), (40, 1.0)]
    assert rec.next_movies(30) == [] and rec.next_movies(99) == []
    assert rec.pair_count == 6 and rec.distinct_pairs == 4 and rec.last_time == 6
    out = rec.recommend(np.array([10, 20, 30, 99]), 3)
    assert out.tolist() == [[20, 30, PAD], [30, 40, PAD], [PAD] * 3, [PAD] * 3]
    assert rec.recommend(np.array([10]), 1).tolist() == [[20]]


def test_next_movie_ties_by_popularity_then_movie_id():
    rows = [(1, 5, 1), (1, 7, 2), (2, 5, 1), (2, 6, 2), (3, 5, 1), (3, 8, 2), (4, 5, 1), (4, 9, 2),
            (5, 8, 1), (6, 8, 1), (7, 6, 3)]  # users 5-7 rate one movie: popularity only, no transition
    rec = NextMovieRecommender(*columns(rows))
    # all four follow 5 once; popularity 8:3, 6:2, 7:1, 9:1 -> 8, 6, then 7 before 9 by id
    assert [m for m, _ in rec.next_movies(5)] == [8, 6, 7, 9]


def test_next_movie_orders_same_second_ratings_by_movie_id_like_the_evaluation():
    rows = [(7, 5, 10), (7, 3, 10), (7, 4, 10)]  # order 3, 4, 5 (build_eval_transitions' order)
    rec = NextMovieRecommender(*columns(rows))
    assert rec.next_movies(3) == [(4, 1.0)] and rec.next_movies(4) == [(5, 1.0)] and rec.next_movies(5) == []
    pairs = build_eval_transitions(*columns(rows), TransitionSettings(min_movie_ratings=1, eval_size=2))
    counted = transition_pairs(*columns(rows)).to_frame()
    assert pairs[EVAL_KEY].to_numpy().tolist() == counted[EVAL_KEY].to_numpy().tolist()[::-1]


def test_next_movie_never_follows_itself():
    rec = NextMovieRecommender(*columns([(1, 4, 1), (1, 4, 2), (1, 6, 3)]), window=2)
    assert rec.next_movies(4) == [(6, 1.5)]  # 4 -> 4 is dropped; 6 follows at distance 1 and 2


def test_next_movie_fallback_fills_without_duplicates_self_or_pad():
    fallback = Fixed({10: [10, 20, 55, 20, 66, 77], 30: [PAD, 30, 88, 99], 99: [1, 2, 3, 4]})
    rec = NextMovieRecommender(*columns(HAND_MADE), fallback=fallback)
    out = rec.recommend(np.array([10, 30, 99, 20]), 4)
    # 10: its own 20, 30, then the fallback minus itself (10), the repeated 20 -> 55, 66
    assert out.tolist() == [[20, 30, 55, 66], [88, 99, PAD, PAD], [1, 2, 3, 4], [30, 40, PAD, PAD]]
    assert_well_formed(out, [10, 30, 99, 20], 4)
    # asked once, for the short rows only, k + 1 each
    assert fallback.calls == [([10, 30, 99, 20], 5)]


def test_next_movie_with_popularity_fallback_fills_every_row():
    users, movies, times = columns(HAND_MADE)
    rec = NextMovieRecommender(users, movies, times, fallback=PopularityRecommender(movies))
    out = rec.recommend(np.array([10, 30, 40]), 3)
    assert out.tolist() == [[20, 30, 40], [10, 20, 40], [10, 20, 30]]  # popularity: 10, 20, 30 (3 each), 40


def test_window_weights_one_over_distance_and_min_support():
    rows = [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (2, 1, 1), (2, 3, 2)]
    one = NextMovieRecommender(*columns(rows))
    assert one.next_movies(1) == [(3, 1.0), (2, 1.0)]  # tie: 3 is more popular (2 ratings)
    two = NextMovieRecommender(*columns(rows), window=2)
    assert two.next_movies(1) == [(3, 1.5), (2, 1.0)]
    three = NextMovieRecommender(*columns(rows), window=3)
    assert three.next_movies(1) == [(3, 1.5), (2, 1.0), (4, pytest.approx(1 / 3))]
    assert three.next_movies(2) == [(3, 1.0), (4, 0.5)]
    assert three.pair_count == 3 + 2 + 1 + 1
    # min_support counts occurrences: 1 -> 3 is seen twice (user 2 next, user 1 two later)
    strict = NextMovieRecommender(*columns(rows), window=3, min_support=2)
    assert strict.next_movies(1) == [(3, 1.5)] and strict.next_movies(2) == []
    assert NextMovieRecommender(*columns(rows), min_support=2).next_movies(1) == []
    for bad in ({"window": 0}, {"window": 11}, {"min_support": 0}, {"min_support": 1.5}):
        with pytest.raises(ValueError):
            NextMovieRecommender(*columns(rows), **bad)


def test_next_movie_on_empty_window_uses_only_the_fallback():
    empty = np.array([], dtype=np.int64)
    rec = NextMovieRecommender(empty, empty, empty, fallback=Fixed({1: [2, 3]}))
    assert rec.last_time is None and rec.pair_count == 0
    assert rec.recommend(np.array([1, 5]), 2).tolist() == [[2, 3], [PAD, PAD]]
    assert NextMovieRecommender(empty, empty, empty).recommend(np.array([1]), 2).tolist() == [[PAD, PAD]]


def reference_next_movies(rows, window: int, min_support: int = 1) -> dict[int, list[tuple[int, Fraction]]]:
    """Plain Python: per-user sequences by (time, movie), weight 1/d, kept when seen ``min_support``
    times, ranked by (-weighted count, -popularity, id)."""
    by_user = defaultdict(list)
    popularity = defaultdict(int)
    for u, m, t in rows:
        by_user[u].append((t, m))
        popularity[m] += 1
    counts = defaultdict(Fraction)
    seen = defaultdict(int)
    for seq in by_user.values():
        seq.sort()
        for i in range(len(seq)):
            for d in range(1, window + 1):
                if i + d < len(seq) and seq[i][1] != seq[i + d][1]:
                    counts[seq[i][1], seq[i + d][1]] += Fraction(1, d)
                    seen[seq[i][1], seq[i + d][1]] += 1
    ranked = defaultdict(list)
    for (p, n), c in counts.items():
        if seen[p, n] >= min_support:
            ranked[p].append((n, c))
    return {p: sorted(v, key=lambda x: (-x[1], -popularity[x[0]], x[0])) for p, v in ranked.items()}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(1, 12), st.integers(0, 25)), min_size=0, max_size=200),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_next_movie_agrees_with_a_plain_reference(rows, window, min_support):
    rec = NextMovieRecommender(*columns(rows), window=window, min_support=min_support)
    expected = reference_next_movies(rows, window, min_support)
    for movie in range(0, 14):
        got = rec.next_movies(movie)
        want = expected.get(movie, [])
        assert [m for m, _ in got] == [m for m, _ in want]
        assert [c for _, c in got] == pytest.approx([float(c) for _, c in want])
    out = rec.recommend(np.arange(0, 14), 4)
    assert_well_formed(out, range(14), 4)
    assert not (out == np.arange(0, 14)[:, None]).any()


def reference_pairs(users, movies, times) -> list[tuple[int, int, int, int]]:
    frame = pd.DataFrame({"userId": users, "movieId": movies, "timestamp": times})
    frame = frame.sort_values(["userId", "timestamp", "movieId"], kind="mergesort")
    frame = frame.assign(prev_movieId=frame.movieId.shift(1))
    frame = frame[(frame.userId == frame.userId.shift(1)) & (frame.movieId != frame.prev_movieId)]
    return sorted(map(tuple, frame[EVAL_KEY].astype("int64").to_numpy().tolist()))


@pytest.mark.parametrize("layout", ["one key range", "user blocks", "three-key sort"])
def test_transition_pairs_match_a_pandas_reference_on_every_sort_path(layout):
    rng = np.random.default_rng(7)
    n = 5_000
    users = rng.integers(0, 2_000, n)
    movies = rng.integers(0, 512, n)
    top = {"one key range": 10_000, "user blocks": 2**45, "three-key sort": 2**62}[layout]
    times = rng.integers(0, top, n)
    times[:3] = [0, 0, top - 1]
    times[3:50] = times[3]  # same-second ratings, ordered by movie id
    pairs = transition_pairs(users, movies, times)
    counted = pairs.to_frame()
    assert sorted(map(tuple, counted[EVAL_KEY].to_numpy().tolist())) == reference_pairs(users, movies, times)
    assert (counted.distance == 1).all()
    assert (counted.prev_timestamp <= counted.timestamp).all()
    assert NextMovieRecommender(users, movies, times).pair_count == len(pairs)


@pytest.mark.parametrize("window", [1, 3])
def test_pieces_and_user_blocks_count_what_one_piece_counts(monkeypatch, window):
    """At 32 M ratings the history is sorted in blocks of users and the pairs coded chunk by chunk (to
    bound memory); with tiny chunks and blocks the counts are those of the plain reference."""
    rng = np.random.default_rng(11)
    n = 3_000
    users, movies, times = rng.integers(1, 300, n), rng.integers(1, 40, n), rng.integers(0, 500, n)
    rows = list(zip(users.tolist(), movies.tolist(), times.tolist(), strict=True))
    monkeypatch.setattr(ratings, "_CHUNK", 97)
    monkeypatch.setattr(ratings, "_SORT_BLOCK_ROWS", 250)
    rec = NextMovieRecommender(users, movies, times, window=window)
    expected = reference_next_movies(rows, window)
    for movie in range(1, 40):
        assert [m for m, _ in rec.next_movies(movie)] == [m for m, _ in expected.get(movie, [])]
        assert [c for _, c in rec.next_movies(movie)] == pytest.approx(
            [float(c) for _, c in expected.get(movie, [])])
    pairs = transition_pairs(users, movies, times)
    assert sorted(map(tuple, pairs.to_frame()[EVAL_KEY].to_numpy().tolist())) == reference_pairs(users, movies, times)


# ---------------------------------------------------------------------------- hybrid


def test_hybrid_blends_by_weighted_reciprocal_rank():
    a = Fixed({1: [10, 20, 30]}, "a")
    b = Fixed({1: [30, 40, 10]}, "b")
    rec = HybridRecommender([(a, 1.0), (b, 2.0)], depth=3, c0=10)
    assert isinstance(rec, Recommender) and rec.name == "hybrid"
    # 10: 1/11 + 2/13 = .245, 30: 1/13 + 2/11 = .259, 40: 2/12 = .167, 20: 1/12 = .083
    assert rec.recommend(np.array([1]), 4).tolist() == [[30, 10, 40, 20]]
    assert rec.recommend(np.array([1]), 2).tolist() == [[30, 10]]
    # one batch call per component, each asked for max(depth, k)
    assert a.calls == [([1], 4), ([1], 3)] and b.calls == [([1], 4), ([1], 3)]


def test_hybrid_excludes_the_previous_movie_and_pad_and_lists_each_movie_once():
    a = Fixed({1: [1, 2, 3, PAD], 5: [6, 6, 5]}, "a")
    b = Fixed({1: [3, 2, 1], 5: []}, "b")
    rec = HybridRecommender([(a, 1.0), (b, 1.0)], depth=4)
    out = rec.recommend(np.array([1, 5, 9]), 4)
    # row 1: 3 scores 1/13 + 1/11, 2 scores 1/12 + 1/12 (a bit less); row 5: 6, listed twice, once
    assert out.tolist() == [[3, 2, PAD, PAD], [6, PAD, PAD, PAD], [PAD] * 4]
    assert_well_formed(out, [1, 5, 9], 4)
    assert not (out == np.array([1, 5, 9])[:, None]).any()


def test_hybrid_equal_scores_go_to_the_first_listed():
    a = Fixed({1: [10, 20]}, "a")
    b = Fixed({1: [30, 40]}, "b")
    rec = HybridRecommender([(a, 1.0), (b, 1.0)], depth=2)
    # 10 and 30 tie (rank 1 each), 20 and 40 tie: component order decides
    assert rec.recommend(np.array([1]), 4).tolist() == [[10, 30, 20, 40]]
    assert HybridRecommender([(b, 1.0), (a, 1.0)], depth=2).recommend(np.array([1]), 4).tolist() == [[30, 10, 40, 20]]


def test_hybrid_zero_weight_component_is_not_called_and_bad_settings_fail():
    a, off = Fixed({1: [2, 3]}, "a"), Fixed({1: [9]}, "off")
    assert HybridRecommender([(a, 1.0), (off, 0.0)]).recommend(np.array([1]), 3).tolist() == [[2, 3, PAD]]
    assert off.calls == []
    for kwargs in ({"components": []}, {"components": [(a, 0.0)]}, {"components": [(a, -1.0)]},
                   {"components": [(a, 1.0)], "depth": 0}, {"components": [(a, 1.0)], "c0": -1}):
        with pytest.raises(ValueError):
            HybridRecommender(**kwargs)


def test_hybrid_of_real_strategies_is_well_formed():
    rng = np.random.default_rng(3)
    users, movies, times = rng.integers(0, 50, 3_000), rng.integers(0, 80, 3_000), rng.integers(0, 1_000, 3_000)
    popularity = PopularityRecommender(movies)
    nxt = NextMovieRecommender(users, movies, times, fallback=popularity, window=2)
    rec = HybridRecommender([(nxt, 1.0), (popularity, 0.3)], depth=20)
    prev = np.arange(-5, 90)
    out = rec.recommend(prev, 10)
    assert_well_formed(out, prev, 10)
    assert not (out == prev[:, None]).any() and not (out == PAD).any()


# ---------------------------------------------------------------------------- the leakage guard


def counted_eval_pairs(eval_pairs: pd.DataFrame, pairs) -> pd.DataFrame:
    return eval_pairs[EVAL_KEY].merge(pairs.to_frame()[EVAL_KEY], on=EVAL_KEY, how="inner")


def test_leakage_guard_no_evaluation_pair_is_learned():
    rng = np.random.default_rng(11)
    n = 4_000
    users, movies, times = rng.integers(1, 80, n), rng.integers(1, 40, n), rng.integers(0, 500, n)
    eval_pairs = build_eval_transitions(users, movies, times, TransitionSettings(min_movie_ratings=1, eval_size=300))
    cutoff = leakage_cutoff(eval_pairs)
    window = training_window(users, movies, times, cutoff)
    assert window[2].max() < cutoff

    for w in (1, 3):
        counted = transition_pairs(*window, window=w)
        assert len(counted) > 0
        assert counted_eval_pairs(eval_pairs, counted).empty
        assert counted.timestamp.max() < cutoff and counted.prev_timestamp.max() < cutoff
        rec = NextMovieRecommender(*window, window=w)
        assert rec.last_time < cutoff and rec.pair_count == len(counted)
    popularity = PopularityRecommender(window[1])
    assert popularity.popularity.sum() == (times < cutoff).sum()

    # control: on all ratings every evaluation pair IS counted (but a movie following itself, which
    # is never counted), so the checks above can fail
    distinct = eval_pairs[eval_pairs.prev_movieId != eval_pairs.movieId]
    assert len(counted_eval_pairs(distinct, transition_pairs(users, movies, times))) == len(distinct) > 250


def test_leakage_guard_a_transition_seen_only_in_the_evaluation_is_unknown():
    rows = [(1, 1, 10), (1, 2, 20), (2, 1, 15), (2, 2, 25), (9, 100, 30), (9, 200, 40)]
    eval_pairs = build_eval_transitions(*columns(rows), TransitionSettings(min_movie_ratings=1, eval_size=1))
    assert eval_pairs[EVAL_KEY].to_numpy().tolist() == [[9, 100, 200, 40]]
    assert NextMovieRecommender(*columns(rows)).next_movies(100) == [(200, 1.0)]  # the leak, on all data
    window = training_window(*columns(rows), leakage_cutoff(eval_pairs))
    learned = NextMovieRecommender(*window, fallback=PopularityRecommender(window[1]))
    assert learned.next_movies(100) == []
    assert 200 not in learned.recommend(np.array([100]), 5).tolist()[0]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 10), st.integers(1, 15), st.integers(0, 40)), min_size=5, max_size=300),
    st.integers(1, 3),
    st.integers(1, 30),
    st.integers(1, 3),
)
def test_property_counted_transitions_all_precede_the_evaluation(rows, min_movie_ratings, eval_size, window):
    users, movies, times = columns(rows)
    try:
        eval_pairs = build_eval_transitions(users, movies, times, TransitionSettings(min_movie_ratings, eval_size))
    except InsufficientDataError:  # too strict for these rows: the smallest evaluation set instead
        try:
            eval_pairs = build_eval_transitions(users, movies, times, TransitionSettings(1, 1))
        except InsufficientDataError:
            assume(False)  # every user rated once: no pair at all
    cutoff = leakage_cutoff(eval_pairs)
    learn_from = training_window(users, movies, times, cutoff)
    counted = transition_pairs(*learn_from, window=window)
    if len(counted):
        assert max(counted.timestamp.max(), counted.prev_timestamp.max()) < eval_pairs.timestamp.min()
    assert counted_eval_pairs(eval_pairs, counted).empty
    rec = NextMovieRecommender(*learn_from, window=window)
    assert rec.last_time is None or rec.last_time < cutoff


# ---------------------------------------------------------------------------- speed sanity


def test_speed_sanity_on_two_million_ratings():
    rng = np.random.default_rng(0)
    n = 2_000_000
    users = rng.integers(1, 20_000, n)
    movies = rng.zipf(1.3, n) % 20_000 + 1
    times = rng.integers(789_652_009, 1_697_163_082, n)
    started = time.perf_counter()
    popularity = PopularityRecommender(movies)
    rec = NextMovieRecommender(users, movies, times, fallback=popularity)
    built = time.perf_counter() - started
    prev = popularity.ranked_ids[:3_000]
    started = time.perf_counter()
    out = rec.recommend(prev, 10)
    served = time.perf_counter() - started
    assert built < 5.0, f"construction took {built:.2f} s (about 0.5 s expected)"
    assert served < 1.0, f"3,000 recommendations took {served:.3f} s (milliseconds expected)"
    assert_well_formed(out, prev, 10)
    assert not (out == PAD).any()
