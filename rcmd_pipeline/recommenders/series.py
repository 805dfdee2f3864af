"""The study's series strategy: the other films of the previous movie's series, newest first."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcmd_pipeline.recommenders.base import PAD, fill_with_random

_NO_SERIES = 0


class SeriesRecommender:
    """The study's ``series_rcmd``, for a whole batch of previous movies at once.

    For a previous movie that belongs to a series (``series_id > 0``): the other films of that
    series (the movie itself excluded), newest release first, ties by ``movie_id``, films without a
    release date last; then random ids up to k. A movie of no series (``series_id == 0``) or one
    missing from the catalogue gets k random ids. Random ids are drawn uniformly from ``fill_ids``
    (every movie id seen in the ratings, as in the study) with a generator seeded by ``seed`` on
    every call, so a call is reproducible.

    Differences from the study, on purpose:

    - the random fill never repeats an id already in the row (a series film or an earlier draw);
      the study drew with replacement and could recommend the same film twice. Like the study, the
      fill may (rarely) contain the previous movie itself;
    - ties (same release date) are broken by ``movie_id``, and films without a release date come
      last; the study's ``ORDER BY release_date DESC`` left ties to the database and put NULL dates
      first on Oracle;
    - the catalogue is read once (one query, see ``MovieDatabase.series_catalog``) instead of two
      queries per recommendation.

    A row holds :data:`PAD` only when ``fill_ids`` has too few ids left to fill it.
    """

    name = "series"

    def __init__(self, catalog: pd.DataFrame, fill_ids: np.ndarray, seed: int = 0) -> None:
        missing = {"movie_id", "series_id", "release_date"} - set(catalog.columns)
        if missing:
            raise ValueError(f"catalog lacks column(s) {', '.join(sorted(missing))}")
        movie_ids = catalog["movie_id"].to_numpy(dtype=np.int64)
        if len(np.unique(movie_ids)) != len(movie_ids):
            raise ValueError("catalog has repeated movie_id values")
        series_ids = catalog["series_id"].fillna(_NO_SERIES).to_numpy(dtype=np.int64)
        released = pd.to_datetime(catalog["release_date"], errors="coerce").to_numpy(dtype="datetime64[s]")
        no_date = np.isnat(released)
        seconds = np.where(no_date, 0, released.view(np.int64))
        # newest first, no date last, ties by movie_id: ascending keys (last key sorts first)
        date_key = np.where(no_date, np.iinfo(np.int64).max, -seconds)

        # Members of every series, grouped by series, each group in recommendation order.
        in_series = series_ids > _NO_SERIES
        order = np.lexsort((movie_ids[in_series], date_key[in_series], series_ids[in_series]))
        self._members = movie_ids[in_series][order]
        member_series = series_ids[in_series][order]
        _, starts, sizes = np.unique(member_series, return_index=True, return_counts=True)
        start = np.repeat(starts, sizes)
        # Per member, looked up by movie id: where its series starts in _members, the series'
        # size and the member's own rank in it.
        by_member = np.argsort(self._members, kind="stable")
        self._member_ids_sorted = self._members[by_member]
        self._member_start = start[by_member]
        self._member_size = np.repeat(sizes, sizes)[by_member]
        self._member_rank = (np.arange(len(self._members)) - start)[by_member]
        self.series_count = len(starts)

        self.fill_ids = np.unique(np.asarray(fill_ids, dtype=np.int64))
        self.seed = seed

    @staticmethod
    def catalog_state(catalog: pd.DataFrame) -> dict[str, np.ndarray]:
        """``catalog`` (movie_id, series_id, release_date) as plain arrays, for a model asset."""
        released = pd.to_datetime(catalog["release_date"], errors="coerce").to_numpy(dtype="datetime64[s]")
        return {"movie_id": catalog["movie_id"].to_numpy(dtype=np.int64),
                "series_id": catalog["series_id"].fillna(_NO_SERIES).to_numpy(dtype=np.int64),
                "release_date": released}

    @staticmethod
    def catalog_from_state(state: dict[str, np.ndarray]) -> pd.DataFrame:
        """The catalogue frame :meth:`catalog_state` stored."""
        return pd.DataFrame({"movie_id": state["movie_id"], "series_id": state["series_id"],
                             "release_date": np.asarray(state["release_date"], dtype="datetime64[s]")})

    def series_rows(self, prev: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the series films (PAD after them) and how many each row holds."""
        n = len(prev)
        out = np.full((n, k), PAD, dtype=np.int64)
        counts = np.zeros(n, dtype=np.int64)
        if n == 0 or len(self._members) == 0 or k == 0:
            return out, counts
        pos = np.searchsorted(self._member_ids_sorted, prev)
        pos_clipped = np.minimum(pos, len(self._member_ids_sorted) - 1)
        member = self._member_ids_sorted[pos_clipped] == prev
        rows = np.flatnonzero(member)
        if len(rows) == 0:
            return out, counts
        at = pos_clipped[rows]
        start, size, rank = self._member_start[at], self._member_size[at], self._member_rank[at]
        for j in range(k):
            offset = j + (j >= rank)  # skip the previous movie itself
            ok = offset < size
            out[rows[ok], j] = self._members[start[ok] + offset[ok]]
        counts[rows] = np.minimum(size - 1, k)
        return out, counts

    def recommend(self, prev_movie_ids: np.ndarray, k: int) -> np.ndarray:
        prev = np.asarray(prev_movie_ids, dtype=np.int64).ravel()
        out, counts = self.series_rows(prev, k)
        return fill_with_random(out, counts, self.fill_ids, np.random.default_rng(self.seed))
