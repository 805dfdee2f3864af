"""Recommendation strategies: plain Python, no Dagster imports, one batch method each."""

from rcmd_pipeline.recommenders.base import PAD, Recommender, sample_distinct
from rcmd_pipeline.recommenders.random_baseline import RandomRecommender
from rcmd_pipeline.recommenders.series import SeriesRecommender

__all__ = ["PAD", "RandomRecommender", "Recommender", "SeriesRecommender", "sample_distinct"]
