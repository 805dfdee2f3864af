"""Content neighbours from TMDB metadata: the movies most like the previous one by genres and language.

The classic metadata-based content recommender: two movies are alike by the Jaccard index of
their TMDB genre sets, plus :data:`LANGUAGE_BONUS` when they share an original language; a movie
of the same TMDB collection (series) is not a neighbour (the study's ``series`` strategy lists
those). Ties (common: most movies have two to four genres) go to the movie with more TMDB votes
(``vote_count``, TMDB's own popularity), then to the one rated more often in the training window,
then to the smaller id.

:class:`ContentTable` holds each catalogue movie's genres (a bit mask), language and collection,
from the ``tmdb_movie_info_kr`` records (``genres`` joined by ``|``, ``original_language``,
``collection_id``, ``vote_count``; details stored before ``vote_count`` was read count 0 votes).
:class:`ContentNeighbours` lists, for each query's previous movie, its ``depth`` nearest neighbours:
one of the re-ranker's parts (``rerank.py``), next to :func:`content_features`, the similarity values
themselves. A movie without TMDB details has no neighbours (its row is PAD) and similarity 0 with
everything.

Plain numpy, no Dagster imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcmd_pipeline.recommenders.base import PAD
from rcmd_pipeline.recommenders.history import Queries

LANGUAGE_BONUS = 0.1
"""Added to the genre Jaccard when two movies share their original language (a tie-breaker between
movies of equal genre overlap, never above one more shared genre of a typical 2-4 genre set)."""
NEIGHBOURS = 50
"""How many neighbours a movie keeps (the re-ranker's list depth)."""
MAX_MOVIES = 5000
"""The neighbours are found among (and for) the most rated movies with details only, at most this many:
the lists cost time quadratic in their number (5,000: about 3 s), and a movie rated by a handful of
users is neither a likely previous movie nor a likely next one. MovieLens 32M has about 3,800
movies of 1,000 ratings or more (the study's filter)."""
MAX_GENRES = 63


@dataclass(frozen=True)
class ContentTable:
    """The catalogue's metadata: ``ids`` sorted; per movie a genre bit mask, a language code (-1 when
    unknown), a collection id (0: none) and its TMDB vote count (0: unknown)."""

    ids: np.ndarray
    genres: np.ndarray
    language: np.ndarray
    collection: np.ndarray
    votes: np.ndarray

    @classmethod
    def from_records(cls, movie_ids, genres, languages, collections, votes=None) -> ContentTable:
        """From parallel sequences: ``genres`` as TMDB names joined by ``|`` (empty or None: none)."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        names: dict[str, int] = {}
        langs: dict[str, int] = {}
        masks = np.zeros(len(ids), dtype=np.int64)
        codes = np.full(len(ids), -1, dtype=np.int64)
        for i, (text, lang) in enumerate(zip(genres, languages, strict=True)):
            for g in (text.split("|") if isinstance(text, str) else ()):
                if g:
                    if g not in names:
                        if len(names) == MAX_GENRES:
                            raise ValueError(f"more than {MAX_GENRES} distinct genres in the TMDB details")
                        names[g] = len(names)
                    masks[i] |= np.int64(1) << names[g]
            if isinstance(lang, str) and lang:
                codes[i] = langs.setdefault(lang, len(langs))
        coll = np.asarray([_whole(c) for c in collections], dtype=np.int64)
        vote = np.zeros(len(ids), dtype=np.int64) if votes is None else np.asarray([_whole(v) for v in votes],
                                                                                    dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise ValueError("movie ids repeat in the TMDB details")
        return cls(ids, masks[order], codes[order], coll[order], vote[order])

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The table as named arrays, with its genre and language codes (a stored model's state)."""
        return {f"{prefix}ids": self.ids, f"{prefix}genres": self.genres, f"{prefix}language": self.language,
                f"{prefix}collection": self.collection, f"{prefix}votes": self.votes}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> ContentTable:
        return cls(*(np.asarray(arrays[f"{prefix}{name}"], dtype=np.int64)
                     for name in ("ids", "genres", "language", "collection", "votes")))

    @classmethod
    def from_frame(cls, frame) -> ContentTable:
        """From the ``tmdb_movie_info_kr`` frame (columns ``movieId``, ``genres``, ``original_language``,
        ``collection_id``)."""
        missing = [c for c in ("movieId", "genres", "original_language", "collection_id") if c not in frame.columns]
        if missing:
            raise ValueError(f"the TMDB details lack the column(s) {missing} the content neighbours need")
        votes = list(frame["vote_count"]) if "vote_count" in frame.columns else None
        return cls.from_records(frame["movieId"].to_numpy(np.int64), list(frame["genres"]),
                                list(frame["original_language"]), list(frame["collection_id"]), votes)

    def digest(self) -> str:
        """A hash of the table (ids, genres, languages, collections, votes): equal tables, equal digests."""
        import hashlib

        h = hashlib.sha256()
        for values in self.arrays().values():
            h.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:24]

    def subset(self, keep: np.ndarray) -> ContentTable:
        """The rows ``keep`` (a boolean mask or sorted row numbers)."""
        return ContentTable(self.ids[keep], self.genres[keep], self.language[keep], self.collection[keep],
                            self.votes[keep])

    def rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Each id's row in the table, -1 when the movie has no details."""
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(len(movie_ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, movie_ids), len(self.ids) - 1)
        return np.where(self.ids[at] == movie_ids, at, -1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(genre Jaccard, same language) of the rows ``a`` and ``b`` (-1: unknown, both 0)."""
        ok = (a >= 0) & (b >= 0)
        ga, gb = self.genres[np.maximum(a, 0)], self.genres[np.maximum(b, 0)]
        inter, union = _popcount(ga & gb), _popcount(ga | gb)
        jac = np.where(ok & (union > 0), inter / np.maximum(union, 1), 0.0)
        la, lb = self.language[np.maximum(a, 0)], self.language[np.maximum(b, 0)]
        return jac, (ok & (la >= 0) & (la == lb)).astype(np.float64)


def _whole(value) -> int:
    """An int from a count or id that may be missing (None, NaN, pandas NA): 0."""
    try:
        return 0 if value is None or value != value else int(value)
    except TypeError:  # pandas.NA
        return 0


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.float64)


def neighbour_lists(table: ContentTable, counts: np.ndarray, depth: int = NEIGHBOURS,
                    block: int = 512) -> np.ndarray:
    """Each table movie's ``depth`` nearest others (movie ids, PAD-padded), by genre Jaccard plus
    :data:`LANGUAGE_BONUS` for a shared language, then TMDB votes, then ``counts`` (per table row,
    training ratings), then id; same-collection movies and movies with no genre in common and another
    language left out."""
    n = len(table.ids)
    out = np.full((n, depth), PAD, dtype=np.int64)
    if n == 0 or depth == 0:
        return out
    # one tie-break key: votes first, then counts (each below 2^31 for any real catalogue)
    counts = table.votes.astype(np.float64) * 2.0 ** 31 + np.minimum(np.asarray(counts, dtype=np.float64), 2 ** 31 - 1)
    everyone = np.arange(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        a, b = np.repeat(rows, n), np.tile(everyone, len(rows))
        jac, lang = table.similarity(a, b)
        sim = (jac + LANGUAGE_BONUS * lang).reshape(len(rows), n)
        same = (table.collection[rows][:, None] == table.collection[None, :]) & (table.collection[rows][:, None] > 0)
        bad = same | (rows[:, None] == everyone[None, :]) | (sim <= 0)
        # order by similarity (rounded: exact ties), then votes and counts, then id (the table's order)
        sim = np.where(bad, -np.inf, np.round(sim, 9))
        take = min(depth, n)
        for r in range(len(rows)):  # lexsort of the candidates of one row (a partition first: fast)
            s = sim[r]
            top = np.argpartition(-s, take - 1)[:take] if take < n else everyone
            cut = s[top].min()
            pool = np.flatnonzero(s >= cut)  # every movie tied with the last one kept
            order = np.lexsort((pool, -counts[pool], -s[pool]))[:take]
            chosen = pool[order]
            chosen = chosen[np.isfinite(s[chosen])]
            out[rows[r], :len(chosen)] = table.ids[chosen]
    return out


class ContentNeighbours:
    """Query recommender: the previous movie's content neighbours (:func:`neighbour_lists`)."""

    name = "content"

    def __init__(self, table: ContentTable, lists: np.ndarray) -> None:
        self.table, self.lists = table, np.asarray(lists, dtype=np.int64)

    @classmethod
    def build(cls, table: ContentTable, popular_ids: np.ndarray, popular_counts: np.ndarray,
              depth: int = NEIGHBOURS, max_movies: int = MAX_MOVIES) -> ContentNeighbours:
        """The lists among the ``max_movies`` most rated movies of the training window that have details
        (``popularity``'s arrays, most rated first), their counts ordering equals after the votes."""
        popular_ids = np.asarray(popular_ids, dtype=np.int64)
        at = table.rows(popular_ids)
        rated = np.flatnonzero(at >= 0)[:max_movies]  # most rated first
        keep = np.sort(at[rated])
        counts = np.zeros(len(table.ids))
        counts[at[rated]] = np.asarray(popular_counts, dtype=np.float64)[rated]
        universe = table.subset(keep)
        return cls(universe, neighbour_lists(universe, counts[keep], depth))

    def recommend_queries(self, q: Queries, k: int) -> np.ndarray:
        rows = self.table.rows(q.prev)
        out = np.full((len(q), k), PAD, dtype=np.int64)
        width = min(k, self.lists.shape[1])
        known = rows >= 0
        out[known, :width] = self.lists[rows[known], :width]
        return out

    def recommend(self, prev_movie_ids, k: int) -> np.ndarray:
        from rcmd_pipeline.recommenders.sequence_scoring import _single_item_queries

        return self.recommend_queries(_single_item_queries(prev_movie_ids), k)


def content_features(table: ContentTable, last: int = 3):
    """``(queries, candidates) -> {name: column}``: each candidate's genre Jaccard and same language
    with the previous movie, its largest Jaccard with the ``last`` most recent history movies (the
    previous one included) and log(1 + its TMDB votes)."""

    def extra(q: Queries, c) -> dict[str, np.ndarray]:
        cand = table.rows(c.ids)
        jac, lang = table.similarity(cand, table.rows(q.prev[c.rows]))
        best = jac.copy()
        lengths = np.diff(q.offsets)
        for back in range(2, last + 1):  # the history's back-th last movie (the previous one is the last)
            has = lengths[c.rows] >= back
            at = np.where(has, q.offsets[c.rows + 1] - back, 0)
            j, _ = table.similarity(cand, np.where(has, table.rows(q.items[at]) if len(q.items) else -1, -1))
            best = np.maximum(best, j)
        return {"content: genre jaccard with prev": jac, "content: same language as prev": lang,
                f"content: best genre jaccard, last {last}": best,
                "content: log tmdb votes": np.where(cand >= 0, np.log1p(table.votes[np.maximum(cand, 0)]), 0.0)}

    return extra
