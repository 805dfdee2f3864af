"""A user's taste from their rating VALUES: a per-user ridge regression of the rating on the movie's genres.

Tried for issue 10 as a part of ``seq_hybrid`` and not kept (``docs/evaluation.md``): it lives here,
beside ``eval_real_small.py --taste`` which measures it, not in the pipeline.

The sequence models read which movies a user rated and in what order; none reads how much the user
liked them. A rating says that directly: on the demo the value is 1 + 2.2 x appeal + noise, where
appeal is 0.3 + the user's mean taste over the movie's genres (``demo/generate.py``), and real
users, too, rate what suits them higher. So this model learns, per user of the training window,

    rating(u, m) ~ mean_u + g_m . w_u

with ``g_m`` the movie's genre vector normalised per movie (1/number of genres on each, from
``movies.csv``' ``genres`` column; a movie without genres has 0s and is predicted at the user's
mean), ``mean_u`` the user's mean rating shrunk toward the global mean by ``mean_shrink`` ratings,
and ``w_u`` the ridge solution shrunk toward the global profile ``w_0``:

    w_u = argmin sum_m (r_um - mean_u - g_m . w)^2 + reg * |w - w_0|^2
        = (G_u'G_u + reg I)^-1 (G_u'(r_u - mean_u) + reg w_0)

``w_0`` is the same regression pooled over every user (user-centred ratings, ridge ``reg``
toward 0). Users without training ratings get ``mean`` and ``w_0``.

Scoring a query (its user, its history): the predicted rating ``p`` of every model movie gives

    score(m) = count(m)^a * f(p)^b,   f = exp(p - mean_u) ("exp") or max(p - floor, 0.05) ("power")

with ``count`` the movie's ratings in the training window and ``floor`` the lowest rating value
there (``power`` with b = 2 is the demo's pick weight popularity x appeal^2). The k best are
recommended (ties: more rated first, then smaller id); the previous movie never, with
``exclude_seen`` no movie of the history. The state is arrays: user ids, a users x genres float32
matrix and the users' means, the movies' ids, counts and genre matrix (at MovieLens 32M about
200,000 x 20 floats, 16 MB).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import Queries
from rcmd_pipeline.recommenders.sequence_scoring import _lookup, _single_item_queries

NO_GENRES = "(no genres listed)"
SHAPES = ("exp", "power")
_FLOOR_EPS = 0.05
_USER_BLOCK = 20_000  # users solved at once: 20,000 x 20 x 20 float64 = 64 MB
_QUERY_BLOCK = 256  # queries scored at once


def genre_matrix(movie_ids, genres: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted movie ids, genre names, float32 movies x genres matrix with rows summing to 1 or 0).

    ``genres`` is MovieLens' pipe-separated text per movie (``movies.csv``); ``(no genres listed)``,
    an empty or missing text give a row of 0s. A movie listed twice keeps its first row.
    """
    ids = np.asarray(movie_ids, dtype=np.int64).ravel()
    if len(ids) != len(genres):
        raise ValueError(f"{len(ids)} movie ids but {len(genres)} genre texts")
    ids, first = np.unique(ids, return_index=True)
    lists = []
    for i in first:
        text = genres[i]
        names = [] if not isinstance(text, str) else [g.strip() for g in text.split("|")]
        lists.append(sorted({g for g in names if g and g != NO_GENRES}))
    names = sorted({g for gs in lists for g in gs})
    column = {g: j for j, g in enumerate(names)}
    matrix = np.zeros((len(ids), len(names)), dtype=np.float32)
    for row, gs in enumerate(lists):
        for g in gs:
            matrix[row, column[g]] = 1.0 / len(gs)
    return ids, np.array(names, dtype=str), matrix


def _popular_order(counts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indexes by descending count, then ascending id."""
    return np.lexsort((ids, -counts))


class Taste:
    """The per-user genre ridge profile of the module docstring."""

    name = "taste"

    @staticmethod
    def fit(users, movies, times, ratings, genre_ids, genres, reg: float = 5.0, mean_shrink: float = 5.0,
            max_items: int = 20_000) -> dict[str, np.ndarray]:
        """Fit on the training window's ratings (``ratings`` is the value column, aligned with the ids).

        ``genre_ids``/``genres``: :func:`genre_matrix`'s first and third outputs. The model movies
        are the ``max_items`` most rated of the window (ties: smaller id).
        """
        if reg <= 0:
            raise ValueError(f"reg must be above 0, got {reg}")
        if mean_shrink < 0:
            raise ValueError(f"mean_shrink must be at least 0, got {mean_shrink}")
        users = np.asarray(users).ravel()
        movies = np.asarray(movies).ravel()
        times = np.asarray(times).ravel()
        values = np.asarray(ratings, dtype=np.float32).ravel()
        if not (len(users) == len(movies) == len(times) == len(values)):
            raise ValueError("users, movies, times and ratings must have the same length")
        genre_ids = np.asarray(genre_ids, dtype=np.int64)
        genres = np.asarray(genres, dtype=np.float32)
        n_genres = genres.shape[1]

        movie_ids, movie_index = np.unique(movies, return_inverse=True)
        counts = np.bincount(movie_index, minlength=len(movie_ids)).astype(np.int64)
        at = _lookup(genre_ids, movie_ids)
        g_all = np.where((at >= 0)[:, None], genres[np.maximum(at, 0)], 0).astype(np.float32)

        user_ids, user_index = np.unique(users, return_inverse=True)
        n_users = len(user_ids)
        n_per_user = np.bincount(user_index, minlength=n_users).astype(np.float64)
        global_mean = float(values.mean(dtype=np.float64)) if len(values) else 3.0
        sums = np.bincount(user_index, weights=values, minlength=n_users)
        user_mean = (sums + mean_shrink * global_mean) / np.maximum(n_per_user + mean_shrink, 1e-12)
        centred = values - user_mean[user_index].astype(np.float32)

        # Per user: A_u = G_u'G_u (from each movie's outer product) and b_u = G_u'(r - mean_u).
        x_count = sp.csr_matrix((np.ones(len(values), dtype=np.float32), (user_index, movie_index)),
                                shape=(n_users, len(movie_ids)))
        x_value = sp.csr_matrix((centred, (user_index, movie_index)), shape=(n_users, len(movie_ids)))
        outer = (g_all[:, :, None] * g_all[:, None, :]).reshape(len(movie_ids), n_genres * n_genres)
        b_all = np.asarray(x_value @ g_all, dtype=np.float64)
        eye = np.eye(n_genres)
        a_sum = np.asarray(x_count.sum(axis=0)).ravel() @ outer
        w0 = np.linalg.solve(a_sum.reshape(n_genres, n_genres).astype(np.float64) + reg * eye, b_all.sum(axis=0))
        profiles = np.empty((n_users, n_genres), dtype=np.float32)
        for lo in range(0, n_users, _USER_BLOCK):
            hi = min(lo + _USER_BLOCK, n_users)
            a = np.asarray(x_count[lo:hi] @ outer, dtype=np.float64).reshape(hi - lo, n_genres, n_genres)
            a += reg * eye
            rhs = b_all[lo:hi] + reg * w0
            profiles[lo:hi] = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]

        keep = np.sort(_popular_order(counts, movie_ids)[:max_items])
        return {
            "user_ids": user_ids.astype(np.int64), "user_profiles": profiles,
            "user_means": user_mean.astype(np.float32), "global_profile": w0.astype(np.float32),
            "global_mean": np.array(global_mean), "item_ids": movie_ids[keep].astype(np.int64),
            "item_counts": counts[keep], "item_genres": g_all[keep],
            "rating_floor": np.array(float(values.min()) if len(values) else 0.5),
            "last_time": np.array(int(times.max()) if len(times) else np.iinfo(np.int64).min),
        }

    def __init__(self, state: dict, a: float = 1.0, b: float = 2.0, shape: str = "power",
                 exclude_seen: bool = True) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self.a, self.b, self.shape, self.exclude_seen = float(a), float(b), shape, bool(exclude_seen)
        self.user_ids = np.asarray(state["user_ids"], dtype=np.int64)
        self.user_profiles = np.asarray(state["user_profiles"], dtype=np.float32)
        self.user_means = np.asarray(state["user_means"], dtype=np.float32)
        self.global_profile = np.asarray(state["global_profile"], dtype=np.float32)
        self.global_mean = float(np.asarray(state["global_mean"]))
        self.rating_floor = float(np.asarray(state["rating_floor"]))
        self.last_time = int(np.asarray(state["last_time"]))
        ids = np.asarray(state["item_ids"], dtype=np.int64)
        counts = np.asarray(state["item_counts"], dtype=np.int64)
        order = _popular_order(counts, ids)  # columns in tie order: more rated first, then smaller id
        self.item_ids, self.item_counts = ids[order], counts[order]
        self.item_genres = np.asarray(state["item_genres"], dtype=np.float32)[order]
        self._log_counts = np.log(np.maximum(self.item_counts, 1)).astype(np.float64)

    @classmethod
    def from_state(cls, state: dict, **params) -> Taste:
        return cls(state, **params)

    def profiles(self, query_users) -> tuple[np.ndarray, np.ndarray]:
        """(profiles, means) of the queries' users; the global ones for users the model never saw."""
        at = _lookup(self.user_ids, query_users)
        known = at >= 0
        profiles = np.where(known[:, None], self.user_profiles[np.maximum(at, 0)], self.global_profile)
        means = np.where(known, self.user_means[np.maximum(at, 0)], self.global_mean)
        return profiles.astype(np.float64), means.astype(np.float64)

    def predicted(self, query_users) -> np.ndarray:
        """Predicted ratings (queries x model movies, columns in the model's tie order)."""
        profiles, means = self.profiles(query_users)
        return means[:, None] + profiles @ self.item_genres.T.astype(np.float64)

    def _log_scores(self, query_users) -> np.ndarray:
        profiles, means = self.profiles(query_users)
        relative = profiles @ self.item_genres.T.astype(np.float64)
        if self.shape == "exp":
            taste = relative
        else:
            taste = np.log(np.maximum(means[:, None] + relative - self.rating_floor, _FLOOR_EPS))
        return self.a * self._log_counts[None, :] + self.b * taste

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        k = int(k)
        out = np.full((len(q), k), PAD, dtype=np.int64)
        m = len(self.item_ids)
        if m == 0 or k == 0:
            return out
        sorted_at = np.argsort(self.item_ids)
        sorted_ids = self.item_ids[sorted_at]
        for lo in range(0, len(q), _QUERY_BLOCK):
            hi = min(lo + _QUERY_BLOCK, len(q))
            scores = self._log_scores(q.users[lo:hi])
            rows = np.arange(hi - lo)
            excluded = [(rows, q.prev[lo:hi])]
            if self.exclude_seen:
                start, end = q.offsets[lo], q.offsets[hi]
                excluded.append((np.repeat(rows, np.diff(q.offsets[lo:hi + 1])), q.items[start:end]))
            for r, ids in excluded:
                at = _lookup(sorted_ids, ids)
                scores[r[at >= 0], sorted_at[at[at >= 0]]] = -np.inf
            take = min(k, m)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :take]
            usable = np.isfinite(np.take_along_axis(scores, best, axis=1))
            out[lo:hi, :take] = np.where(usable, self.item_ids[best], PAD)
        return out

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        """The Recommender interface: a history of just the previous movie, an unknown user."""
        q = _single_item_queries(prev_movie_ids)
        q = Queries(prev=q.prev, users=np.full(len(q), -1, dtype=np.int64), times=q.times, offsets=q.offsets,
                    items=q.items, n_earlier=q.n_earlier)
        return self.recommend_queries(q, k)
