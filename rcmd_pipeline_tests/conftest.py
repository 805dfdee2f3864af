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
    rank: dict[str, int] = {}
    for item in items:
        if item.module is not None:
            marks = [i for i, mark in enumerate(LONG_MARKS) if item.get_closest_marker(mark)]
            rank[item.module.__name__] = min([rank.get(item.module.__name__, len(LONG_MARKS)), *marks])
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.module.__name__, len(LONG_MARKS)) if item.module else len(LONG_MARKS),
                                 position[id(item)]))


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "movielens", synthetic_ratings())
