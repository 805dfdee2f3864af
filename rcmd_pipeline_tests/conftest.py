"""Fixtures shared by the tests; the helpers they use live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "movielens", synthetic_ratings())
