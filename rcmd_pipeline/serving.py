"""Recommendations from a materialized pipeline: similar movies, free-text search, a user's next movies.

Plain Python, no Dagster: :class:`Recommendations` reads the local state the pipeline left behind
and answers three questions, each as a list of ``{"movie_id", "title", "year", "score"}`` dicts,
best first (``score`` is the cosine similarity, or None for a strategy without scores):

- :meth:`Recommendations.similar`: movies like one movie, by one of the study's strategies
  (``vector``, ``series``, ``series_vector``, ``random``), the movie itself never included;
- :meth:`Recommendations.search`: movies whose overview is nearest to a free text ("a toy comes to
  life"), embedded with the same model as the collection;
- :meth:`Recommendations.user`: movies for a user: by default the normalised mean of the vectors
  of the user's most recently rated movies; or any registered strategy answering for the user's
  whole history as its query (the sequence strategies use all of it, the others the last movie);
  the user's own rated movies are always excluded.

Where things come from (the same environment variables as the pipeline, see README):

- ``<RCMD_DATA_DIR>/assets/tmdb_movie_info_kr.parquet``: Korean titles and release years;
- ``<RCMD_DATA_DIR>/assets/movielens_ratings.parquet``: users' ratings, and the ids the
  ``random``/``series`` strategies fill with (every movie seen in the ratings, as in the study);
- the vector collection ``RCMD_QDRANT_COLLECTION`` (embedded under ``RCMD_DATA_DIR/vectors`` or a
  Qdrant server at ``QDRANT_URL``), written by ``movie_vectors``;
- the ``movie`` table (``RCMD_DATABASE_URL`` or SQLite under ``RCMD_DATA_DIR``), for the series
  strategies, written by ``movie_table``;
- the embedder (local e5, or an OpenAI-compatible API with ``OPENAI_API_KEY``), for ``search`` only.

Each piece is read when a question first needs it; a piece that is missing raises
:class:`MissingStateError` naming the asset to materialize. Use it as a context manager so the
vector store session is closed::

    with Recommendations.from_environment() as rec:
        rec.similar(1, k=10)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rcmd_pipeline import settings
from rcmd_pipeline.lib.arguments import check_k
from rcmd_pipeline.recommenders import (
    PAD,
    RandomRecommender,
    SeriesRecommender,
    SeriesVectorRecommender,
    VectorRecommender,
)
from rcmd_pipeline.recommenders.history import queries_from_histories
from rcmd_pipeline.recommenders.registry import REGISTRY, QueryContext, Strategy, all_parts, by_name
from rcmd_pipeline.resources.embedder import Embedder, embedder_from_environment
from rcmd_pipeline.resources.local_state import stored_value_path
from rcmd_pipeline.resources.movie_db import MovieDatabase, MovieDatabaseError, movie_database_from_environment
from rcmd_pipeline.resources.vector_store import (
    EmbeddedQdrantStore,
    VectorSession,
    VectorStore,
    vector_store_from_environment,
)

STUDY_STRATEGIES = ("vector", "series", "series_vector", "random")
"""The study's four, answered by :meth:`Recommendations.similar` from the live catalogue and collection."""
STRATEGIES = (*STUDY_STRATEGIES, *(s.name for s in REGISTRY if s.name not in STUDY_STRATEGIES))
"""Every strategy of :meth:`Recommendations.similar`: the study's four, then the other registered ones,
answered from their stored model assets."""

MATERIALIZE = "dagster asset materialize -m rcmd_pipeline.definitions --select {}"

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class ServingError(RuntimeError):
    """A question that cannot be answered; the message says why and what to do."""


class MissingStateError(ServingError):
    """A piece of the pipeline's state is missing: the message names the asset to materialize."""


class ModelMismatchError(ServingError):
    """The embedder's model is not the one the collection was built with (incomparable vectors)."""


class UnknownMovieError(ServingError, LookupError):
    """No such movie in the materialized catalogue."""


class UnknownUserError(ServingError, LookupError):
    """No ratings of such a user."""


def _materialize_hint(*assets: str) -> str:
    return "run `" + MATERIALIZE.format(",".join(assets)) + "` first"


def _check_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _plain_db(db: MovieDatabase) -> MovieDatabase:
    """The database resource with a literal URL: an ``EnvVar`` URL resolves only inside Dagster runs."""
    get_value = getattr(db.url, "get_value", None)
    return MovieDatabase(url=get_value()) if callable(get_value) else db


def _year(release_date: Any) -> int | None:
    text = "" if release_date is None or (isinstance(release_date, float) and math.isnan(release_date)) \
        else str(release_date)
    return int(text[:4]) if text[:4].isdigit() else None


class Recommendations:
    """Similar movies, free-text search and per-user recommendations from a materialized pipeline.

    Build it with :meth:`from_environment` (or directly, for tests). Not thread-safe: one instance
    per thread (it holds one vector store session). Use ``with`` or call :meth:`close`.
    """

    def __init__(self, data_dir: str | os.PathLike, vector_store: VectorStore, embedder: Embedder,
                 movie_db: MovieDatabase, collection: str = settings.DEFAULT_COLLECTION, seed: int = 0,
                 registry: tuple[Strategy, ...] = REGISTRY) -> None:
        self.data_dir = Path(data_dir)
        self.registry = tuple(registry)
        self.vector_store = vector_store
        self.embedder = embedder
        self.movie_db = movie_db
        self.collection = collection
        self.seed = seed
        self._session_cm: Any = None
        self._session: VectorSession | None = None
        self._info: dict[str, Any] | None = None
        self._titles: pd.DataFrame | None = None
        self._fill_ids: np.ndarray | None = None
        self._series_catalog: pd.DataFrame | None = None
        self._require_asset("tmdb_movie_info_kr")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, seed: int = 0,
                         registry: tuple[Strategy, ...] = REGISTRY) -> Recommendations:
        """The pipeline's state as the environment chooses it (``RCMD_DATA_DIR`` etc., see README)."""
        data_dir = settings.data_dir(environ)
        if not (data_dir / "assets").is_dir():
            raise MissingStateError(
                f"no materialized pipeline state in {data_dir} ({settings.DATA_DIR_ENV}); "
                + _materialize_hint("'*'")
            )
        # the database helper creates its folder: data_dir exists here, so nothing new appears
        db = _plain_db(movie_database_from_environment(environ, data_dir))
        return cls(data_dir, vector_store_from_environment(environ, data_dir), embedder_from_environment(environ),
                   db, collection=settings.qdrant_collection(environ), seed=seed, registry=tuple(registry))

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Recommendations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the vector store session (if one was opened); the instance is unusable afterwards."""
        if self._session_cm is not None:
            cm, self._session_cm, self._session = self._session_cm, None, None
            cm.__exit__(None, None, None)

    # ------------------------------------------------------------------ state

    def _asset_path(self, asset: str) -> Path | None:
        """Where the IO manager keeps ``asset``'s DataFrame (Parquet); None when it is not there."""
        path = stored_value_path(self.data_dir, [asset])
        return path if path is not None and path.suffix == ".parquet" else None

    def _require_asset(self, asset: str) -> Path:
        path = self._asset_path(asset)
        if path is None:
            raise MissingStateError(f"asset {asset} is not materialized in {self.data_dir} "
                                    f"({settings.DATA_DIR_ENV}); {_materialize_hint(asset)}")
        return path

    def _vectors(self) -> tuple[VectorSession, dict[str, Any]]:
        """The open session and the served collection's info (opened on first use)."""
        if self._session is None:
            store = self.vector_store
            if isinstance(store, EmbeddedQdrantStore) and not Path(store.path).expanduser().is_dir():
                raise MissingStateError(f"no vector store in {store.path}; {_materialize_hint('movie_vectors')}")
            cm = store.open()
            session = cm.__enter__()
            try:
                info = session.info(self.collection)
            except BaseException:
                cm.__exit__(None, None, None)
                raise
            if info is None:
                cm.__exit__(None, None, None)
                raise MissingStateError(f"the vector collection {self.collection!r} does not exist in "
                                        f"{store.describe()}; {_materialize_hint('movie_vectors')}")
            self._session_cm, self._session, self._info = cm, session, info
        assert self._info is not None
        return self._session, self._info

    def collection_info(self) -> dict[str, Any]:
        """``points``, ``dimension``, ``model``, ``generation`` of the served collection."""
        return dict(self._vectors()[1])

    def _catalogue(self) -> pd.DataFrame:
        """movieId → title, year: TMDB's Korean details, MovieLens titles where TMDB has none."""
        if self._titles is None:
            info = pq.read_table(self._require_asset("tmdb_movie_info_kr"),
                                 columns=["movieId", "title", "release_date"]).to_pandas()
            frame = pd.DataFrame({
                "title": [None if pd.isna(t) or not str(t).strip() else str(t) for t in info["title"]],
                "year": [_year(d) for d in info["release_date"]],
            }, index=info["movieId"].astype("int64").to_numpy())
            movies_path = self._asset_path("movielens_movies")
            if movies_path is not None:  # optional: titles of movies TMDB does not know
                movies = pq.read_table(movies_path, columns=["movieId", "title"]).to_pandas()
                movies = movies[~movies["movieId"].astype("int64").isin(frame.index)]
                extra = pd.DataFrame({
                    "title": [None if pd.isna(t) else _YEAR_IN_TITLE.sub("", str(t)).strip() for t in movies["title"]],
                    "year": [int(m.group(1)) if (m := _YEAR_IN_TITLE.search(str(t))) else None
                             for t in movies["title"]],
                }, index=movies["movieId"].astype("int64").to_numpy())
                frame = pd.concat([frame, extra])
            self._titles = frame[~frame.index.duplicated()]
        return self._titles

    def _rows(self, ids: Any, scores: Any = None) -> list[dict[str, Any]]:
        catalogue = self._catalogue()
        out = []
        for i, movie_id in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
            if movie_id == PAD:
                continue
            title, year = (catalogue.at[movie_id, "title"], catalogue.at[movie_id, "year"]) \
                if movie_id in catalogue.index else (None, None)
            score = None if scores is None else scores[i]
            out.append({
                "movie_id": int(movie_id),
                "title": title,
                "year": None if year is None or pd.isna(year) else int(year),
                "score": None if score is None or not math.isfinite(float(score)) else round(float(score), 6),
            })
        return out

    def movie(self, movie_id: int) -> dict[str, Any]:
        """``{movie_id, title, year}`` of a catalogue movie; :class:`UnknownMovieError` otherwise."""
        movie_id = _check_id(movie_id, "movie id")
        if movie_id not in self._catalogue().index:
            raise UnknownMovieError(f"unknown movie id {movie_id}: it is not in the materialized catalogue "
                                    f"(tmdb_movie_info_kr in {self.data_dir})")
        row = self._rows([movie_id])[0]
        return {key: row[key] for key in ("movie_id", "title", "year")}

    def _fill(self) -> np.ndarray:
        """Every movie id seen in the ratings (the ids the study's random fill draws from)."""
        if self._fill_ids is None:
            table = pq.read_table(self._require_asset("movielens_ratings"), columns=["movieId"])
            self._fill_ids = np.asarray(pc.unique(table.column("movieId")).to_numpy(), dtype=np.int64)
        return self._fill_ids

    def _series(self, fill: np.ndarray) -> SeriesRecommender:
        if self._series_catalog is None:
            try:
                self._series_catalog = self.movie_db.series_catalog()
            except MovieDatabaseError as exc:
                message = str(exc).splitlines()[0]
                if "does not exist" in message:
                    raise MissingStateError(f"the movie table is missing in {self.movie_db.masked_url}; "
                                            f"{_materialize_hint('movie_table')}") from None
                raise ServingError(message) from None
        return SeriesRecommender(self._series_catalog, fill, seed=self.seed)

    # ------------------------------------------------------------------ questions

    def similar(self, movie_id: int, k: int = 10, strategy: str = "vector") -> list[dict[str, Any]]:
        """k movies like ``movie_id`` (never itself), best first, by one of :data:`STRATEGIES`.

        - ``vector``: the nearest overview embeddings, with their cosine scores; fewer than k when
          the collection has fewer other points. A movie without a vector (no Korean overview) is
          an error: try ``series`` or ``random``.
        - ``series``: the other films of its series, newest first, then random ids (the study's
          fill, from every movie seen in the ratings); no scores.
        - ``series_vector``: the series films, then the nearest embeddings (with scores), then
          random ids.
        - ``random``: k random ids (seeded: the same answer every time); no scores.
        """
        movie_id = _check_id(movie_id, "movie id")
        k = check_k(k)
        choices = self.strategies()
        if strategy not in choices:
            raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(choices)}")
        self.movie(movie_id)  # unknown id: a clear error before anything else is read
        if strategy not in STUDY_STRATEGIES:
            return self._similar_from_model(movie_id, k, strategy)
        prev = np.array([movie_id], dtype=np.int64)
        scores: dict[int, float] = {}

        def neighbours(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            session, _ = self._vectors()
            found, found_scores = session.neighbours(self.collection, ids, n)
            for hit, score in zip(found[0].tolist(), found_scores[0].tolist(), strict=True):
                if hit != PAD:
                    scores[int(hit)] = float(score)
            return found, found_scores

        if strategy == "vector":
            session, _ = self._vectors()
            if not session.retrieve(self.collection, prev):
                title = self._rows(prev)[0]["title"]
                raise ServingError(f"movie {movie_id}" + (f" ({title})" if title else "")
                                   + " has no overview vector (no Korean overview was embedded); "
                                   "try the series or random strategy")
            # no random fill: only true neighbours, each with its score
            row = VectorRecommender(neighbours, np.empty(0, dtype=np.int64), seed=self.seed).recommend(prev, k)[0]
        else:
            fill = self._fill()
            fill = fill[fill != movie_id]  # the answer never holds the movie itself
            if strategy == "random":
                row = RandomRecommender(fill, seed=self.seed).recommend(prev, min(k, len(fill)))[0]
            elif strategy == "series":
                row = self._series(fill).recommend(prev, k)[0]
            else:
                recommender = SeriesVectorRecommender(self._series(fill), neighbours, fill, seed=self.seed)
                row = recommender.recommend(prev, k)[0]
        row = [int(i) for i in row if i != PAD and i != movie_id]
        return self._rows(row, [scores.get(i) for i in row] if strategy in ("vector", "series_vector") else None)

    def strategies(self) -> tuple[str, ...]:
        """The strategy names :meth:`similar` accepts: the study's four, then every other registered one."""
        return (*STUDY_STRATEGIES, *(s.name for s in self.registry if s.name not in STUDY_STRATEGIES))

    def _model_state(self, name: str) -> dict[str, np.ndarray]:
        asset = f"{name}_model"
        path = stored_value_path(self.data_dir, [asset])
        if path is None or path.suffix != ".npz":
            raise MissingStateError(f"asset {asset} is not materialized in {self.data_dir} "
                                    f"({settings.DATA_DIR_ENV}); {_materialize_hint(asset)}")
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}

    def _stored_recommender(self, name: str):
        """(the registered strategy ``name``'s recommender loaded from its stored model and its parts',
        that model's state)."""
        strategy = by_name(self.registry)[name]
        parts = {part: self._model_state(part) for part in all_parts(strategy, self.registry)}
        state = self._model_state(name)

        def neighbours(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            session, _ = self._vectors()
            return session.neighbours(self.collection, ids, n)

        return strategy.recommender(state, QueryContext(seed=self.seed, neighbours=neighbours, parts=parts)), state

    def _similar_from_model(self, movie_id: int, k: int, name: str) -> list[dict[str, Any]]:
        """A registered strategy's picks from its stored model (and its parts'), the movie itself excluded."""
        recommender, _ = self._stored_recommender(name)
        row = recommender.recommend(np.array([movie_id], dtype=np.int64), k + 1)[0]
        return self._rows([int(i) for i in row if i != PAD and i != movie_id][:k])

    def _user_from_model(self, rated: np.ndarray, k: int, name: str) -> list[dict[str, Any]]:
        """A registered strategy's picks for a user whose ratings (oldest first) are ``rated``."""
        recommender, state = self._stored_recommender(name)
        seen = set(rated.tolist())
        depth = k + len(seen)  # enough to drop every rated movie and keep k
        if "fill" in state:  # the random fill draws distinct ids: never more than it has
            depth = min(depth, len(state["fill"]))
        query = queries_from_histories([rated])
        row = recommender.recommend_queries(query, depth)[0] if hasattr(recommender, "recommend_queries") \
            else recommender.recommend(query.prev, depth)[0]
        return self._rows([int(i) for i in row if i != PAD and int(i) not in seen][:k])

    def search(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        """The k movies whose overview embedding is nearest to ``text``, with cosine scores.

        ``text`` is embedded by the configured embedder, which must be the model the collection was
        built with (:class:`ModelMismatchError` otherwise: another model's vectors are meaningless
        in this space).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("search text must not be empty")
        k = check_k(k)
        session, info = self._vectors()
        model = self.embedder.model_id()
        if info.get("model") != model:
            raise ModelMismatchError(
                f"the collection {self.collection!r} holds vectors of model {info.get('model')!r}, but the "
                f"configured embedder is {model!r}: texts must be embedded with the collection's model "
                "(set OPENAI_API_KEY/RCMD_EMBEDDING_MODEL as when movie_vectors was materialized, "
                "or re-materialize movie_vectors with this model)"
            )
        query = self.embedder.embed([text.strip()])
        ids, scores = session.search(self.collection, query, k)
        return self._rows(ids[0], scores[0])

    def user_history(self, user_id: int) -> pd.DataFrame:
        """The user's ratings (``movieId``, ``rating``, ``timestamp``), oldest first, ties by movieId."""
        user_id = _check_id(user_id, "user id")
        path = self._require_asset("movielens_ratings")
        table = pq.read_table(path, columns=["userId", "movieId", "rating", "timestamp"],
                              filters=[("userId", "=", user_id)])
        frame = table.to_pandas()
        if frame.empty:
            raise UnknownUserError(f"unknown user id {user_id}: no ratings of this user in movielens_ratings "
                                   f"({self.data_dir})")
        frame = frame.sort_values(["timestamp", "movieId"], kind="stable").reset_index(drop=True)
        return frame[["movieId", "rating", "timestamp"]]

    def user(self, user_id: int, k: int = 10, recent: int = 10, strategy: str = "vector") -> list[dict[str, Any]]:
        """k movies for a user; every movie the user rated is excluded.

        ``vector`` (default): nearest to the L2-normalised mean vector of the ``recent`` most
        recently rated movies that have a vector, with cosine scores. Any other of
        :meth:`strategies`: the strategy's stored model answers one query, the user's whole
        history (oldest first, the last rated movie as the previous movie); no scores.
        """
        user_id = _check_id(user_id, "user id")
        k, recent = check_k(k), check_k(recent, "recent")
        choices = self.strategies()
        if strategy not in choices:
            raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(choices)}")
        history = self.user_history(user_id)
        rated = history["movieId"].astype("int64").to_numpy()
        if strategy != "vector":
            return self._user_from_model(rated, k, strategy)
        session, _ = self._vectors()
        vectors = session.retrieve(self.collection, rated)
        newest_first = list(dict.fromkeys(int(m) for m in rated[::-1]))
        basis = [m for m in newest_first if m in vectors][:recent]
        if not basis:
            raise ServingError(f"user {user_id} rated {len(newest_first)} movie(s), none of which has an overview "
                               "vector: nothing to recommend from")
        mean = np.mean([vectors[m] for m in basis], axis=0, dtype=np.float64)
        norm = float(np.linalg.norm(mean))
        if not norm > 1e-12:
            raise ServingError(f"the vectors of user {user_id}'s recent movies cancel out: no direction to search")
        query = (mean / norm).astype(np.float32)[None, :]
        ids, scores = session.search(self.collection, query, k, exclude=[set(newest_first)])
        return self._rows(ids[0], scores[0])
