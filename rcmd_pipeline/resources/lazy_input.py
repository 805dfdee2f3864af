"""Inputs read only when an asset asks for them.

An asset that may keep its stored value (see ``assets/versioning.py``) decides from versions
recorded in the instance, before it needs its inputs; reading 32 M ratings only to find that
nothing changed would cost seconds and a gigabyte. Such an asset declares the input with
``AssetIn(input_manager_key=LAZY)``: it receives a :class:`LazyValue` and calls ``.load()`` only
when it does its work. Lineage in the UI is the same as for any input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext

from rcmd_pipeline.resources.local_state import LocalStateIOManager

LAZY = "lazy_input"
"""The resource key of :class:`LazyInputManager` in the definitions."""


class LazyValue:
    """A stored asset value, read on the first :meth:`load` and not before."""

    def __init__(self, read: Callable[[], Any], name: str) -> None:
        self._read = read
        self.name = name

    def load(self) -> Any:
        return self._read()

    def __repr__(self) -> str:
        return f"LazyValue({self.name})"


class LazyInputManager(ConfigurableIOManager):
    """Hands an asset a :class:`LazyValue` of what :class:`LocalStateIOManager` stored (same folder,
    same column selection through the input's ``columns`` metadata)."""

    base_dir: str

    def load_input(self, context: InputContext) -> LazyValue:
        manager = LocalStateIOManager(base_dir=self.base_dir)  # its load_input hands freed memory back first
        return LazyValue(lambda: manager.load_input(context), context.asset_key.to_user_string())

    def handle_output(self, context: OutputContext, obj) -> None:
        raise NotImplementedError("LazyInputManager only loads inputs; values are stored by the io_manager")
