"""Assertions shared by tests that compare two runs of the pipeline (fault, object-store tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcmd_pipeline.recommenders.registry import REGISTRY


def assert_same_scores(got: dict, want: dict) -> None:
    """Every registered strategy's hit-ratio value (hits and recommendations too) and the leaderboard are equal."""
    assert sorted(got["hit_ratios"]) == sorted(want["hit_ratios"])
    scored = sorted(v["strategy"] for v in want["hit_ratios"].values())
    assert scored == sorted(s.name for s in REGISTRY), f"scored {scored}, registered {[s.name for s in REGISTRY]}"
    for name, value in want["hit_ratios"].items():
        for key in ("strategy", "k", "n", "hit_ratio"):
            assert got["hit_ratios"][name][key] == value[key], (name, key)
        np.testing.assert_array_equal(got["hit_ratios"][name]["hits"], value["hits"])
        np.testing.assert_array_equal(got["hit_ratios"][name]["recommendations"], value["recommendations"])
    pd.testing.assert_frame_equal(got["leaderboard"], want["leaderboard"])
