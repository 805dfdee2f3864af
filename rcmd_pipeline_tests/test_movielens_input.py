"""Bad MovieLens input: each gets an error naming the file, column or setting, and nothing is written."""

import os
from pathlib import Path

import pandas as pd
import pytest
from dagster import instance_for_test
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from rcmd_pipeline.assets.versioning import KEPT_FROM_RUN
from rcmd_pipeline.evaluation import InsufficientDataError
from rcmd_pipeline.resources import movielens as movielens_files
from rcmd_pipeline.resources.movielens import DatasetError, read_links, read_ratings, source_fingerprint
from rcmd_pipeline_tests.helpers import materialize_all, small_run_config, synthetic_ratings, write_dataset


def test_reads_csv_and_parquet_alike(tmp_path):
    ratings = synthetic_ratings()
    from_csv = read_ratings(write_dataset(tmp_path / "csv", ratings))
    from_parquet = read_ratings(write_dataset(tmp_path / "pq", ratings, fmt="parquet"))
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert from_csv.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64"]
    assert read_ratings(tmp_path / "pq", ("movieId",)).columns.tolist() == ["movieId"]


@pytest.fixture
def small_blocks(monkeypatch):
    """Read in blocks of 1 KiB of CSV text / 100 parquet rows, so a small file spans many blocks."""
    monkeypatch.setattr(movielens_files, "_CSV_BLOCK_BYTES", 1024)
    monkeypatch.setattr(movielens_files, "_PARQUET_BATCH_ROWS", 100)


def test_reading_in_many_blocks_gives_the_same_frame(tmp_path, monkeypatch):
    ratings = synthetic_ratings(users=200)  # 2,000 rows: ~50 KB of CSV
    csv_folder = write_dataset(tmp_path / "csv", ratings)
    pq_folder = write_dataset(tmp_path / "pq", ratings, fmt="parquet")
    whole = read_ratings(csv_folder)
    monkeypatch.setattr(movielens_files, "_CSV_BLOCK_BYTES", 1024)
    monkeypatch.setattr(movielens_files, "_PARQUET_BATCH_ROWS", 100)
    batches = list(movielens_files._csv_batches(csv_folder / "ratings.csv", ("userId",), as_text=False))
    assert len(batches) > 20  # the file really is read block by block
    for folder in (csv_folder, pq_folder):
        blocks = read_ratings(folder)
        pd.testing.assert_frame_equal(blocks, whole)
        assert blocks.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64"]
        blocks.loc[0, "timestamp"] = 7  # a frame of writable arrays, not read-only views of Arrow buffers
        assert blocks.timestamp.iloc[0] == 7
    pd.testing.assert_frame_equal(whole, ratings.astype({"userId": "int32", "movieId": "int32", "rating": "float32"}))
    whole.loc[0, "timestamp"] = 7  # one block: its arrays are copies too, not read-only views


def test_offending_rows_are_counted_and_numbered_across_blocks(tmp_path, small_blocks):
    lines = [f"{1 + i // 10},{1 + i % 10},4.0,{1000 + i}" for i in range(3000)]
    for at in (40, 1500, 2200, 2300, 2400, 2500, 2999):  # 0-based data rows; the file's line is at + 2
        lines[at] = f"{1 + at // 10},m{at},4.0,{1000 + at}"
    folder = write_dataset(tmp_path / "d", "userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        read_ratings(folder)
    assert str(err.value).endswith(
        "ratings.csv: column 'movieId' must hold positive whole numbers (movie ids); 7 row(s) of 3000; first: "
        "line 42: 'm40', line 1502: 'm1500', line 2202: 'm2200', line 2302: 'm2300', line 2402: 'm2400' "
        "(and 2 more).")


def test_a_value_that_only_text_parsing_accepts_late_in_the_file_is_read(tmp_path, small_blocks):
    # "7.0" is not an int64 for Arrow, so the typed read fails at a late block and the file is read
    # again as text: the value is a whole number, so it is kept, and nothing is lost or doubled.
    lines = [f"{1 + i // 10},{1 + i % 10},4.0,{1000 + i}" for i in range(3000)]
    lines[2900] = "291,7.0,4.0,3900"
    folder = write_dataset(tmp_path / "d", "userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    frame = read_ratings(folder)
    assert len(frame) == 3000 and frame.movieId.iloc[2900] == 7 and frame.movieId.dtype == "int32"
    assert frame.timestamp.tolist() == [1000 + i for i in range(3000)]


def test_parquet_offenders_are_numbered_across_batches(tmp_path, small_blocks):
    ratings = synthetic_ratings(users=100).astype({"userId": "float64"})
    ratings.loc[[5, 250, 999], "userId"] = [0.5, float("nan"), -3.0]
    with pytest.raises(DatasetError, match=r"'userId'.*3 row\(s\) of 1000; first: row 5: 0\.5, row 250: nan, "
                                           r"row 999: -3\.0\.$"):
        read_ratings(write_dataset(tmp_path / "d", ratings, fmt="parquet"))


def test_header_only_files_give_an_empty_typed_frame(tmp_path):
    frame = read_ratings(write_dataset(tmp_path / "d", "userId,movieId,rating,timestamp\n"))
    assert len(frame) == 0 and frame.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64"]


def test_source_fingerprint_changes_with_size_or_mtime_only(tmp_path):
    folder = write_dataset(tmp_path / "d", synthetic_ratings(users=3))
    first = source_fingerprint(folder)
    assert source_fingerprint(folder) == first and len(first) == 64
    ratings = folder / "ratings.csv"
    stat = ratings.stat()
    os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    touched = source_fingerprint(folder)
    assert touched != first
    os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_fingerprint(folder) == first  # same name, size and mtime: the same fingerprint
    # only the named files count: a new movies.csv leaves the ratings' own fingerprint alone
    only_ratings = source_fingerprint(folder, ["ratings.csv"])
    (folder / "movies.csv").write_text("movieId,title,genres\n1,New (2024),Drama\n")
    assert source_fingerprint(folder, ["ratings.csv"]) == only_ratings
    assert source_fingerprint(folder) != first
    # a ratings.parquet beside the CSV is the file read from now on, so it changes the fingerprint
    with_csv = source_fingerprint(folder)
    synthetic_ratings(users=3).to_parquet(folder / "ratings.parquet", index=False)
    assert source_fingerprint(folder) != with_csv
    # a missing links.csv is part of the fingerprint too (creating it changes it); a missing folder is the usual error
    (folder / "links.csv").unlink()
    assert source_fingerprint(folder, ["links.csv"]) != source_fingerprint(tmp_path / "d", ["movies.csv"])
    with pytest.raises(DatasetError, match="does not exist"):
        source_fingerprint(tmp_path / "nowhere")


def test_parquet_wins_over_csv_when_both_exist(tmp_path):
    folder = write_dataset(tmp_path / "d", synthetic_ratings(users=3), fmt="parquet")
    (folder / "ratings.csv").write_text("garbage\n")
    assert len(read_ratings(folder)) == 30


def test_missing_folder_names_the_path_and_the_variable(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"nowhere.*does not exist.*RCMD_DATASET_PATH"):
        read_ratings(missing)


def test_missing_ratings_file_names_both_accepted_names(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match=r"RCMD_DATASET_PATH.*ratings\.parquet or ratings\.csv"):
        read_ratings(tmp_path / "d")


def test_missing_links_file(tmp_path):
    folder = write_dataset(tmp_path / "d", synthetic_ratings(users=2))
    (folder / "links.csv").unlink()
    with pytest.raises(DatasetError, match=r"links\.csv not found"):
        read_links(folder)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_misnamed_columns_list_expected_and_found(tmp_path, fmt):
    ratings = synthetic_ratings(users=2).rename(columns={"movieId": "movie_id"})
    folder = write_dataset(tmp_path / "d", ratings, fmt=fmt)
    with pytest.raises(DatasetError) as err:
        read_ratings(folder)
    message = str(err.value)
    assert "missing column(s) movieId" in message
    assert "Expected columns: userId, movieId, rating, timestamp" in message
    assert "found: userId, movie_id, rating, timestamp" in message


def test_non_numeric_ids_in_csv_show_the_first_offending_lines(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,abc,3.0,101\n2,11,3.0,102\nx2,12,1.0,103\n"
    folder = write_dataset(tmp_path / "d", text)
    with pytest.raises(DatasetError) as err:
        read_ratings(folder)
    message = str(err.value)
    assert "ratings.csv" in message and "'userId'" in message and "line 5: 'x2'" in message
    text = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,abc,3.0,101\n"
    with pytest.raises(DatasetError, match=r"'movieId' must hold positive whole numbers.*line 3: 'abc'"):
        read_ratings(write_dataset(tmp_path / "e", text))


def test_non_numeric_timestamps_are_reported(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,10,4.0,2023-01-01\n"
    with pytest.raises(DatasetError, match=r"'timestamp' must hold whole numbers of seconds.*line 2: '2023-01-01'"):
        read_ratings(write_dataset(tmp_path / "d", text))


def test_missing_and_fractional_ids_in_parquet_are_reported_by_row(tmp_path):
    ratings = synthetic_ratings(users=2).astype({"movieId": "float64"})
    ratings.loc[3, "movieId"] = float("nan")
    ratings.loc[7, "movieId"] = 2.5
    with pytest.raises(DatasetError, match=r"'movieId'.*2 row\(s\) of 20; first: row 3: nan, row 7: 2\.5"):
        read_ratings(write_dataset(tmp_path / "d", ratings, fmt="parquet"))


def test_non_positive_user_id_is_rejected(tmp_path):
    text = "userId,movieId,rating,timestamp\n0,10,4.0,100\n"
    with pytest.raises(DatasetError, match=r"'userId' must hold positive whole numbers.*line 2: 0"):
        read_ratings(write_dataset(tmp_path / "d", text))


def test_non_numeric_rating(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,10,good,100\n"
    with pytest.raises(DatasetError, match=r"'rating' must hold numbers.*line 2: 'good'"):
        read_ratings(write_dataset(tmp_path / "d", text))


def test_links_keep_imdb_zeros_and_allow_missing_tmdb(tmp_path):
    folder = write_dataset(tmp_path / "d", synthetic_ratings(users=1),
                           links="movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,\n")
    links = read_links(folder)
    assert links.imdbId.tolist() == ["0114709", "0113497"]
    assert links.tmdbId.isna().tolist() == [False, True]
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,eight\n")
    with pytest.raises(DatasetError, match=r"links\.csv: column 'tmdbId'.*line 2: 'eight'"):
        read_links(folder)


SOURCE_ASSETS = ["movielens_ratings", "movielens_links", "movielens_movies"]


def _materializations(result) -> dict:
    return {name: result.asset_materializations_for_node(name)[0] for name in SOURCE_ASSETS}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unchanged_source_files_are_not_read_again_and_changed_ones_are(tmp_path, fmt):
    folder = write_dataset(tmp_path / "d", synthetic_ratings(users=5), fmt=fmt)
    ratings = folder / f"ratings.{fmt}"
    data_dir = tmp_path / "state"
    stored = data_dir / "assets" / "movielens_ratings.parquet"
    with instance_for_test() as instance:
        first = materialize_all(folder, data_dir, selection=SOURCE_ASSETS, instance=instance)
        before = {name: m for name, m in _materializations(first).items()}
        assert all(KEPT_FROM_RUN not in m.metadata for m in before.values())
        written = stored.stat().st_mtime_ns
        good = ratings.read_bytes()

        # Same name, size and mtime but unreadable content: had the asset read it, the run would fail.
        stat = ratings.stat()
        ratings.write_bytes(b"x" * stat.st_size)
        os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        second = materialize_all(folder, data_dir, selection=SOURCE_ASSETS, instance=instance)
        for name, m in _materializations(second).items():
            assert m.metadata[KEPT_FROM_RUN].value == first.run_id, name
            assert m.tags[DATA_VERSION_TAG] == before[name].tags[DATA_VERSION_TAG], name  # nothing turns stale
            assert m.metadata["dagster/row_count"] == before[name].metadata["dagster/row_count"], name
        assert stored.stat().st_mtime_ns == written
        assert len(pd.read_parquet(stored)) == 50

        # Touched (new mtime): read again, so the unreadable content now fails the run and keeps the stored value.
        os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        third = materialize_all(folder, data_dir, selection=["movielens_ratings"], instance=instance,
                                raise_on_error=False)
        assert not third.success and stored.stat().st_mtime_ns == written

        # Good content again, new mtime: read and stored again, with a new data version.
        ratings.write_bytes(good.replace(b"\n1,", b"\n2,", 1) if fmt == "csv" else good)
        os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        fourth = materialize_all(folder, data_dir, selection=SOURCE_ASSETS, instance=instance)
        after = _materializations(fourth)
        assert KEPT_FROM_RUN not in after["movielens_ratings"].metadata
        assert after["movielens_ratings"].tags[DATA_VERSION_TAG] != before["movielens_ratings"].tags[DATA_VERSION_TAG]
        assert stored.stat().st_mtime_ns != written
        # links.csv and movies.csv did not change: they are still kept (from the run that computed
        # them, or the latest run that kept them, as versioning.kept chooses to name it)
        for name in ("movielens_links", "movielens_movies"):
            assert after[name].metadata[KEPT_FROM_RUN].value in (first.run_id, second.run_id), name
            assert after[name].tags[DATA_VERSION_TAG] == before[name].tags[DATA_VERSION_TAG], name

        # A deleted stored value is written again even though the file is unchanged.
        stored.unlink()
        fifth = materialize_all(folder, data_dir, selection=["movielens_ratings"], instance=instance)
        assert KEPT_FROM_RUN not in fifth.asset_materializations_for_node("movielens_ratings")[0].metadata
        assert len(pd.read_parquet(stored)) == 50


def _stored(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "assets").glob("*")} if (data_dir / "assets").exists() else set()


def test_bad_ratings_fail_the_run_and_write_nothing(tmp_path):
    folder = write_dataset(tmp_path / "d", "userId,movieId,rating,timestamp\n1,abc,4.0,100\n")
    data_dir = tmp_path / "state"
    result = materialize_all(folder, data_dir, small_run_config(), raise_on_error=False)
    assert not result.success
    assert "ratings.parquet" not in _stored(data_dir) and "movielens_ratings.parquet" not in _stored(data_dir)


def test_too_strict_settings_fail_with_the_setting_to_lower_and_keep_the_previous_set(tmp_path, small_dataset):
    data_dir = tmp_path / "state"
    materialize_all(small_dataset, data_dir, small_run_config(min_movie_ratings=5, eval_size=50))
    stored = data_dir / "assets" / "eval_transitions.parquet"
    before = stored.read_bytes()
    with pytest.raises(InsufficientDataError, match="lower min_movie_ratings"):
        materialize_all(small_dataset, data_dir, small_run_config(min_movie_ratings=10_000, eval_size=50),
                        selection=["eval_transitions"])
    with pytest.raises(InsufficientDataError, match="lower eval_size"):
        materialize_all(small_dataset, data_dir, small_run_config(min_movie_ratings=1, eval_size=10**6),
                        selection=["eval_transitions"])
    assert stored.read_bytes() == before
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(".tmp")]
