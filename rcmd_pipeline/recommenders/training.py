"""The training window: the only ratings a learned strategy may see.

The evaluation asks, for the most recent "previous movie -> next movie" pairs of users, whether a
strategy recommends the next movie. A strategy that learns from ratings could simply have *seen*
those very pairs: counting "after 260 people watched 1196" over all ratings counts the evaluation
pair itself (and everything later), and the hit ratio becomes a measure of memory, not of
prediction. So every learned strategy is built from :func:`training_window` only: the ratings
strictly before :func:`leakage_cutoff`, the timestamp of the earliest evaluation pair. Every
evaluation pair's *next* rating is at or after the cutoff, so no evaluation transition (nor
anything after one) can be counted; the *previous* ratings of evaluation pairs may fall before it,
which is fine: the query hands the strategy that movie anyway. Ratings at exactly the cutoff
second are excluded too (strictly before), even if they belong to no evaluation pair: the
evaluation set is ordered by time, and a same-second rating is not "the past" of the first pair.

The strategies themselves cannot tell a window from the full data; ``NextMovieRecommender.last_time``
and :func:`~rcmd_pipeline.recommenders.next_movie.transition_pairs` let callers and tests check
that what was counted lies before the cutoff.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcmd_pipeline.recommenders.ratings import _columns


def leakage_cutoff(eval_pairs: pd.DataFrame) -> int:
    """The timestamp of the earliest evaluation pair: learned strategies see only ratings before it."""
    if "timestamp" not in eval_pairs.columns:
        raise ValueError("eval_pairs lacks a 'timestamp' column (expected build_eval_transitions' frame)")
    if len(eval_pairs) == 0:
        raise ValueError("eval_pairs is empty: there is no evaluation to protect, hence no cutoff")
    return int(eval_pairs["timestamp"].min())


def training_window(users, movies, times, cutoff: int) -> tuple[np.ndarray, ...]:
    """``(users, movies, times)`` of the ratings strictly before ``cutoff``, as int64 arrays.

    This is the ONLY data a learned strategy may see (see the module docstring: anything at or
    after the earliest evaluation pair would leak the answers into the model). Order is kept; arrays
    that hold only such ratings already (read with the same filter) are returned without a copy.
    """
    users, movies, times = _columns(users, movies, times)
    keep = times < int(cutoff)
    if keep.all():
        return users, movies, times
    return users[keep], movies[keep], times[keep]
