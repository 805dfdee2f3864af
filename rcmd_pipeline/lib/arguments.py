"""Checks of arguments that several public functions take, with one wording for the error."""

from typing import Any

import numpy as np


def check_k(k: Any, name: str = "k", minimum: int = 1) -> int:
    """``k`` as an ``int`` when it is a whole number >= ``minimum``, else a ``ValueError`` naming it."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {k!r}")
    return int(k)
