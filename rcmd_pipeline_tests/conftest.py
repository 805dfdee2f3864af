"""Fixtures shared by the tests; the helpers they use live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset

LONG_MARKS = ("slow", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with end-to-end tests (marked ``slow`` or ``browser``) first, each module's tests in
    their own order. ``make test`` runs the suite on every core with whole modules per worker
    (pytest-xdist, ``--dist loadfile``): started first, the long modules overlap the many short ones
    instead of leaving one worker alone with them at the end."""
    long_modules = {item.module.__name__ for item in items
                    if item.module is not None and any(item.get_closest_marker(m) for m in LONG_MARKS)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (item.module is None or item.module.__name__ not in long_modules,
                                 position[id(item)]))


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "movielens", synthetic_ratings())
