"""Recommendation strategies: plain Python, no Dagster imports, one batch method each."""

from rcmd_pipeline.recommenders.base import PAD, Recommender, fill_with_random, sample_distinct
from rcmd_pipeline.recommenders.hybrid import HybridRecommender
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender
from rcmd_pipeline.recommenders.popularity import PopularityRecommender
from rcmd_pipeline.recommenders.random_baseline import RandomRecommender
from rcmd_pipeline.recommenders.series import SeriesRecommender
from rcmd_pipeline.recommenders.training import leakage_cutoff, training_window
from rcmd_pipeline.recommenders.vector import SeriesVectorRecommender, VectorRecommender

__all__ = [
    "PAD",
    "HybridRecommender",
    "NextMovieRecommender",
    "PopularityRecommender",
    "leakage_cutoff",
    "training_window",
    "RandomRecommender",
    "Recommender",
    "SeriesRecommender",
    "SeriesVectorRecommender",
    "VectorRecommender",
    "fill_with_random",
    "sample_distinct",
]
