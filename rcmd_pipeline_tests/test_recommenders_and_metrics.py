import numpy as np
import pytest

from rcmd_pipeline.evaluation import evaluate, hit_ratio, hits_at_k
from rcmd_pipeline.recommenders import PAD, RandomRecommender, Recommender, sample_distinct


def test_hit_ratio_counts_only_the_first_k():
    recs = np.array([[1, 2, 3], [4, 5, 6], [7, PAD, PAD]])
    actual = np.array([3, 9, 7])
    assert hits_at_k(recs, actual, 3).tolist() == [True, False, True]
    assert hit_ratio(recs, actual, k=2) == pytest.approx(1 / 3)
    assert hit_ratio(recs, actual, k=3) == pytest.approx(2 / 3)


def test_hit_ratio_rejects_misshaped_input():
    with pytest.raises(ValueError, match="shape"):
        hits_at_k(np.array([1, 2, 3]), np.array([1, 2, 3]), 1)
    with pytest.raises(ValueError, match="empty"):
        hit_ratio(np.empty((0, 10)), np.empty(0), 10)


def test_sample_distinct_rows_are_distinct_and_from_the_pool():
    pool = np.arange(100, 112)
    rows = sample_distinct(np.random.default_rng(3), pool, 500, 10)
    assert rows.shape == (500, 10)
    assert all(len(set(r)) == 10 for r in rows.tolist())
    assert set(rows.ravel()) <= set(pool.tolist())
    with pytest.raises(ValueError, match="distinct"):
        sample_distinct(np.random.default_rng(0), pool, 1, 13)


def test_random_recommender_is_seeded_and_satisfies_the_interface():
    rec = RandomRecommender(np.array([5, 1, 5, 9, 12, 40, 41, 42, 43, 44, 45, 46]), seed=7)
    assert isinstance(rec, Recommender)
    first = rec.recommend(np.array([1, 2, 3]), 10)
    assert first.shape == (3, 10)
    np.testing.assert_array_equal(first, rec.recommend(np.array([1, 2, 3]), 10))
    assert not np.array_equal(first, RandomRecommender(rec.catalog_ids, seed=8).recommend(np.array([1, 2, 3]), 10))


def test_evaluate_scores_a_perfect_and_a_useless_strategy():
    class Oracle:
        name = "oracle"

        def recommend(self, prev, k):
            return np.tile((prev + 1)[:, None], (1, k))

    prev, nxt = np.array([1, 2, 3, 4]), np.array([2, 3, 4, 0])
    result = evaluate(Oracle(), prev, nxt, k=10)
    assert (result.hit_ratio, result.n, result.k) == (0.75, 4, 10)
    assert result.hits.tolist() == [True, True, True, False]
    assert result.queries_per_second > 0

    class Wrong:
        name = "wrong"

        def recommend(self, prev, k):
            return np.zeros((len(prev), k - 1))

    with pytest.raises(ValueError, match="returned shape"):
        evaluate(Wrong(), prev, nxt, k=10)
