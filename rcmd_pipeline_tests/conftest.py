"""Fixtures shared by the tests; the helpers they use live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset

LONG_MARKS = ("browser", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a browser test first, then those with other end-to-end tests (marked ``slow``),
    then the rest, each module's tests in their own order. ``make test`` runs the suite on every core
    with whole modules per worker in this order (pytest-xdist, ``--dist loadfile
    --no-loadscope-reorder``): started first, the long modules overlap the many short ones instead
    of leaving one worker alone with them at the end."""
    def module(item: pytest.Item) -> str | None:
        return item.module.__name__ if item.module is not None else None

    rank: dict[str | None, int] = {}  # module -> index in LONG_MARKS of its first kind of test; absent: the rest
    for item in items:
        for i, mark in enumerate(LONG_MARKS):
            if item.get_closest_marker(mark):
                rank[module(item)] = min(rank.get(module(item), i), i)
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(module(item), len(LONG_MARKS)), position[id(item)]))


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "movielens", synthetic_ratings())
