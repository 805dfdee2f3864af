"""Inputs read only when an asset asks for them.

An asset that may keep its stored value (see ``assets/versioning.py``) decides from versions
recorded in the instance, before it needs its inputs; reading 32 M ratings only to find that
nothing changed would cost seconds and a gigabyte. Such an asset declares the input with
``AssetIn(input_manager_key=LAZY)``: it receives a :class:`LazyValue` and calls ``.load()`` only
when it does its work. Lineage in the UI is the same as for any input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from dagster import ConfigurableIOManager, InputContext, OutputContext

from rcmd_pipeline.resources.local_state import LocalStateIOManager

LAZY = "lazy_input"
"""The resource key of :class:`LazyInputManager` in the definitions."""


class LazyValue:
    """A stored asset value, read on the first :meth:`load` and not before; a stored table's columns
    can also be read as NumPy arrays (:meth:`arrays`), without building a DataFrame."""

    def __init__(self, read: Callable[[], Any], name: str,
                 read_arrays: Callable[..., dict[str, np.ndarray]] | None = None) -> None:
        self._read = read
        self._read_arrays = read_arrays
        self.name = name

    def load(self) -> Any:
        return self._read()

    def arrays(self, columns: Sequence[str], below: tuple[str, int] | None = None) -> dict[str, np.ndarray]:
        """``{column: array}`` of a stored table, only the rows where ``below[0] < below[1]`` when given
        (see ``local_state.read_arrays``)."""
        if self._read_arrays is None:
            raise TypeError(f"{self.name}: this value cannot be read as arrays (not a stored table)")
        return self._read_arrays(columns, below)

    def __repr__(self) -> str:
        return f"LazyValue({self.name})"


class LazyInputManager(ConfigurableIOManager):
    """Hands an asset a :class:`LazyValue` of what :class:`LocalStateIOManager` stored (same folder,
    same column selection through the input's ``columns`` metadata)."""

    base_dir: str

    def load_input(self, context: InputContext) -> LazyValue:
        manager = LocalStateIOManager(base_dir=self.base_dir)  # its load_input hands freed memory back first
        return LazyValue(lambda: manager.load_input(context), context.asset_key.to_user_string(),
                         lambda columns, below=None: manager.load_arrays(context, columns, below))

    def handle_output(self, context: OutputContext, obj) -> None:
        raise NotImplementedError("LazyInputManager only loads inputs; values are stored by the io_manager")
