"""One TMDB ``/3/movie/{id}`` body -> one flat catalogue record, with an error naming the bad field."""

from datetime import date
from typing import Any, NoReturn

from rcmd_pipeline.resources.tmdb.errors import TmdbRecordError


def show(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_movie_details(movie_id: int, body) -> dict:
    """Validate one TMDB ``/3/movie/{id}`` body and flatten it into a catalogue record.

    Required: ``id`` (positive integer) and ``title`` (non-empty string). Every other field is
    optional: missing or ``null`` strings become ``''``, ``release_date``/``runtime`` become
    ``None`` (TMDB writes ``""`` and ``0`` for "unknown", which map to ``None`` too), a missing or
    ``null`` ``belongs_to_collection`` means "no series" (``collection_id`` 0, name ``''``).
    A present field of the wrong type raises :class:`TmdbRecordError` naming the movie and field,
    because a body that contradicts TMDB's schema is more likely an error page than a movie.
    """
    fields = _Fields(movie_id, _tmdb_id(movie_id, body), body)
    title = fields.text("title", required=True)
    release_date, runtime, adult = fields.release_date(), fields.runtime(), fields.adult()
    collection_id, collection_name = fields.collection()
    genres = fields.genres()
    vote_count = fields.count("vote_count")
    return {
        "movieId": int(movie_id),
        "tmdbId": fields.tmdb_id,
        "title": title,
        "original_title": fields.text("original_title"),
        "original_language": fields.text("original_language"),
        "overview": fields.text("overview"),
        "tagline": fields.text("tagline"),
        "release_date": release_date,
        "runtime": runtime,
        "imdb_id": fields.text("imdb_id"),
        "adult": adult,
        "poster_path": fields.text("poster_path"),
        "collection_id": collection_id,
        "collection_name": collection_name,
        "genres": genres,
        "vote_count": vote_count,
    }


def checked_record(movie_id: int, tmdb_id: int, body) -> dict:
    """:func:`parse_movie_details`, plus: the body must be the movie that was asked for."""
    record = parse_movie_details(movie_id, body)
    if record["tmdbId"] != tmdb_id:
        raise TmdbRecordError(movie_id, tmdb_id, "id", f"body has id {record['tmdbId']}, expected {tmdb_id}")
    return record


def _tmdb_id(movie_id: int, body) -> int:
    """The body's ``id``, checked first: every later error names it."""
    if not isinstance(body, dict):
        raise TmdbRecordError(movie_id, None, "(body)", f"expected a JSON object, got {type(body).__name__}")
    tmdb_id = body.get("id")
    if "id" not in body or tmdb_id is None:
        raise TmdbRecordError(movie_id, None, "id", "required field 'id' is missing")
    if isinstance(tmdb_id, bool) or not isinstance(tmdb_id, int) or tmdb_id < 1:
        raise TmdbRecordError(movie_id, None, "id", f"field 'id' must be a positive integer, got {show(tmdb_id)}")
    return tmdb_id


class _Fields:
    """Readers of one body's optional fields; each raises :class:`TmdbRecordError` on a wrong type."""

    def __init__(self, movie_id: int, tmdb_id: int, body: dict):
        self.movie_id, self.tmdb_id, self.body = movie_id, tmdb_id, body

    def fail(self, name: str, problem: str) -> NoReturn:
        raise TmdbRecordError(self.movie_id, self.tmdb_id, name, problem)

    def text(self, name: str, required: bool = False) -> str:
        value = self.body.get(name)
        if value is None:
            if required:
                self.fail(name, f"required field {name!r} is missing")
            return ""
        if not isinstance(value, str):
            self.fail(name, f"field {name!r} must be a string, got {type(value).__name__} {show(value)}")
        if required and not value.strip():
            self.fail(name, f"required field {name!r} is empty")
        return value

    def release_date(self) -> str | None:
        value = self.text("release_date").strip() or None
        if value is not None:
            try:
                date.fromisoformat(value)
                ok = len(value) == 10
            except ValueError:
                ok = False
            if not ok:
                self.fail("release_date", f"field 'release_date' must be 'YYYY-MM-DD' or empty, got {show(value)}")
        return value

    def runtime(self) -> int | None:
        value = self.body.get("runtime")
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail("runtime", f"field 'runtime' must be a whole number of minutes, got {show(value)}")
        return value or None

    def count(self, name: str) -> int | None:
        """A whole number >= 0 (TMDB's ``vote_count``), None when absent."""
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(name, f"field {name!r} must be a whole number >= 0, got {show(value)}")
        return value

    def adult(self) -> bool:
        value = self.body.get("adult")
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail("adult", f"field 'adult' must be true or false, got {show(value)}")
        return value

    def collection(self) -> tuple[int, str]:
        """(``collection_id``, ``collection_name``) of ``belongs_to_collection``; (0, '') for none."""
        value = self.body.get("belongs_to_collection")
        if value is None:
            return 0, ""
        if not isinstance(value, dict):
            self.fail("belongs_to_collection",
                      f"field 'belongs_to_collection' must be null or an object, got {show(value)}")
        cid = value.get("id")
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
            self.fail("belongs_to_collection.id",
                      f"field 'belongs_to_collection.id' must be a positive integer, got {show(cid)}")
        cname = value.get("name")
        if cname is not None and not isinstance(cname, str):
            self.fail("belongs_to_collection.name",
                      f"field 'belongs_to_collection.name' must be a string, got {show(cname)}")
        return cid, cname or ""

    def genres(self) -> str:
        """The genre names joined by ``|``."""
        value = self.body.get("genres")
        names: list[str] = []
        if value is None:
            return ""
        if not isinstance(value, list):
            self.fail("genres", f"field 'genres' must be a list of {{id, name}} objects, got {show(value)}")
        for genre in value:
            name = genre.get("name") if isinstance(genre, dict) else None
            if not isinstance(name, str):
                self.fail("genres", f"field 'genres' must hold {{id, name}} objects with a string name, "
                                    f"got {show(genre)}")
            names.append(name)
        return "|".join(names)


RECORD_COLUMNS = tuple(parse_movie_details(1, {"id": 1, "title": "-"}))
"""The columns of a record, in order (read off :func:`parse_movie_details`, so they cannot disagree)."""
