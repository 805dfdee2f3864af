"""The TMDB client: parsing, the snapshot reader, and the HTTP client against a real local server.

Every HTTP test talks over real sockets to ``fake_tmdb_server.FakeTmdbServer`` (127.0.0.1, free
port) with faults injected per TMDB id; backoffs are tiny so the file runs in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest
from dagster import DagsterInstance, EnvVar, asset, materialize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcmd_pipeline.resources.tmdb import (
    FetchReport,
    HttpTmdbClient,
    SnapshotTmdbClient,
    TmdbAuthError,
    TmdbClient,
    TmdbError,
    TmdbRecordError,
    parse_movie_details,
    tmdb_client_from_environment,
)
from rcmd_pipeline_tests.fake_tmdb_server import (
    FakeTmdbServer,
    drop,
    html_error,
    movie_body,
    not_json,
    server_error,
    slow,
    too_many_requests,
    unauthorized,
)

REPO = Path(__file__).resolve().parent.parent
DEMO_SNAPSHOT = REPO / "data" / "demo" / "tmdb" / "ko-KR"
SECRET = "s3cr3t-api-key-0123456789abcdef"


@pytest.fixture
def start_server():
    servers = []

    def start(bodies, **kwargs) -> FakeTmdbServer:
        server = FakeTmdbServer(bodies, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def bodies_for(tmdb_ids) -> dict[int, dict]:
    return {t: movie_body(t) for t in tmdb_ids}


def items_for(tmdb_ids) -> list[tuple[int, int]]:
    """movieId = tmdbId - 1000 (distinct numbers, so a mix-up would show)."""
    return [(t - 1000, t) for t in tmdb_ids]


def client_for(server: FakeTmdbServer, **overrides) -> HttpTmdbClient:
    settings_ = dict(base_url=server.url, read_access_token="test-token", requests_per_second=1000.0,
                     max_concurrency=8, max_retries=3, timeout_seconds=2.0, backoff_base_seconds=0.01,
                     backoff_max_seconds=0.05)
    settings_.update(overrides)
    return HttpTmdbClient(**settings_)


def assert_consistent(report: FetchReport) -> None:
    assert report.requested == report.from_cache + report.fetched + report.not_found + len(report.failed)


# --------------------------------------------------------------------------- parse_movie_details


def test_parse_flattens_toy_story_from_the_demo_snapshot():
    body = json.loads((DEMO_SNAPSHOT / "862.json").read_text(encoding="utf-8"))
    record = parse_movie_details(1, body)
    assert record == {
        "movieId": 1, "tmdbId": 862, "title": "토이 스토리", "original_title": "Toy Story",
        "original_language": "en", "overview": body["overview"], "tagline": body["tagline"],
        "release_date": "1995-10-30", "runtime": 81, "imdb_id": "tt0114709", "adult": False,
        "poster_path": "", "collection_id": 10194, "collection_name": "토이 스토리 시리즈",
        "genres": "애니메이션|코미디|가족", "vote_count": body["vote_count"],
    }


def test_parse_optional_fields_missing_or_null_get_neutral_values():
    minimal = parse_movie_details(7, {"id": 70, "title": "제목"})
    assert minimal == {
        "movieId": 7, "tmdbId": 70, "title": "제목", "original_title": "", "original_language": "",
        "overview": "", "tagline": "", "release_date": None, "runtime": None, "imdb_id": "",
        "adult": False, "poster_path": "", "collection_id": 0, "collection_name": "", "genres": "",
        "vote_count": None,
    }
    nulls = movie_body(70, title="제목", overview=None, tagline=None, release_date="", runtime=0,
                       imdb_id=None, adult=None, poster_path=None, belongs_to_collection=None, genres=None)
    record = parse_movie_details(7, nulls)
    assert (record["overview"], record["release_date"], record["runtime"], record["collection_id"],
            record["genres"], record["adult"]) == ("", None, None, 0, "", False)
    record = parse_movie_details(7, movie_body(70, runtime=95.0, genres=[], belongs_to_collection={"id": 5}))
    assert (record["runtime"], record["genres"], record["collection_id"], record["collection_name"]) == (95, "", 5, "")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "x"}, "'id'"),
        ({"id": None, "title": "x"}, "'id'"),
        ({"id": "862", "title": "x"}, "'id'"),
        ({"id": True, "title": "x"}, "'id'"),
        ({"id": 862}, "'title'"),
        ({"id": 862, "title": 5}, "'title'"),
        ({"id": 862, "title": "  "}, "'title'"),
        ({"id": 862, "title": "x", "overview": ["a"]}, "'overview'"),
        ({"id": 862, "title": "x", "release_date": "30/10/1995"}, "'release_date'"),
        ({"id": 862, "title": "x", "release_date": "1995-1-3"}, "'release_date'"),
        ({"id": 862, "title": "x", "runtime": "81"}, "'runtime'"),
        ({"id": 862, "title": "x", "runtime": -1}, "'runtime'"),
        ({"id": 862, "title": "x", "adult": "no"}, "'adult'"),
        ({"id": 862, "title": "x", "belongs_to_collection": "Toy Story"}, "'belongs_to_collection'"),
        ({"id": 862, "title": "x", "belongs_to_collection": {"name": "Toy Story"}}, "'belongs_to_collection.id'"),
        ({"id": 862, "title": "x", "genres": "Animation"}, "'genres'"),
        ({"id": 862, "title": "x", "genres": [{"id": 16}]}, "'genres'"),
        ({"id": 862, "title": "x", "vote_count": "17"}, "'vote_count'"),
        ({"id": 862, "title": "x", "vote_count": -3}, "'vote_count'"),
    ],
)
def test_parse_rejects_missing_or_mistyped_fields_naming_movie_and_field(body, field):
    with pytest.raises(TmdbRecordError, match=rf"movieId 42\b.*{field}") as info:
        parse_movie_details(42, body)
    assert info.value.movie_id == 42
    assert isinstance(info.value, TmdbError)


def test_parse_rejects_a_body_that_is_not_an_object():
    with pytest.raises(TmdbRecordError, match=r"movieId 3: expected a JSON object, got list"):
        parse_movie_details(3, [1, 2])


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "name", "x"]), inner,
                                                                max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["id", "title", "original_title", "overview", "tagline", "release_date", "runtime",
                         "imdb_id", "adult", "poster_path", "belongs_to_collection", "genres", "other"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.booleans(), changes=st.dictionaries(_keys, _json_values, max_size=4))
def test_parse_never_fails_with_anything_but_a_record_error(base, changes):
    body = {**(movie_body(99) if base else {}), **changes}
    try:
        record = parse_movie_details(1, body)
    except TmdbRecordError as exc:
        assert "movieId 1" in str(exc)
        return
    assert isinstance(record["title"], str) and record["title"].strip()
    assert record["runtime"] is None or (isinstance(record["runtime"], int) and record["runtime"] > 0)
    assert isinstance(record["collection_id"], int) and isinstance(record["genres"], str)


# --------------------------------------------------------------------------- snapshot client


def test_snapshot_client_reads_the_demo_data_and_counts_missing_files_as_not_found(tmp_path):
    client = SnapshotTmdbClient(snapshot_dir=str(DEMO_SNAPSHOT))
    assert isinstance(client, TmdbClient)
    records, report = client.fetch_details([(1, 862), (3114, 863), (999_999, 999_999_999)], tmp_path / "unused")
    assert records[1]["collection_id"] == 10194 and records[1]["tmdbId"] == 862
    assert set(records) == {1, 3114}
    assert (report.requested, report.from_cache, report.fetched, report.not_found, report.failed) == (3, 0, 2, 1, [])
    assert not (tmp_path / "unused").exists()


def test_snapshot_client_counts_bad_files_as_failed_with_the_movie_id(tmp_path):
    (tmp_path / "1.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "2.json").write_text(json.dumps({"id": 2}), encoding="utf-8")
    (tmp_path / "3.json").write_text(json.dumps(movie_body(4)), encoding="utf-8")  # someone else's body
    (tmp_path / "5.json").write_text(json.dumps(movie_body(5)), encoding="utf-8")
    records, report = SnapshotTmdbClient(snapshot_dir=str(tmp_path)).fetch_details(
        [(11, 1), (12, 2), (13, 3), (15, 5)], tmp_path)
    assert set(records) == {15}
    reasons = dict(report.failed)
    assert set(reasons) == {11, 12, 13}
    assert "movieId 11" in reasons[11] and "not valid JSON" in reasons[11]
    assert "movieId 12" in reasons[12] and "'title'" in reasons[12]
    assert "movieId 13" in reasons[13] and "expected 3" in reasons[13]
    assert_consistent(report)


def test_snapshot_client_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TmdbError, match=r"nowhere does not exist.*TMDB_READ_ACCESS_TOKEN or TMDB_API_KEY"):
        SnapshotTmdbClient(snapshot_dir=str(tmp_path / "nowhere")).fetch_details([(1, 862)], tmp_path)


# --------------------------------------------------------------------------- HTTP client: normal runs


def test_bearer_token_happy_path_caches_and_serves_the_next_run_from_cache(start_server, tmp_path, caplog):
    ids = list(range(1001, 1031))
    server = start_server(bodies_for(ids), bearer="test-token")
    client = client_for(server)
    caplog.set_level(logging.INFO)
    records, report = client.fetch_details(items_for(ids), tmp_path / "cache", log=logging.getLogger("t"))
    assert records == {t - 1000: parse_movie_details(t - 1000, movie_body(t)) for t in ids}
    assert (report.requested, report.fetched, report.from_cache, report.not_found, report.failed) == (30, 30, 0, 0, [])
    assert report.requests_sent == 30 and report.retries == 0 and report.requests_per_second > 0
    for request in server.requests():
        assert request.headers["authorization"] == "Bearer test-token"
        assert request.query == {"language": "ko-KR"}
        assert request.path.startswith("/3/movie/")
    # The cache holds the bodies byte for byte as served, and is itself a valid snapshot folder.
    assert (tmp_path / "cache" / "1001.json").read_bytes() == json.dumps(movie_body(1001), ensure_ascii=False).encode()
    assert SnapshotTmdbClient(snapshot_dir=str(tmp_path / "cache")).fetch_details(items_for(ids), "")[0] == records
    assert any("30 fetched" in r.getMessage() for r in caplog.records)

    server.reset_log()
    again, report2 = client.fetch_details(items_for(ids), tmp_path / "cache")
    assert again == records and server.total() == 0
    assert (report2.from_cache, report2.fetched, report2.requests_sent) == (30, 0, 0)


def test_api_key_goes_in_the_query_and_never_into_logs_reasons_or_repr(start_server, tmp_path, caplog):
    ids = [2001, 2002, 2003, 2004]
    server = start_server(bodies_for(ids), api_key=SECRET,
                          faults={2003: [drop()] * 10, 2004: [server_error(503)] * 10})
    client = client_for(server, read_access_token=None, api_key=SECRET, max_retries=1)
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request line (with the query) at DEBUG
    records, report = client.fetch_details(items_for(ids), tmp_path, log=logging.getLogger("t"))
    assert set(records) == {1001, 1002}
    assert {m for m, _ in report.failed} == {1003, 1004}
    ok = server.requests(2001)[0]
    assert ok.query == {"language": "ko-KR", "api_key": SECRET} and "authorization" not in ok.headers
    texts = [r.getMessage() for r in caplog.records] + [caplog.text] + [reason for _, reason in report.failed]
    assert any("/3/movie/2001?language=ko-KR&api_key=***" in t for t in texts)  # urllib3's line, redacted
    assert not [t for t in texts if SECRET in t]
    assert SECRET not in repr(client) and SECRET not in str(client) and SECRET not in repr(report)


def test_api_key_is_redacted_from_connection_errors_that_quote_the_url(tmp_path, caplog):
    # Nothing listens on port 9 ("discard"): requests' error text quotes the full URL, key included.
    client = HttpTmdbClient(base_url="http://127.0.0.1:9", api_key=SECRET, max_retries=1, timeout_seconds=1.0,
                            backoff_base_seconds=0.01, backoff_max_seconds=0.02)
    caplog.set_level(logging.DEBUG)
    _, report = client.fetch_details([(1, 862)], tmp_path, log=logging.getLogger("t"))
    [(movie_id, reason)] = report.failed
    assert movie_id == 1 and "gave up after 2 attempts" in reason and "Connection" in reason
    assert "api_key=***" in reason and SECRET not in reason and SECRET not in caplog.text


def test_duplicate_tmdb_ids_are_fetched_once_for_every_movie(start_server, tmp_path):
    server = start_server(bodies_for([3001]))
    records, report = client_for(server).fetch_details([(1, 3001), (2, 3001), (1, 3001)], tmp_path)
    assert server.total() == 1
    assert set(records) == {1, 2} and records[2]["movieId"] == 2 and records[2]["tmdbId"] == 3001
    assert (report.requested, report.fetched) == (2, 2)


def test_bad_items_are_rejected_before_any_request(start_server, tmp_path):
    server = start_server({})
    client = client_for(server)
    with pytest.raises(ValueError, match=r"items\[1\].*\(movieId, tmdbId\)"):
        client.fetch_details([(1, 10), (2, None)], tmp_path)
    with pytest.raises(ValueError, match=r"movieId 1 is listed with two tmdbIds"):
        client.fetch_details([(1, 10), (1, 11)], tmp_path)
    assert server.total() == 0


# --------------------------------------------------------------------------- HTTP client: faults


def test_429_waits_for_retry_after_then_succeeds(start_server, tmp_path):
    server = start_server(bodies_for([4001, 4002]), faults={4001: [too_many_requests(retry_after=1)]})
    records, report = client_for(server, backoff_max_seconds=5).fetch_details(items_for([4001, 4002]), tmp_path)
    first, second = server.requests(4001)
    assert second.time - first.time >= 0.95
    assert set(records) == {3001, 3002} and report.retries == 1 and report.requests_sent == 3


def test_retry_after_is_capped_by_backoff_max(start_server, tmp_path):
    server = start_server(bodies_for([4101]), faults={4101: [too_many_requests(retry_after=120)]})
    started = time.monotonic()
    records, _ = client_for(server, backoff_max_seconds=0.2).fetch_details(items_for([4101]), tmp_path)
    assert set(records) == {3101} and time.monotonic() - started < 2


def test_5xx_and_html_error_pages_are_retried_then_succeed(start_server, tmp_path):
    server = start_server(bodies_for([5001, 5002]),
                          faults={5001: [server_error(500), server_error(503)], 5002: [html_error(502)]})
    records, report = client_for(server).fetch_details(items_for([5001, 5002]), tmp_path)
    assert set(records) == {4001, 4002}
    assert server.counts()[5001] == 3 and server.counts()[5002] == 2
    assert (report.retries, report.requests_sent, report.failed) == (3, 5, [])


def test_slow_response_within_the_timeout_is_waited_for(start_server, tmp_path):
    server = start_server(bodies_for([6001]), faults={6001: [slow(0.4)]})
    records, report = client_for(server, timeout_seconds=2.0).fetch_details(items_for([6001]), tmp_path)
    assert set(records) == {5001} and server.counts()[6001] == 1 and report.retries == 0


def test_response_slower_than_the_timeout_is_retried(start_server, tmp_path):
    server = start_server(bodies_for([6101]), faults={6101: [slow(1.0)]})
    records, report = client_for(server, timeout_seconds=0.3).fetch_details(items_for([6101]), tmp_path)
    assert set(records) == {5101} and server.counts()[6101] == 2 and report.retries == 1


def test_dropped_connection_is_retried(start_server, tmp_path):
    server = start_server(bodies_for([7001, 7002]), faults={7001: [drop(), drop()]})
    records, report = client_for(server).fetch_details(items_for([7001, 7002]), tmp_path)
    assert set(records) == {6001, 6002}
    assert [r.answer for r in server.requests(7001)] == ["drop", "drop", "200"] and report.retries == 2


def test_retries_are_bounded_and_end_in_failed_with_a_reason(start_server, tmp_path):
    server = start_server(bodies_for([8001, 8002]), faults={8001: [server_error(500)] * 20})
    records, report = client_for(server, max_retries=2).fetch_details(items_for([8001, 8002]), tmp_path)
    assert set(records) == {7002}
    assert server.counts()[8001] == 3 and report.retries == 2
    assert report.failed == [(7001, "movieId 7001 (tmdbId 8001): gave up after 3 attempts; last: HTTP 500 "
                                    "(Internal error.)")]
    assert not (tmp_path / "8001.json").exists()
    assert_consistent(report)
    server.faults.clear()  # TMDB recovered: the next run asks again for the failed movie only
    server.reset_log()
    records, report = client_for(server).fetch_details(items_for([8001, 8002]), tmp_path)
    assert set(records) == {7001, 7002} and dict(server.counts()) == {8001: 1}


def test_404_is_recorded_not_retried_and_not_asked_again_until_it_expires(start_server, tmp_path):
    server = start_server(bodies_for([9001]))
    client = client_for(server)
    records, report = client.fetch_details(items_for([9001, 9002]), tmp_path)
    assert set(records) == {8001} and report.not_found == 1 and report.failed == []
    assert server.counts()[9002] == 1 and report.retries == 0
    marker = tmp_path / "not_found" / "9002"
    assert marker.exists()

    server.reset_log()
    _, report = client.fetch_details(items_for([9001, 9002]), tmp_path)
    assert server.total() == 0 and (report.from_cache, report.not_found) == (1, 1)

    # After retry_not_found_after_days TMDB is asked again; the movie has appeared meanwhile.
    old = time.time() - 31 * 86400
    os.utime(marker, (old, old))
    server.state.bodies[9002] = movie_body(9002)
    records, report = client.fetch_details(items_for([9001, 9002]), tmp_path)
    assert set(records) == {8001, 8002} and dict(server.counts()) == {9002: 1}
    assert not marker.exists() and (tmp_path / "9002.json").exists()


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (not_json(), "not JSON"),
        (html_error(200), "not JSON"),
        (json.dumps({"id": 10001, "overview": "no title"}).encode(), "'title'"),
        (json.dumps(movie_body(1)).encode(), "has id 1, expected 10001"),
        (b"[]", "expected a JSON object"),
    ],
)
def test_bad_200_bodies_fail_with_the_movie_id_and_are_not_retried_or_cached(start_server, tmp_path, served,
                                                                              expected):
    bodies = bodies_for([10002])
    faults = {}
    if isinstance(served, bytes):
        bodies[10001] = served
    else:
        bodies[10001] = movie_body(10001)
        faults[10001] = [served]
    server = start_server(bodies, faults=faults)
    records, report = client_for(server).fetch_details(items_for([10001, 10002]), tmp_path)
    assert set(records) == {9002}
    [(movie_id, reason)] = report.failed
    assert movie_id == 9001 and "movieId 9001" in reason and expected in reason and "not retried" in reason
    assert server.counts()[10001] == 1 and report.retries == 0
    assert not (tmp_path / "10001.json").exists()


def test_rate_limit_holds_across_all_threads(start_server, tmp_path):
    ids = list(range(11001, 11061))
    server = start_server(bodies_for(ids))
    started = time.monotonic()
    records, report = client_for(server, requests_per_second=40.0, max_concurrency=16).fetch_details(
        items_for(ids), tmp_path)
    elapsed = time.monotonic() - started
    assert len(records) == 60
    assert 1.2 <= elapsed < 3.0, elapsed
    times = sorted(r.time for r in server.requests())
    # Smooth: no half-second window holds more than half a second's worth plus the small burst.
    assert max(sum(1 for t in times if t0 <= t < t0 + 0.5) for t0 in times) <= 20 + 4 + 1
    assert 30 <= report.requests_per_second <= 45


# --------------------------------------------------------------------------- wrong credential


def test_401_stops_everything_and_the_key_appears_nowhere(start_server, tmp_path, caplog):
    ids = list(range(12001, 12041))
    server = start_server(bodies_for(ids), api_key="the-right-key")
    client = client_for(server, read_access_token=None, api_key=SECRET, max_concurrency=4)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TmdbAuthError) as info:
        client.fetch_details(items_for(ids), tmp_path, log=logging.getLogger("t"))
    message = str(info.value)
    assert "TMDB_API_KEY" in message and "HTTP 401" in message
    assert server.total() <= 4  # the requests already in flight, nothing after
    everything = "\n".join([
        message, repr(info.value), "".join(traceback.format_exception(info.value)), repr(info.value.report),
        caplog.text, *(r.getMessage() for r in caplog.records), repr(client), str(client),
    ])
    assert SECRET not in everything


def test_401_after_some_movies_keeps_what_was_fetched_and_names_the_token_variable(start_server, tmp_path):
    ids = list(range(13001, 13021))
    server = start_server(bodies_for(ids), faults={13011: [unauthorized()]})
    with pytest.raises(TmdbAuthError, match="TMDB_READ_ACCESS_TOKEN") as info:
        client_for(server, max_concurrency=1).fetch_details(items_for(ids), tmp_path)
    assert sorted(server.counts()) == ids[:11]  # in order, one at a time, and nothing after the 401
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{t}.json" for t in ids[:10]]
    assert info.value.report.fetched == 10


def test_403_with_tmdbs_invalid_key_body_is_an_auth_error(start_server, tmp_path):
    server = start_server(bodies_for([14001]), faults={14001: [unauthorized(403)]})
    with pytest.raises(TmdbAuthError, match=r"HTTP 403: Invalid API key.*TMDB_READ_ACCESS_TOKEN"):
        client_for(server).fetch_details(items_for([14001]), tmp_path)


def test_no_credential_is_an_auth_error_naming_both_variables(tmp_path):
    with pytest.raises(TmdbAuthError, match="TMDB_READ_ACCESS_TOKEN.*TMDB_API_KEY"):
        HttpTmdbClient(read_access_token=EnvVar("RCMD_TEST_UNSET_VARIABLE")).fetch_details([(1, 862)], tmp_path)


# --------------------------------------------------------------------------- cache: refresh and resume


def test_max_age_refetches_old_bodies_and_serves_the_old_one_when_refresh_fails(start_server, tmp_path):
    ids = [15001, 15002]
    server = start_server(bodies_for(ids))
    client_for(server).fetch_details(items_for(ids), tmp_path)
    old = time.time() - 3 * 86400
    for t in ids:
        os.utime(tmp_path / f"{t}.json", (old, old))
    server.reset_log()
    server.state.bodies[15001] = movie_body(15001, overview="새 줄거리")
    server.faults[15002] = [server_error(500)] * 10
    records, report = client_for(server, max_age_days=1.0, max_retries=1).fetch_details(items_for(ids), tmp_path)
    assert records[14001]["overview"] == "새 줄거리"  # refreshed
    assert records[14002] == parse_movie_details(14002, movie_body(15002))  # refresh failed: old body
    assert (report.fetched, report.from_cache, report.stale, report.failed) == (1, 1, 1, [])
    assert dict(server.counts()) == {15001: 1, 15002: 2}


def test_an_unusable_cache_file_is_fetched_again(start_server, tmp_path):
    server = start_server(bodies_for([16001]))
    (tmp_path / "16001.json").write_text('{"id": 16001}', encoding="utf-8")
    records, report = client_for(server).fetch_details(items_for([16001]), tmp_path)
    assert set(records) == {15001} and report.fetched == 1 and server.total() == 1


_KILLABLE_FETCH = textwrap.dedent("""
    import sys
    from rcmd_pipeline.resources.tmdb import HttpTmdbClient
    url, cache, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = HttpTmdbClient(base_url=url, read_access_token="run1", requests_per_second=30.0, max_concurrency=4,
                            backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    client.fetch_details([(t - 1000, t) for t in range(first, first + n)], cache)
    print("finished")
""")


@pytest.mark.slow
def test_a_run_killed_midway_resumes_and_fetches_each_movie_once(start_server, tmp_path):
    ids = list(range(17001, 17081))
    server = start_server(bodies_for(ids), default_fault=slow(0.02))
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_FETCH, server.url, str(cache), str(ids[0]), str(len(ids))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while server.total() < 25 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    cached = {int(p.stem) for p in cache.glob("*.json")}
    assert 0 < len(cached) < len(ids)
    for t in cached:  # nothing half-written: every file the killed run left is a whole body
        parse_movie_details(0, json.loads((cache / f"{t}.json").read_bytes()))

    records, report = client_for(server, read_access_token="run2").fetch_details(items_for(ids), cache)
    by_run: dict[str, list[int]] = {"Bearer run1": [], "Bearer run2": []}
    for request in server.requests():
        by_run[request.headers["authorization"]].append(request.tmdb_id)
    run1, run2 = by_run["Bearer run1"], by_run["Bearer run2"]
    assert len(run1) == len(set(run1)) and len(run2) == len(set(run2))  # no id twice within a run
    assert set(run2) == set(ids) - cached  # the restart asks only for what was not cached
    in_flight = set(run1) - cached  # sent when the process was killed, answer lost with it
    assert set(run1) & set(run2) == in_flight and len(in_flight) <= 4
    counts = server.counts()
    assert all(counts[t] == (2 if t in in_flight else 1) for t in ids)
    assert (report.from_cache, report.fetched, report.failed) == (len(cached), len(ids) - len(cached), [])

    uninterrupted, _ = client_for(server).fetch_details(items_for(ids), tmp_path / "fresh")
    assert records == uninterrupted and len(records) == len(ids)


# --------------------------------------------------------------------------- choosing from the environment


def test_environment_without_keys_gives_the_snapshot_client(tmp_path):
    client = tmdb_client_from_environment({"TMDB_API_KEY": "  "}, tmp_path)
    assert isinstance(client, SnapshotTmdbClient) and client.snapshot_dir == str(tmp_path)


def test_environment_with_a_key_gives_the_http_client_with_envvar_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("TMDB_API_KEY", SECRET)
    monkeypatch.delenv("TMDB_READ_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("TMDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TMDB_REQUESTS_PER_SECOND", "12.5")
    client = tmdb_client_from_environment(os.environ, tmp_path)
    assert isinstance(client, HttpTmdbClient)
    assert isinstance(client.api_key, EnvVar) and client.api_key.env_var_name == "TMDB_API_KEY"
    assert client.read_access_token is None
    assert (client.base_url, client.requests_per_second) == ("http://127.0.0.1:9", 12.5)
    assert SECRET not in repr(client) and SECRET not in str(client)
    # A mapping that is not the process environment: the value is used (EnvVar could not resolve it).
    other = tmdb_client_from_environment({"TMDB_READ_ACCESS_TOKEN": "tok-only-here"}, tmp_path)
    assert other.read_access_token == "tok-only-here" and "tok-only-here" not in repr(other)
    with pytest.raises(TmdbError, match=r"TMDB_REQUESTS_PER_SECOND='fast'.*number"):
        tmdb_client_from_environment({"TMDB_API_KEY": "k", "TMDB_REQUESTS_PER_SECOND": "fast"}, tmp_path)


def test_http_client_from_environment_works_inside_a_dagster_run(monkeypatch, start_server, tmp_path):
    server = start_server(bodies_for([18001, 18002]), api_key=SECRET)
    monkeypatch.setenv("TMDB_API_KEY", SECRET)
    monkeypatch.delenv("TMDB_READ_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("TMDB_BASE_URL", server.url)
    client = tmdb_client_from_environment(os.environ, tmp_path / "snapshot")

    @asset
    def tmdb_probe(context, tmdb: TmdbClient) -> dict:
        records, report = tmdb.fetch_details(items_for([18001, 18002]), tmp_path / "cache", log=context.log)
        context.add_output_metadata({"fetched": float(report.fetched)})
        return records

    with DagsterInstance.ephemeral() as instance:
        result = materialize([tmdb_probe], resources={"tmdb": client}, instance=instance)
        assert result.success
        entries = instance.all_logs(result.run_id)
        stored = "\n".join([repr(instance.get_run_by_id(result.run_id)),
                            *(f"{e.user_message} {e.dagster_event!r}" for e in entries)])
    assert set(result.output_for_node("tmdb_probe")) == {17001, 17002}
    assert server.requests(18001)[0].query["api_key"] == SECRET  # resolved from the EnvVar inside the run
    assert "/3/movie/<id>" in stored and SECRET not in stored


def test_max_age_days_from_the_environment_drives_the_nightly_refresh(tmp_path):
    from rcmd_pipeline.resources.tmdb import DEFAULT_MAX_AGE_DAYS, TmdbError, tmdb_client_from_environment

    base = {"TMDB_READ_ACCESS_TOKEN": "t"}
    assert tmdb_client_from_environment(base, tmp_path).max_age_days == DEFAULT_MAX_AGE_DAYS == 30.0
    assert tmdb_client_from_environment({**base, "TMDB_MAX_AGE_DAYS": "7"}, tmp_path).max_age_days == 7.0
    for bad, message in (("abc", "expected a number of days"), ("0", "must be greater than 0")):
        with pytest.raises(TmdbError, match=f"TMDB_MAX_AGE_DAYS='{bad}': {message}"):
            tmdb_client_from_environment({**base, "TMDB_MAX_AGE_DAYS": bad}, tmp_path)
