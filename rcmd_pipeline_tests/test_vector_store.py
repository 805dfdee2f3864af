"""The vector store contract, run against both implementations.

``embedded``: :class:`EmbeddedQdrantStore` (qdrant-edge) in ``tmp_path``. ``server``:
:class:`QdrantServerStore` on ``QdrantClient(":memory:")``, which makes the same client calls as a
Qdrant server (aliases, collection metadata, query_batch_points). The hand-made vectors lie on a
circle, so the nearest neighbours by cosine are the nearest angles and every score is cos(angle).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dagster import EnvVar

from rcmd_pipeline.resources.vector_store import (
    EmbeddedQdrantStore,
    QdrantServerStore,
    VectorStoreConnectionError,
    VectorStoreError,
    VectorStoreMismatchError,
    vector_store_from_environment,
)

COLLECTION = "movie_emb_test"
MODEL = "test/circle-v1"
# ids and angles (degrees) of the hand-made points
ANGLES = {11: 0.0, 12: 10.0, 13: 25.0, 14: 45.0, 15: 70.0, 16: 100.0, 17: 145.0, 18: 205.0}  # no ties
IDS = np.array(sorted(ANGLES), dtype=np.int64)


def circle_vectors(angles, dimension: int = 4, scale: float = 1.0) -> np.ndarray:
    """Points at these angles in the first two coordinates (other coordinates 0), scaled."""
    rad = np.radians(np.asarray(angles, dtype=np.float64))
    out = np.zeros((len(rad), dimension), dtype=np.float32)
    out[:, 0], out[:, 1] = np.cos(rad) * scale, np.sin(rad) * scale
    return out


VECTORS = circle_vectors([ANGLES[i] for i in IDS], scale=3.0)  # not unit length: the store normalises
PAYLOADS = [{"title": f"영화 {i}", "series_id": np.int64(i % 3), "year": 2000 + int(i)} for i in IDS]


def expected_neighbours(point_id: int, k: int) -> tuple[list[int], list[float]]:
    others = [(abs(((ANGLES[point_id] - a) + 180) % 360 - 180), o) for o, a in ANGLES.items() if o != point_id]
    others.sort()
    return [o for _, o in others[:k]], [float(np.cos(np.radians(d))) for d, _ in others[:k]]


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path: Path):
    if request.param == "embedded":
        return EmbeddedQdrantStore(path=str(tmp_path / "vectors"))
    return QdrantServerStore(location=":memory:")


def reopened(store):
    """A store object for the same data: a new one on the same folder, or the same in-memory client."""
    if isinstance(store, EmbeddedQdrantStore):
        return EmbeddedQdrantStore(path=store.path)
    return store


def generations(store) -> list[str]:
    """Every generation physically present (folders, or collections behind the alias)."""
    if isinstance(store, EmbeddedQdrantStore):
        folder = Path(store.path, COLLECTION)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    client = store._memory_client
    return sorted(c.name for c in client.get_collections().collections if c.name.startswith(COLLECTION))


def built(store):
    with store.open() as session:
        session.rebuild(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
    return store


# ----------------------------------------------------------------------------- the contract


def test_rebuild_then_info(store):
    with store.open() as session:
        assert session.info(COLLECTION) is None
        stats = session.rebuild(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        assert (stats["points"], stats["dimension"], stats["model"]) == (len(IDS), 4, MODEL)
        assert stats["generation"] == 1 and stats["seconds"] >= 0
        info = session.info(COLLECTION)
    assert {k: info[k] for k in ("points", "dimension", "model", "generation")} == {
        "points": len(IDS), "dimension": 4, "model": MODEL, "generation": 1}
    assert len(generations(store)) == 1


def test_upsert_creates_then_updates_and_retrieve(store):
    with store.open() as session:
        first = session.upsert(COLLECTION, IDS[:5], VECTORS[:5], PAYLOADS[:5], model=MODEL)
        assert first["created"] and session.info(COLLECTION)["points"] == 5
        # replace id 11's vector, add the rest
        moved = circle_vectors([90.0])
        session.upsert(COLLECTION, np.r_[11, IDS[5:]], np.vstack([moved, VECTORS[5:]]),
                       [PAYLOADS[0]] + PAYLOADS[5:], model=MODEL)
        info = session.info(COLLECTION)
        got = session.retrieve(COLLECTION, np.array([11, 12, 18, 999, -4]))
    assert info["points"] == len(IDS) and info["model"] == MODEL
    assert sorted(got) == [11, 12, 18]  # ids without a vector are absent
    assert got[11].dtype == np.float32
    np.testing.assert_allclose(got[11], moved[0], atol=1e-6)  # the replaced vector
    np.testing.assert_allclose(got[12], VECTORS[1] / 3.0, atol=1e-6)  # stored unit length (cosine)


def test_neighbours_exclude_self_in_order_with_scores(store):
    built(store)
    asked = np.array([11, 999, 14, 18, 11], dtype=np.int64)
    with store.open() as session:
        ids, scores = session.neighbours(COLLECTION, asked, 3)
        wide_ids, wide_scores = session.neighbours(COLLECTION, np.array([15]), 10)
        empty = session.neighbours(COLLECTION, np.array([], dtype=np.int64), 3)
    assert ids.shape == scores.shape == (5, 3) and ids.dtype == np.int64 and scores.dtype == np.float32
    for row, point_id in enumerate(asked):
        if point_id == 999:
            assert (ids[row] == -1).all() and np.isnan(scores[row]).all()
            continue
        want_ids, want_scores = expected_neighbours(int(point_id), 3)
        assert ids[row].tolist() == want_ids
        np.testing.assert_allclose(scores[row], want_scores, atol=1e-5)
    assert ids[0].tolist() == [12, 13, 14]  # by hand: 10, 25, 45 degrees away from 0
    # more neighbours asked than exist: all 7 others, then padding
    assert wide_ids[0, :7].tolist() == expected_neighbours(15, 7)[0] and (wide_ids[0, 7:] == -1).all()
    assert np.isnan(wide_scores[0, 7:]).all() and not np.isnan(wide_scores[0, :7]).any()
    assert empty[0].shape == (0, 3)


def test_search_with_exclusions(store):
    built(store)
    queries = circle_vectors([12.0, 12.0, 0.0, 0.0])
    queries[3] = 0.0  # an all-zero query has no direction: no results
    with store.open() as session:
        ids, scores = session.search(COLLECTION, queries, 3, exclude=[set(), {12, 11}, {11}, set()])
        plain, _ = session.search(COLLECTION, queries[:1], 2)
        with pytest.raises(VectorStoreMismatchError, match="4-d"):
            session.search(COLLECTION, np.ones((1, 5), dtype=np.float32), 3)
    assert ids[0].tolist() == [12, 11, 13]  # 2, 12, 13 degrees away
    assert ids[1].tolist() == [13, 14, 15]  # 12 and 11 excluded
    assert ids[2].tolist() == [12, 13, 14]
    assert (ids[3] == -1).all() and np.isnan(scores[3]).all()
    np.testing.assert_allclose(scores[0], np.cos(np.radians([2.0, 12.0, 13.0])), atol=1e-5)
    assert plain[0].tolist() == [12, 11]


def test_wrong_dimension_or_model_is_refused_and_nothing_changes(store):
    built(store)
    with store.open() as session:
        before = session.info(COLLECTION)
        neighbours_before = session.neighbours(COLLECTION, IDS, 3)[0]
        with pytest.raises(VectorStoreMismatchError, match="4-d") as wrong_dimension:
            session.upsert(COLLECTION, np.array([50]), np.ones((1, 6), dtype=np.float32), None, model=MODEL)
        assert "rebuild" in str(wrong_dimension.value)
        with pytest.raises(VectorStoreMismatchError, match="other-model"):
            session.upsert(COLLECTION, np.array([50]), np.ones((1, 4), dtype=np.float32), None, model="other-model")
        after = session.info(COLLECTION)
        assert session.retrieve(COLLECTION, np.array([50])) == {}
        assert (session.neighbours(COLLECTION, IDS, 3)[0] == neighbours_before).all()
    assert {k: after[k] for k in ("points", "dimension", "model", "generation")} == \
        {k: before[k] for k in ("points", "dimension", "model", "generation")}
    assert len(generations(store)) == 1


def test_rebuild_with_another_model_and_dimension_switches(store):
    built(store)
    new_ids = np.arange(100, 130, dtype=np.int64)
    new_vectors = circle_vectors(np.linspace(0, 290, 30), dimension=6)
    with store.open() as session:
        stats = session.rebuild(COLLECTION, new_ids, new_vectors, None, model="test/other-v2")
        info = session.info(COLLECTION)
        old_rows = session.neighbours(COLLECTION, IDS[:2], 3)[0]
        new_rows = session.neighbours(COLLECTION, np.array([100]), 2)[0]
        assert session.retrieve(COLLECTION, IDS) == {}
    assert stats["generation"] == 2
    assert (info["points"], info["dimension"], info["model"], info["generation"]) == (30, 6, "test/other-v2", 2)
    assert (old_rows == -1).all() and new_rows[0].tolist() == [101, 102]
    assert len(generations(store)) == 1  # the previous generation was dropped after the switch


def test_concurrent_reader_sees_one_whole_generation_per_query(store):
    """A reader querying in a loop during rebuilds sees the old generation or the new one, whole."""
    old_ids, new_ids = np.arange(0, 40), np.arange(1000, 1600)
    rng = np.random.default_rng(0)
    old_vectors = rng.standard_normal((len(old_ids), 8)).astype(np.float32)
    new_vectors = rng.standard_normal((len(new_ids), 16)).astype(np.float32)
    states = {frozenset(old_ids.tolist()): "old", frozenset(new_ids.tolist()): "new"}
    probes = np.array([0, 1, 39, 1000, 1001, 1599])
    with store.open() as session:
        session.rebuild(COLLECTION, old_ids, old_vectors, None, model="old-model")

    seen: list[str] = []
    problems: list[str] = []
    started: list[float] = []  # when each reader query began
    rebuilding: list[tuple[float, float]] = []  # when each rebuild ran
    stop = threading.Event()

    def reader() -> None:
        try:
            with store.open() as session:
                while not stop.is_set():
                    started.append(time.monotonic())
                    ids, _ = session.neighbours(COLLECTION, probes, 700)
                    answered = {int(p) for p, row in zip(probes, ids, strict=True) if row[0] != -1}
                    members = set(ids[ids != -1].tolist()) | answered
                    state = next((name for ids_set, name in states.items() if members <= ids_set), None)
                    expected_rows = {"old": {0, 1, 39}, "new": {1000, 1001, 1599}}.get(state)
                    full = {"old": len(old_ids) - 1, "new": len(new_ids) - 1}.get(state)
                    counts = [(row != -1).sum() for p, row in zip(probes, ids, strict=True) if int(p) in answered]
                    if state is None or answered != expected_rows or any(c != full for c in counts):
                        problems.append(f"mixed or partial answer: answered={sorted(answered)}")
                    seen.append(state or "?")
                    info = session.info(COLLECTION)
                    if (info["points"], info["dimension"], info["model"]) not in {
                            (40, 8, "old-model"), (600, 16, "new-model")}:
                        problems.append(f"inconsistent info {info}")
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            problems.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while seen.count("old") < 3 and not problems and time.monotonic() < deadline:
            time.sleep(0.01)
        def overlapped() -> bool:
            return any(a <= t <= b for t in list(started) for a, b in rebuilding)

        with store.open() as writer:
            # Alternate generations until the reader has queried during a rebuild at least once
            # (a busy machine may need several rounds), two rounds at least, bounded in time.
            round_ = 0
            while (round_ < 2 or not overlapped()) and not problems and time.monotonic() < deadline:
                model, ids, vectors = (("new-model", new_ids, new_vectors) if round_ % 2 == 0
                                       else ("old-model", old_ids, old_vectors))
                begin = time.monotonic()
                writer.rebuild(COLLECTION, ids, vectors, None, model=model)
                rebuilding.append((begin, time.monotonic()))
                round_ += 1
                mark = len(seen)
                while len(seen) < mark + 3 and not problems and time.monotonic() < deadline:
                    time.sleep(0.01)
            writer.rebuild(COLLECTION, new_ids, new_vectors, None, model="new-model")
            mark = len(seen)
            while len(seen) < mark + 3 and not problems and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(30)
    assert not problems, problems[:5]
    assert "old" in seen and "new" in seen and seen[-1] == "new"
    assert any(a <= t <= b for t in started for a, b in rebuilding)  # the reader did query during a rebuild


def test_reopen_keeps_the_data(store):
    built(store)
    with store.open() as session:
        before = session.neighbours(COLLECTION, IDS, 4)
    again = reopened(store)
    with again.open() as session:
        info = session.info(COLLECTION)
        after = session.neighbours(COLLECTION, IDS, 4)
        vectors = session.retrieve(COLLECTION, IDS)
    assert (info["points"], info["model"], info["generation"]) == (len(IDS), MODEL, 1)
    assert (before[0] == after[0]).all()
    np.testing.assert_allclose(before[1], after[1], atol=1e-6)
    assert sorted(vectors) == IDS.tolist()


def test_bad_input_is_a_clear_error(store):
    with store.open() as session:
        with pytest.raises(ValueError, match="duplicate"):
            session.rebuild(COLLECTION, np.array([1, 1]), np.ones((2, 4)), None, model=MODEL)
        with pytest.raises(ValueError, match=">= 0"):
            session.rebuild(COLLECTION, np.array([-1]), np.ones((1, 4)), None, model=MODEL)
        with pytest.raises(ValueError, match="non-finite"):
            session.rebuild(COLLECTION, np.array([1]), np.array([[np.nan, 1, 0, 0]]), None, model=MODEL)
        with pytest.raises(ValueError, match="all zeros"):
            session.rebuild(COLLECTION, np.array([1, 2]), np.array([[1, 0, 0, 0], [0, 0, 0, 0]]), None, model=MODEL)
        with pytest.raises(ValueError, match="rows for"):
            session.rebuild(COLLECTION, np.array([1, 2]), np.ones((3, 4)), None, model=MODEL)
        with pytest.raises(ValueError, match="collection name"):
            session.rebuild("bad/name", np.array([1]), np.ones((1, 4)), None, model=MODEL)
        with pytest.raises(ValueError, match="collection name"):
            session.info("movies__g000001")
        with pytest.raises(ValueError, match="model"):
            session.rebuild(COLLECTION, np.array([1]), np.ones((1, 4)), None, model=" ")
        with pytest.raises(VectorStoreError, match="does not exist"):
            session.neighbours("absent", np.array([1]), 3)
        assert session.info(COLLECTION) is None  # nothing was created by the failed calls
    with pytest.raises(VectorStoreError, match="closed"):
        session.info(COLLECTION)


# ----------------------------------------------------------------------------- embedded specifics


def test_embedded_layout_manifest_and_pointer(tmp_path: Path):
    store = built(EmbeddedQdrantStore(path=str(tmp_path / "vectors")))
    folder = tmp_path / "vectors" / COLLECTION
    assert (folder / "CURRENT").read_text().strip() == "g000001"
    manifest = json.loads((folder / "g000001" / "manifest.json").read_text())
    assert (manifest["model"], manifest["dimension"], manifest["distance"], manifest["points"]) == \
        (MODEL, 4, "cosine", len(IDS))
    with store.open() as session:
        session.upsert(COLLECTION, np.array([19]), circle_vectors([300.0]), None, model=MODEL)
    assert (folder / "CURRENT").read_text().strip() == "g000002"  # copy-on-write: a new generation
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["g000002"]
    assert json.loads((folder / "g000002" / "manifest.json").read_text())["parent_generation"] == 1


def test_embedded_failed_rebuild_leaves_the_served_generation(tmp_path: Path, monkeypatch):
    store = built(EmbeddedQdrantStore(path=str(tmp_path / "vectors")))
    from rcmd_pipeline.resources.vector_store import embedded as module

    def broken(self, shard, ids, vectors, payloads):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(module._EmbeddedSession, "_write_points", broken)
    with store.open() as session, pytest.raises(RuntimeError, match="simulated"):
        session.rebuild(COLLECTION, np.array([1, 2]), np.ones((2, 4)), None, model="other")
    monkeypatch.undo()
    with store.open() as session:
        info = session.info(COLLECTION)
        assert (info["generation"], info["model"], info["points"]) == (1, MODEL, len(IDS))
    assert generations(store) == ["g000001"]


def test_embedded_old_generation_kept_while_read_then_dropped(tmp_path: Path):
    store = built(EmbeddedQdrantStore(path=str(tmp_path / "vectors")))
    folder = tmp_path / "vectors" / COLLECTION
    with store.open() as reader:
        assert reader.neighbours(COLLECTION, np.array([11]), 1)[0][0, 0] == 12  # reads generation 1
        with store.open() as writer:
            writer.rebuild(COLLECTION, np.array([1, 2, 3]), circle_vectors([0, 50, 5]), None, model=MODEL)
        assert (folder / "g000001").is_dir()  # still read by `reader`: not deleted under it
        assert reader.neighbours(COLLECTION, np.array([1]), 1)[0][0, 0] == 3  # the next call follows CURRENT
    assert generations(store) == ["g000002"]  # the last reader's close removed generation 1


def test_embedded_store_is_readable_from_another_process_while_open_here(tmp_path: Path):
    store = built(EmbeddedQdrantStore(path=str(tmp_path / "vectors")))
    script = (
        "import sys, numpy as np\n"
        "from rcmd_pipeline.resources.vector_store import EmbeddedQdrantStore\n"
        "with EmbeddedQdrantStore(path=sys.argv[1]).open() as s:\n"
        f"    print(s.neighbours({COLLECTION!r}, np.array([11]), 2)[0][0].tolist())\n"
    )
    with store.open() as session:
        session.info(COLLECTION)  # this process holds the generation open
        done = subprocess.run([sys.executable, "-c", script, store.path], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[12, 13]"


def test_embedded_second_writer_waits_for_the_first(tmp_path: Path):
    store = EmbeddedQdrantStore(path=str(tmp_path / "vectors"), lock_timeout_seconds=0.5)
    built(store)
    with store.open() as holder, holder._write_lock(COLLECTION):
        with store.open() as other, pytest.raises(VectorStoreError, match="another process"):
            other.upsert(COLLECTION, np.array([19]), circle_vectors([300.0]), None, model=MODEL)


# ----------------------------------------------------------------------------- server specifics, environment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_connection_failure_names_the_variable_not_the_key():
    store = QdrantServerStore(url=f"http://127.0.0.1:{_free_port()}", api_key="sekrit-key-123", timeout=2)
    assert "sekrit" not in repr(store)
    with pytest.warns(UserWarning), pytest.raises(VectorStoreConnectionError) as failure:  # key over http
        with store.open():
            pass
    assert "QDRANT_URL" in str(failure.value) and "127.0.0.1" in str(failure.value)
    assert "sekrit" not in str(failure.value)


def test_server_generations_are_aliased_collections_with_metadata():
    store = built(QdrantServerStore(location=":memory:"))
    client = store._memory_client
    (alias,) = [a for a in client.get_aliases().aliases if a.alias_name == COLLECTION]
    assert alias.collection_name == f"{COLLECTION}__g000001"
    metadata = client.get_collection(alias.collection_name).config.metadata
    assert (metadata["rcmd_model"], metadata["rcmd_dimension"], metadata["rcmd_generation"]) == (MODEL, 4, 1)
    with store.open() as session:
        session.rebuild(COLLECTION, IDS, VECTORS, None, model=MODEL)
    assert [a.collection_name for a in client.get_aliases().aliases] == [f"{COLLECTION}__g000002"]
    assert generations(store) == [f"{COLLECTION}__g000002"]


def test_vector_store_from_environment(tmp_path: Path, monkeypatch):
    embedded = vector_store_from_environment({"QDRANT_URL": "  "}, tmp_path)
    assert isinstance(embedded, EmbeddedQdrantStore) and embedded.path == str(tmp_path / "vectors")
    monkeypatch.setenv("QDRANT_API_KEY", "from-env-key")
    server = vector_store_from_environment(
        {"QDRANT_URL": "https://qdrant.example:6333", "QDRANT_API_KEY": "from-env-key"}, tmp_path)
    assert isinstance(server, QdrantServerStore) and server.url == "https://qdrant.example:6333"
    assert isinstance(server.api_key, EnvVar)  # Dagster shows the variable's name, not the key
    assert "from-env-key" not in repr(server) and "qdrant.example" in server.describe()
    plain = vector_store_from_environment({"QDRANT_URL": "http://h:6333", "QDRANT_API_KEY": "other"}, tmp_path)
    assert plain.api_key == "other" and "other" not in repr(plain)
    assert os.environ["QDRANT_API_KEY"] == "from-env-key"


# ----------------------------------------------------------------------------- sync (issue 13)


def test_sync_keeps_an_unchanged_collection_and_writes_only_what_changed(store):
    embedded = isinstance(store, EmbeddedQdrantStore)
    with store.open() as session:
        first = session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        assert (first["action"], first["generation"], first["points"]) == ("rebuilt", 1, len(IDS))
        assert session.info(COLLECTION)["digest"] == first["digest"]
    with store.open() as session:  # the next night, nothing changed
        again = session.sync(COLLECTION, IDS, VECTORS.copy(), [dict(p) for p in PAYLOADS], model=MODEL)
        assert (again["action"], again["generation"], again["digest"]) == ("kept", 1, first["digest"])
        assert again["upserted"] == again["deleted"] == 0
    assert len(generations(store)) == 1

    # one vector moved, one payload changed, one point removed, one added
    ids = np.r_[IDS[IDS != 18], 19]
    vectors = np.vstack([VECTORS[IDS != 18], circle_vectors([300.0])])
    vectors[0] = circle_vectors([5.0])[0]
    payloads = [dict(p) for p, i in zip(PAYLOADS, IDS, strict=True) if i != 18] + [{"title": "새 영화"}]
    payloads[3] = {**payloads[3], "title": "바뀐 제목"}
    with store.open() as session:
        changed = session.sync(COLLECTION, ids, vectors, payloads, model=MODEL, max_changed_share=0.5)
        info = session.info(COLLECTION)
        got = session.retrieve(COLLECTION, np.array([11, 18, 19]))
        near, _ = session.neighbours(COLLECTION, np.array([19]), 1)
    if embedded:  # a patched copy: 3 points written (moved, renamed, new), 1 deleted
        assert (changed["action"], changed["upserted"], changed["deleted"]) == ("updated", 3, 1)
    else:  # a server is never patched in place: a new generation is uploaded
        assert changed["action"] == "rebuilt" and "never patched" in changed["reason"]
    assert changed["generation"] == 2 and info["generation"] == 2 and info["points"] == len(ids)
    assert info["digest"] == changed["digest"] != first["digest"]
    assert sorted(got) == [11, 19]
    np.testing.assert_allclose(got[11], circle_vectors([5.0])[0], atol=1e-6)
    assert near[0, 0] == 11  # 300 degrees is nearest to 5 degrees (65 apart) among what is served
    assert len(generations(store)) == 1
    with store.open() as session:  # and unchanged again: kept
        assert session.sync(COLLECTION, ids, vectors, payloads, model=MODEL)["action"] == "kept"


def test_sync_rebuilds_on_another_model_or_when_too_much_changed(store):
    with store.open() as session:
        session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        moved = VECTORS.copy()
        moved[:3] = circle_vectors([1.0, 11.0, 26.0])  # 3 of 8 points: 37.5 %
        many = session.sync(COLLECTION, IDS, moved, PAYLOADS, model=MODEL, max_changed_share=0.2)
        assert many["action"] == "rebuilt"
        if isinstance(store, EmbeddedQdrantStore):  # (a server rebuilds on any change)
            assert "37.5%" in many["reason"]
        other = session.sync(COLLECTION, IDS, moved, PAYLOADS, model="test/other-model")
        assert other["action"] == "rebuilt" and "model changed" in other["reason"]
        info = session.info(COLLECTION)
        assert (info["model"], info["generation"]) == ("test/other-model", 3)
        wider = session.sync(COLLECTION, IDS, np.hstack([moved, np.zeros((len(IDS), 2))]), PAYLOADS,
                             model="test/other-model")
        assert wider["action"] == "rebuilt" and "dimension changed" in wider["reason"]
        assert session.info(COLLECTION)["dimension"] == 6


def test_an_upsert_after_a_sync_is_not_mistaken_for_the_synced_content(store):
    """upsert changes what is served: the digest recorded by the sync must no longer claim it."""
    with store.open() as session:
        synced = session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        session.upsert(COLLECTION, np.array([99]), circle_vectors([180.0]), None, model=MODEL)
        assert session.info(COLLECTION)["digest"] != synced["digest"]
        back = session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL, max_changed_share=0.5)
        assert back["action"] in ("updated", "rebuilt") and back["digest"] == synced["digest"]
        assert session.retrieve(COLLECTION, np.array([99])) == {}
        assert session.info(COLLECTION)["points"] == len(IDS)


def test_embedded_failed_patch_leaves_the_served_generation(tmp_path: Path, monkeypatch):
    store = EmbeddedQdrantStore(path=str(tmp_path / "vectors"))
    with store.open() as session:
        session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        before = session.retrieve(COLLECTION, IDS)
    from rcmd_pipeline.resources.vector_store import embedded as module

    def broken(self, shard, ids, vectors, payloads):  # after the deletes were applied to the copy
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(module._EmbeddedSession, "_write_points", broken)
    moved = VECTORS[1:].copy()
    moved[0] = circle_vectors([12.0])[0]
    with store.open() as session, pytest.raises(OSError, match="simulated"):
        session.sync(COLLECTION, IDS[1:], moved, PAYLOADS[1:], model=MODEL, max_changed_share=0.5)
    monkeypatch.undo()
    assert generations(store) == ["g000001"], "the half-patched copy is removed"
    with store.open() as session:
        info = session.info(COLLECTION)
        after = session.retrieve(COLLECTION, IDS)
        assert (info["generation"], info["points"]) == (1, len(IDS))
        assert session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)["action"] == "kept"
    assert sorted(after) == sorted(before)
    for point_id, vector in before.items():
        np.testing.assert_array_equal(after[point_id], vector)


def test_embedded_generation_made_before_digests_is_rebuilt_once(tmp_path: Path):
    store = built(EmbeddedQdrantStore(path=str(tmp_path / "vectors")))
    folder = tmp_path / "vectors" / COLLECTION / "g000001"
    (folder / "points.npz").unlink()  # as a generation written before point hashes existed
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["digest"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with store.open() as session:
        first = session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)
        assert first["action"] == "rebuilt" and "no point hashes" in first["reason"]
        assert session.sync(COLLECTION, IDS, VECTORS, PAYLOADS, model=MODEL)["action"] == "kept"


def test_embedded_rebuild_in_phases_keeps_its_segments_apart_and_answers_exactly(tmp_path: Path, monkeypatch):
    """A catalogue larger than one build phase is written and indexed in phases (each its own segment,
    so the index build never holds the whole catalogue twice); every answer is the same as in one
    phase, and a nightly patch of such a generation works as on any other."""
    from rcmd_pipeline.resources.vector_store import embedded as module

    dimension = 256  # 1 KB a point: 3 points a phase; the engine counts segment sizes in whole kilobytes
    monkeypatch.setattr(module, "BUILD_PHASE_BYTES", 3 * dimension * 4)
    assert module.build_phases(len(IDS), dimension) == [(0, 2), (2, 5), (5, 8)]
    vectors = circle_vectors([ANGLES[i] for i in IDS], dimension=dimension)
    store = EmbeddedQdrantStore(path=str(tmp_path / "vectors"))
    with store.open() as session:
        stats = session.rebuild(COLLECTION, IDS, vectors, PAYLOADS, model=MODEL)
        assert stats["points"] == len(IDS)
        found, scores = session.neighbours(COLLECTION, IDS, 7)
    for row, point in enumerate(IDS.tolist()):
        expected_ids, expected_scores = expected_neighbours(point, 7)
        assert found[row].tolist() == expected_ids and np.allclose(scores[row], expected_scores, atol=1e-4), point
    manifest = json.loads((tmp_path / "vectors" / COLLECTION / "g000001" / "manifest.json").read_text())
    assert manifest["build_phases"] == 3 and manifest["points"] == len(IDS)
    assert manifest["segments"] >= 3  # one per phase (and the engine's empty appendable one)
    keep = IDS != 17  # the nightly patch: 17 gone, 18 moved next to 11
    moved = vectors[keep].copy()
    moved[IDS[keep] == 18] = circle_vectors([5.0], dimension=dimension)
    with store.open() as session:
        payloads = [p for p, k in zip(PAYLOADS, keep, strict=True) if k]
        stats = session.sync(COLLECTION, IDS[keep], moved, payloads, model=MODEL, max_changed_share=0.5)
        assert (stats["action"], stats["upserted"], stats["deleted"]) == ("updated", 1, 1)
        found, _ = session.neighbours(COLLECTION, np.array([11]), 3)
        assert found[0].tolist() == [18, 12, 13]
        assert session.info(COLLECTION)["points"] == len(IDS) - 1
