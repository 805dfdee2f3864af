"""Content neighbours from TMDB metadata (``recommenders/content.py``): arithmetic on a hand-made catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.content import (
    LANGUAGE_BONUS,
    ContentNeighbours,
    ContentTable,
    content_features,
    neighbour_lists,
)
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.rerank import candidates

# id: genres, language, collection
CATALOGUE = {
    10: ("Action|Adventure|SF", "en", 7),
    11: ("Action|Adventure|SF", "en", 7),  # the same series as 10: never its neighbour
    20: ("Action|Adventure", "en", 0),  # Jaccard 2/3 with 10, + language
    30: ("Action|Adventure", "ko", 0),  # Jaccard 2/3, no language bonus
    40: ("Action|SF|Thriller", "en", 0),  # Jaccard 2/4 + language
    50: ("Drama", "en", 0),  # no genre shared, same language: similarity 0.1
    60: ("Drama", "fr", 0),  # nothing in common with 10: never its neighbour
    70: (None, None, None),  # no genres, no language known
}


def table() -> ContentTable:
    ids = list(CATALOGUE)
    return ContentTable.from_frame(pd.DataFrame({
        "movieId": ids, "genres": [CATALOGUE[i][0] for i in ids],
        "original_language": [CATALOGUE[i][1] for i in ids], "collection_id": [CATALOGUE[i][2] for i in ids]}))


def test_similarity_is_the_genre_jaccard_and_the_shared_language():
    t = table()
    a = t.rows(np.array([10, 10, 10, 10, 10, 70, 99]))
    b = t.rows(np.array([20, 30, 40, 50, 60, 10, 10]))
    jac, lang = t.similarity(a, b)
    np.testing.assert_allclose(jac, [2 / 3, 2 / 3, 2 / 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(lang, [1, 0, 1, 1, 0, 0, 0])  # unknown language (70) or movie (99): 0


def test_neighbours_by_similarity_then_count_without_the_series_or_the_unrelated():
    t = table()
    counts = np.zeros(len(t.ids))
    lists = neighbour_lists(t, counts, depth=6)
    row = lists[t.rows(np.array([10]))[0]]
    # 20: 2/3 + 0.1; 30: 2/3; 40: 1/2 + 0.1; 50: 0.1; 11 (same series), 60 and 70 (nothing shared) never
    assert row.tolist() == [20, 30, 40, 50, PAD, PAD]
    assert 2 / 3 > 0.5 + LANGUAGE_BONUS  # why 30 (no language bonus) still comes before 40
    # 30's: 20 (same genres: 1), then 10 and 11 (2/3 each; 11 is not 30's series), then 40 (1/4)
    assert neighbour_lists(t, counts, depth=4)[t.rows(np.array([30]))[0]].tolist() == [20, 10, 11, 40]
    counts[t.rows(np.array([11]))[0]] = 5  # equal similarity: the movie rated more often first
    assert neighbour_lists(t, counts, depth=3)[t.rows(np.array([30]))[0]].tolist() == [20, 11, 10]
    np.testing.assert_array_equal(neighbour_lists(t, counts, depth=4, block=3), neighbour_lists(t, counts, depth=4))

def test_the_recommender_lists_the_previous_movies_neighbours_and_pads_an_unknown_movie():
    t = table()
    part = ContentNeighbours.build(t, np.array([40, 20, 10, 30, 50]), np.array([9, 3, 2, 1, 1]), depth=3)
    out = part.recommend(np.array([10, 999]), 4)
    assert out.tolist() == [[20, 30, 40, PAD], [PAD] * 4]
    assert part.recommend(np.array([10]), 1).tolist() == [[20]]


def test_features_are_the_similarities_with_the_previous_and_the_last_three_movies():
    t = table()
    # histories oldest first: the previous movie is the last one
    q = queries_from_histories([[30, 50, 10], [60]], users=[1, 2], times=[5, 6])
    c = candidates(q, [np.array([[20, 40, PAD], [50, 10, PAD]])])
    cols = content_features(t, last=3)(q, c)
    assert c.rows.tolist() == [0, 0, 1, 1] and c.ids.tolist() == [20, 40, 50, 10]
    np.testing.assert_allclose(cols["content: genre jaccard with prev"], [2 / 3, 2 / 4, 1, 0])
    np.testing.assert_array_equal(cols["content: same language as prev"], [1, 1, 0, 0])
    # 20 is Action|Adventure like 30 (two back): 1; 40 best with 10 (2/4); query 2 has one movie
    np.testing.assert_allclose(cols["content: best genre jaccard, last 3"], [1, 2 / 4, 1, 0])


def test_a_bad_details_frame_is_named():
    with pytest.raises(ValueError, match="collection_id"):
        ContentTable.from_frame(pd.DataFrame({"movieId": [1], "genres": ["Drama"], "original_language": ["en"]}))
    with pytest.raises(ValueError, match="repeat"):
        ContentTable.from_records([1, 1], ["Drama", "Drama"], ["en", "en"], [0, 0])


def test_a_reranker_with_the_content_table_lists_its_neighbours_and_keeps_the_table_in_its_state():
    from rcmd_pipeline.recommenders.rerank import (
        CONTENT_PART,
        Fitted,
        Reranker,
        features,
        history_band,
        log_counts,
        state_from_choice,
    )

    t = table()
    popular = (np.array([50, 40, 30, 20, 10]), np.array([9, 8, 7, 6, 5]))

    class Listed:  # a part that always lists 50 first, then 40
        def recommend_queries(self, q, k):
            return np.tile(np.array([50, 40, PAD, PAD])[:k], (len(q), 1))

    q = queries_from_histories([[60, 10]])  # prev 10; 60 seen
    names = ["a", CONTENT_PART]
    content = ContentNeighbours.build(t, *popular, depth=4)
    c = candidates(q, [Listed().recommend_queries(q, 4), content.recommend_queries(q, 4)])
    extra = content_features(t)(q, c)
    _, cols = features(c, log_counts(*popular, c.ids), history_band(q), names, interactions=False, extra=extra)
    weights = np.zeros(len(cols))
    weights[cols.index("content: genre jaccard with prev")] = 1.0  # the most genres in common first
    rr = Reranker({"a": Listed()}, names, Fitted(weights, np.zeros(len(cols)), np.ones(len(cols)), 0, True),
                  *popular, interactions=False, depth=4, content=t, feature_names=cols)
    # candidates: a's 50, 40; content's 20, 30 (2/3 each: first listed first), 40 (1/2), 50 (0)
    assert rr.recommend_queries(q, 4)[0].tolist() == [20, 30, 40, 50]
    state = rr.state()
    assert state["content_ids"].tolist() == t.ids.tolist() and state["content_votes"].tolist() == [0] * 8
    again = Reranker.from_state(state, {"a": Listed()}, *popular)
    np.testing.assert_array_equal(again.recommend_queries(q, 4), rr.recommend_queries(q, 4))
    chosen = {"part_names": names, "feature_names": cols, "weights": weights.tolist(), "mean": [0.0] * len(cols),
              "std": [1.0] * len(cols), "interactions": False, "depth": 4, "exclude_seen": True, "scores": False,
              **{key: value.tolist() for key, value in t.arrays("content_").items()}}
    from_choice = Reranker.from_state(state_from_choice(chosen), {"a": Listed()}, *popular)
    np.testing.assert_array_equal(from_choice.recommend_queries(q, 4), rr.recommend_queries(q, 4))


def test_the_neighbours_are_found_among_the_most_rated_movies_only():
    t = table()
    # only 20, 30 and 40 are among the 3 most rated: 10 (not rated) has no list, 20's holds 30 and 40
    part = ContentNeighbours.build(t, np.array([40, 30, 20, 99]), np.array([9, 8, 7, 6]), depth=3, max_movies=3)
    assert part.recommend(np.array([10, 20]), 3).tolist() == [[PAD] * 3, [30, 40, PAD]]
    assert t.digest() == table().digest() and t.digest() != t.subset(np.array([0, 1])).digest()
