"""TMDB details read from JSON files (the demo data, or a copied HTTP cache): no key, no network."""

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import Field

from rcmd_pipeline.resources.tmdb.client import (
    API_KEY_ENV,
    LOGGED_FAILURES,
    READ_ACCESS_TOKEN_ENV,
    FetchReport,
    TmdbClient,
    failure,
    group_items,
    records_from_body,
)
from rcmd_pipeline.resources.tmdb.errors import TmdbError


class SnapshotTmdbClient(TmdbClient):
    """TMDB bodies read from ``<snapshot_dir>/<tmdbId>.json`` (the demo data, or a copied cache).

    A missing file means the movie is not on TMDB (``not_found``); an unreadable or invalid file is
    ``failed`` with the movie id. ``cache_dir`` is not used: the files are the cache.
    """

    snapshot_dir: str = Field(description="Folder of TMDB-shaped JSON bodies named <tmdbId>.json.")

    def fingerprint(self) -> str:
        """A hash of the snapshot folder's listing (each file's name, size and modification time):
        it changes when any file is added, removed or rewritten. About 0.3 s for 84,000 files."""
        digest = hashlib.sha256()
        with os.scandir(self.snapshot_dir) as entries:
            listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                             if e.name.endswith(".json") and e.is_file())
        for name, size, mtime in listing:
            digest.update(f"{name}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()[:24]

    def fetch_details(
        self, items: list[tuple[int, int]], cache_dir: str | Path, log=None
    ) -> tuple[dict[int, dict], FetchReport]:
        started = time.monotonic()
        folder = Path(self.snapshot_dir)
        if not folder.is_dir():
            raise TmdbError(
                f"TMDB snapshot folder {folder} does not exist; expected <tmdbId>.json files (TMDB "
                f"/3/movie bodies). Set {READ_ACCESS_TOKEN_ENV} or {API_KEY_ENV} to fetch from TMDB instead."
            )
        by_movie, by_tmdb = group_items(items)
        report = FetchReport(requested=len(by_movie))
        records: dict[int, dict] = {}
        for tmdb_id, movie_ids in by_tmdb.items():
            path = folder / f"{tmdb_id}.json"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                report.not_found += len(movie_ids)
                continue
            except OSError as exc:
                report.failed.extend(failure(m, tmdb_id, f"cannot read {path}: {exc}") for m in movie_ids)
                continue
            try:
                body = json.loads(raw)
            except ValueError as exc:
                report.failed.extend(failure(m, tmdb_id, f"{path} is not valid JSON ({exc})") for m in movie_ids)
                continue
            records_from_body(body, tmdb_id, movie_ids, records, report, "fetched")
        report.seconds = time.monotonic() - started
        if log is not None:
            log.info(f"TMDB snapshot {folder}: {report.summary()}")
            for _, reason in report.failed[:LOGGED_FAILURES]:
                log.warning(f"TMDB snapshot: {reason}")
        return records, report
