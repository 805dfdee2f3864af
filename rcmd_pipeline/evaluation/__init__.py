"""Evaluation set and metrics: plain Python, no Dagster imports."""

from rcmd_pipeline.evaluation.metrics import Evaluation, evaluate, hit_ratio, hits_at_k
from rcmd_pipeline.evaluation.transitions import (
    TRANSITION_COLUMNS,
    InsufficientDataError,
    TransitionSettings,
    build_eval_transitions,
)

__all__ = [
    "TRANSITION_COLUMNS",
    "Evaluation",
    "InsufficientDataError",
    "TransitionSettings",
    "build_eval_transitions",
    "evaluate",
    "hit_ratio",
    "hits_at_k",
]
