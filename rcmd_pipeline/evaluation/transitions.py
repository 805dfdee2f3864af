"""The evaluation set: "previous movie -> next movie" pairs, exactly the study's procedure.

The study (cells 4-6 of the notebook in ``shared/seeds``):

1. keep ratings of movies rated at least ``min_movie_ratings`` times (counted over all ratings);
2. order each user's remaining ratings by time and pair each one with the user's previous one;
3. drop each user's first rating (it has no previous one);
4. keep the ``eval_size`` most recent pairs by time.

The study left ties unbroken (pandas' unstable sort), so its set could change between runs.
Here every order is total: within a user, ratings are ordered by (time, movie id); the recency cut
orders pairs by (time, user id, movie id) and keeps the last ``eval_size``. The set is therefore
identical on every run and on every machine.

The study sorts all 28 M remaining ratings by (user, time). Only the users who own one of the most
recent pairs matter, so this implementation finds a time threshold with a partial sort, gathers
the full histories of just those users, and sorts those few rows: same result, a fraction of the
time and memory (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TRANSITION_COLUMNS = ("userId", "prev_movieId", "movieId", "timestamp")


class InsufficientDataError(ValueError):
    """Too few movies or pairs survive the filters; the message names the setting to lower."""


@dataclass(frozen=True)
class TransitionSettings:
    min_movie_ratings: int = 1000
    eval_size: int = 3000

    def __post_init__(self) -> None:
        if self.min_movie_ratings < 1:
            raise ValueError(f"min_movie_ratings must be at least 1, got {self.min_movie_ratings}")
        if self.eval_size < 1:
            raise ValueError(f"eval_size must be at least 1, got {self.eval_size}")


def _popular_movie_mask(movies: np.ndarray, min_count: int) -> np.ndarray:
    """Boolean mask of the ratings whose movie has at least ``min_count`` ratings."""
    top = int(movies.max())
    if top < 50_000_000:  # dense counting: one pass, O(max id) memory
        counts = np.bincount(movies, minlength=top + 1)
        return (counts >= min_count)[movies]
    uniques, inverse, counts = np.unique(movies, return_inverse=True, return_counts=True)
    return (counts >= min_count)[inverse]


def _pairs_of_users(
    users: np.ndarray, movies: np.ndarray, times: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, ...]:
    """All (user, prev, next, time) pairs among ``rows``, which hold complete user histories."""
    u, m, t = users[rows], movies[rows], times[rows]
    order = np.lexsort((m, t, u))  # by user, then time, then movie id
    u, m, t = u[order], m[order], t[order]
    same_user = np.empty(len(u), dtype=bool)
    same_user[:1] = False
    same_user[1:] = u[1:] == u[:-1]
    prev = np.empty_like(m)
    prev[:1] = 0
    prev[1:] = m[:-1]
    return u[same_user], prev[same_user], m[same_user], t[same_user]


def build_eval_transitions(
    users: np.ndarray,
    movies: np.ndarray,
    times: np.ndarray,
    settings: TransitionSettings = TransitionSettings(),
) -> pd.DataFrame:
    """The ``eval_size`` most recent previous->next pairs, most recent first.

    ``users``, ``movies`` and ``times`` are the ratings' userId, movieId and epoch-second
    timestamp columns (equal length, non-negative integers). Returns a frame with columns
    userId, prev_movieId, movieId, timestamp ordered by (timestamp, userId, movieId) descending.
    """
    users, movies, times = np.asarray(users), np.asarray(movies), np.asarray(times)
    if not (len(users) == len(movies) == len(times)):
        raise ValueError("users, movies and times must have the same length")
    if len(movies) == 0:
        raise InsufficientDataError("the ratings are empty: there is nothing to evaluate on")

    mask = _popular_movie_mask(movies, settings.min_movie_ratings)
    if not mask.any():
        raise InsufficientDataError(
            f"no movie has at least min_movie_ratings={settings.min_movie_ratings} ratings; "
            "lower min_movie_ratings"
        )
    u, p, m, t = _recent_pairs(users, movies, times, mask, settings.eval_size)
    if len(u) < settings.eval_size:
        raise InsufficientDataError(
            f"only {len(u)} previous->next pairs remain after keeping movies with at least "
            f"min_movie_ratings={settings.min_movie_ratings} ratings, fewer than eval_size="
            f"{settings.eval_size}; lower eval_size or min_movie_ratings"
        )
    order = np.lexsort((m, u, t))[::-1][: settings.eval_size]
    return pd.DataFrame(
        {
            "userId": u[order].astype(np.int64),
            "prev_movieId": p[order].astype(np.int64),
            "movieId": m[order].astype(np.int64),
            "timestamp": t[order].astype(np.int64),
        }
    )


def _recent_pairs(
    users: np.ndarray, movies: np.ndarray, times: np.ndarray, mask: np.ndarray, eval_size: int
) -> tuple[np.ndarray, ...]:
    """Every pair of the kept ratings (``mask``) at or after a time threshold that leaves at least
    ``eval_size`` of them (or every pair, when there are fewer): the owners' whole histories are paired."""
    kept_times = times[mask]
    max_user = int(users.max())
    # Candidate window: the `want` most recent kept ratings. Each user's first rating yields no
    # pair, so the window may hold fewer than eval_size pairs; then it is doubled.
    want = min(len(kept_times), 2 * eval_size)
    while True:
        kept_times.partition(len(kept_times) - want)  # in place: no second copy of ~28 M times
        threshold = kept_times[len(kept_times) - want]
        recent = mask & (times >= threshold)
        owners = np.zeros(max_user + 1, dtype=bool)
        owners[users[recent]] = True
        rows = np.flatnonzero(mask & owners[users])
        u, p, m, t = _pairs_of_users(users, movies, times, rows)
        in_window = t >= threshold
        # Every pair at or after the threshold is in (u, p, m, t), and every pair before it ranks
        # below all of them, so the window is complete once it holds eval_size pairs.
        if in_window.sum() >= eval_size or want == len(kept_times):
            return u[in_window], p[in_window], m[in_window], t[in_window]
        want = min(len(kept_times), want * 2)
