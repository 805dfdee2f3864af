"""The committed demo data set: rebuilt byte for byte by its generator, and fit for the study's defaults."""

import csv
import json

import pandas as pd

from rcmd_pipeline import settings
from rcmd_pipeline.demo import generate
from rcmd_pipeline.evaluation import TransitionSettings, build_eval_transitions

DEMO = settings.DEMO_DATASET_DIR


def test_generator_rebuilds_the_committed_demo_data_byte_for_byte(tmp_path):
    written = generate.generate(tmp_path)
    committed = {p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*") if p.is_file()}
    assert committed == set(written), "the committed demo files differ from what the generator writes"
    for rel in sorted(written):
        assert (DEMO / rel).read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs"


def test_demo_is_small_and_holds_the_study_defaults():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024
    ratings = pd.read_csv(DEMO / "ratings.csv")
    counts = ratings.movieId.value_counts()
    assert 200 <= ratings.movieId.nunique() <= 400
    assert (counts >= 1000).sum() >= 50
    pairs = build_eval_transitions(ratings.userId.to_numpy(), ratings.movieId.to_numpy(),
                                   ratings.timestamp.to_numpy(), TransitionSettings())
    assert len(pairs) == 3000
    # MovieLens-like: users rate several movies in the same second
    assert (ratings.groupby("userId").timestamp.diff() == 0).mean() > 0.1


def test_demo_facts_are_consistent_and_series_are_multi_film():
    with open(DEMO / "links.csv", newline="") as f:
        links = list(csv.DictReader(f))
    by_movie = {int(r["movieId"]): int(r["tmdbId"]) for r in links}
    assert by_movie[1] == 862  # Toy Story
    details = {int(r["tmdbId"]): json.loads((DEMO / "tmdb" / "ko-KR" / f"{r['tmdbId']}.json").read_text())
               for r in links}
    toy_story = details[862]
    assert toy_story["belongs_to_collection"]["id"] == 10194
    assert toy_story["title"] and toy_story["overview"]
    series = pd.Series([d["belongs_to_collection"]["id"] for d in details.values() if d["belongs_to_collection"]])
    sizes = series.value_counts()
    assert (sizes >= 3).sum() >= 20, "several multi-film series (Toy Story, Star Wars, Harry Potter, ...)"
    for collection in (10194, 10, 1241):  # Toy Story, Star Wars, Harry Potter
        assert sizes.get(collection, 0) >= 3, collection
    ratings = pd.read_csv(DEMO / "ratings.csv")
    assert set(ratings.movieId) <= set(by_movie)
