"""Bad MovieLens input: each gets an error naming the file, column or setting, and nothing is written."""

from pathlib import Path

import pandas as pd
import pytest

from rcmd_pipeline.evaluation import InsufficientDataError
from rcmd_pipeline.resources.movielens import DatasetError, read_links, read_ratings
from rcmd_pipeline_tests.conftest import materialize_all, small_run_config, synthetic_ratings, write_dataset


def test_reads_csv_and_parquet_alike(tmp_path):
    ratings = synthetic_ratings()
    from_csv = read_ratings(write_dataset(tmp_path / "csv", ratings))
    from_parquet = read_ratings(write_dataset(tmp_path / "pq", ratings, fmt="parquet"))
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert from_csv.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64"]
    assert read_ratings(tmp_path / "pq", ("movieId",)).columns.tolist() == ["movieId"]


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
