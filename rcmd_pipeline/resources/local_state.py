"""Asset values on local disk, under ``RCMD_DATA_DIR``.

DataFrames are stored as Parquet (typed, compact, readable by any tool); anything else is pickled.
Every write goes to a temporary file that is renamed into place only once complete, so a failed or
killed step never leaves a half-written value behind and downstream steps keep reading the
previous one.

A downstream asset may read only some columns of a large frame by declaring them in its input's
metadata, e.g. ``AssetIn(metadata={"columns": ["userId", "movieId", "timestamp"]})``: MovieLens
32M's ratings then cost 0.5 GB instead of 0.65 GB in memory.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Keep:
    """The value an asset returns when its inputs did not change: the stored value stays as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()
SUFFIXES = (".parquet", ".npz", ".pickle")


def stored_value_path(base_dir: str | os.PathLike, asset_key_path: list[str]) -> Path | None:
    """The file holding an asset's stored value under ``base_dir``, or None when there is none."""
    stem = Path(base_dir, "assets", *asset_key_path)
    return next((stem.with_suffix(s) for s in SUFFIXES if stem.with_suffix(s).exists()), None)


def _is_array_bundle(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype != object for k, v in obj.items())


class LocalStateIOManager(ConfigurableIOManager):
    """Stores each asset's value in ``<base_dir>/assets/<asset key>`` as ``.parquet`` (DataFrames),
    ``.npz`` (a dict of NumPy arrays: a model's learned state) or ``.pickle`` (anything else).

    An asset that returns :data:`KEEP` found its inputs unchanged: its stored value is kept as is.
    """

    base_dir: str

    def _stem(self, context: InputContext | OutputContext) -> Path:
        return Path(self.base_dir, "assets", *context.asset_key.path)

    def handle_output(self, context: OutputContext, obj) -> None:
        stem = self._stem(context)
        if obj is KEEP:
            if stored_value_path(self.base_dir, context.asset_key.path) is None:
                raise FileNotFoundError(f"asset {context.asset_key.to_user_string()} asked to keep its stored value, "
                                        f"but there is none under {self.base_dir}")
            return
        others = [stem.with_suffix(s) for s in SUFFIXES]
        if isinstance(obj, pd.DataFrame):
            others.remove(stem.with_suffix(".parquet"))
            table = pa.Table.from_pandas(obj, preserve_index=False)
            atomic_write(stem.with_suffix(".parquet"), lambda p: pq.write_table(table, p))
        elif _is_array_bundle(obj):
            others.remove(stem.with_suffix(".npz"))

            def write_npz(path: Path) -> None:
                with open(path, "wb") as out:  # a file object: np.savez would append ".npz" to a name
                    np.savez(out, **obj)
            atomic_write(stem.with_suffix(".npz"), write_npz)
        else:
            others.remove(stem.with_suffix(".pickle"))
            atomic_write(stem.with_suffix(".pickle"), lambda p: p.write_bytes(pickle.dumps(obj)))
        for other in others:
            other.unlink(missing_ok=True)

    def load_input(self, context: InputContext):
        stem = self._stem(context)
        parquet = stem.with_suffix(".parquet")
        if parquet.exists():
            columns = (context.definition_metadata or {}).get("columns")
            return pq.read_table(parquet, columns=columns).to_pandas()
        bundle = stem.with_suffix(".npz")
        if bundle.exists():
            with np.load(bundle, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}
        pickled = stem.with_suffix(".pickle")
        if pickled.exists():
            return pickle.loads(pickled.read_bytes())
        raise FileNotFoundError(
            f"No stored value for asset {context.asset_key.to_user_string()} under {self.base_dir}; "
            "materialize it first (RCMD_DATA_DIR decides where values are kept)."
        )


class LocalStateDir(ConfigurableResource):
    """The ``RCMD_DATA_DIR`` folder, for assets that keep their own files there (caches, stores)."""

    base_dir: str

    def folder(self, *parts: str) -> Path:
        """``<base_dir>/<parts...>`` as a folder, created if missing."""
        target = Path(self.base_dir, *parts)
        target.mkdir(parents=True, exist_ok=True)
        return target
