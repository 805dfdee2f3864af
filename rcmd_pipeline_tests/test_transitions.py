"""The evaluation-set procedure: hand-checked cases and agreement with a plain reference."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcmd_pipeline.evaluation import InsufficientDataError, TransitionSettings, build_eval_transitions


def _run(rows, min_movie_ratings=1, eval_size=3):
    frame = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"])
    return build_eval_transitions(
        frame.userId.to_numpy(), frame.movieId.to_numpy(), frame.timestamp.to_numpy(),
        TransitionSettings(min_movie_ratings=min_movie_ratings, eval_size=eval_size),
    )


def _pairs(result):
    return list(result[["userId", "prev_movieId", "movieId", "timestamp"]].itertuples(index=False, name=None))


def test_hand_checked_example_with_ties_single_rating_users_and_the_cut():
    rows = [
        # user 1: movies 10, 20 at the same second (tie broken by movie id: 10 before 20), then 30
        (1, 20, 100), (1, 10, 100), (1, 30, 200),
        # user 2: a single rating -> no pair at all
        (2, 10, 500),
        # user 3: 30 then 10, a later pair than user 1's
        (3, 30, 300), (3, 10, 400),
        # user 4: rates movie 99 only once overall -> filtered out at min_movie_ratings=2,
        # so 20 -> 30 becomes the pair (the filter happens before pairing, as in the study)
        (4, 20, 50), (4, 99, 60), (4, 30, 450),
    ]
    result = _run(rows, min_movie_ratings=2, eval_size=3)
    # all pairs by (time, user, movie): (1,10->20,100) (1,20->30,200) (3,30->10,400) (4,20->30,450)
    # the 3 most recent, most recent first:
    assert _pairs(result) == [(4, 20, 30, 450), (3, 30, 10, 400), (1, 20, 30, 200)]


def test_ties_at_the_recency_cut_are_broken_by_user_then_movie():
    rows = [(u, m, t) for u in (1, 2, 3) for m, t in ((1, 10), (2, 20))]  # three pairs at t=20
    result = _run(rows, eval_size=2)
    # at equal time, the larger (user, movie) is more recent: users 3 and 2 are kept, user 1 cut
    assert _pairs(result) == [(3, 1, 2, 20), (2, 1, 2, 20)]


def test_same_second_ratings_of_one_user_pair_in_movie_id_order():
    rows = [(7, 5, 10), (7, 3, 10), (7, 4, 10)]
    assert _pairs(_run(rows, eval_size=2)) == [(7, 4, 5, 10), (7, 3, 4, 10)]


def test_result_is_identical_whatever_the_input_order():
    rng = np.random.default_rng(1)
    rows = [(int(u), int(m), int(t)) for u, m, t in zip(rng.integers(1, 30, 600), rng.integers(1, 25, 600),
                                                         rng.integers(0, 40, 600), strict=True)]
    first = _run(rows, min_movie_ratings=20, eval_size=50)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    pd.testing.assert_frame_equal(first, _run(shuffled, min_movie_ratings=20, eval_size=50))


def _reference(frame: pd.DataFrame, min_movie_ratings: int, eval_size: int) -> pd.DataFrame:
    """The study's procedure in plain pandas, with its ties broken the same documented way."""
    counts = frame.movieId.value_counts()
    kept = frame[frame.movieId.isin(counts[counts >= min_movie_ratings].index)]
    kept = kept.sort_values(["userId", "timestamp", "movieId"], kind="mergesort")
    kept = kept.assign(prev_movieId=kept.movieId.shift(1))
    kept = kept[kept.userId == kept.userId.shift(1)]
    kept = kept.sort_values(["timestamp", "userId", "movieId"], kind="mergesort").iloc[::-1].head(eval_size)
    return kept[["userId", "prev_movieId", "movieId", "timestamp"]].astype("int64").reset_index(drop=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 12), st.integers(1, 15), st.integers(0, 30)), min_size=1, max_size=300),
    st.integers(1, 6),
    st.integers(1, 40),
)
def test_agrees_with_the_plain_reference(rows, min_movie_ratings, eval_size):
    frame = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"])
    expected = _reference(frame, min_movie_ratings, eval_size)
    if len(expected) < eval_size:
        with pytest.raises(InsufficientDataError):
            _run(rows, min_movie_ratings, eval_size)
        return
    pd.testing.assert_frame_equal(_run(rows, min_movie_ratings, eval_size), expected)


def test_too_few_movies_names_the_setting_to_lower():
    with pytest.raises(InsufficientDataError, match="lower min_movie_ratings"):
        _run([(1, 1, 1), (1, 2, 2)], min_movie_ratings=5)


def test_too_few_pairs_names_the_settings_to_lower():
    with pytest.raises(InsufficientDataError, match="lower eval_size or min_movie_ratings"):
        _run([(1, 1, 1), (1, 2, 2), (2, 1, 3)], min_movie_ratings=1, eval_size=5)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="eval_size"):
        TransitionSettings(eval_size=0)
