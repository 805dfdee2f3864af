"""Skip what is up to date: an asset whose inputs did not change keeps its stored value.

Every asset that can be skipped computes an *inputs version*: a hash of its code version, its run
config and the data versions of what it reads (upstream assets' data versions, or a fingerprint of
source files). It records that version in its materialization metadata (``inputs_version``) and as
its Dagster data version. On the next run, if the latest materialization recorded the same inputs
version and the stored value is still there, the asset returns :func:`kept`: an ``Output(KEEP)``
that the IO manager does not write, the same data version (so nothing downstream turns stale) and
the previous run's metadata again (so the UI's plots stay continuous), with ``kept_from_run``
saying why the step did no work.

Works the same for ``dagster asset materialize --select '*'`` (what a user types), the nightly job
and the UI: the decision is made by each asset, from the instance's event log.
"""

import functools
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from dagster import AssetExecutionContext, AssetKey, BetaWarning, DataVersion, MaterializeResult, MetadataValue, Output
from dagster._core.definitions.data_version import extract_data_version_from_entry

from rcmd_pipeline.resources.local_state import KEEP, stored_value_path

INPUTS_VERSION = "inputs_version"
KEPT_FROM_RUN = "kept_from_run"
DATA_VERSION = "__data_version"  # carried in memory only, never written as metadata


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (config dicts, versions, file stats)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def upstream_data_versions(context: AssetExecutionContext, keys: Iterable[AssetKey | str]) -> dict[str, str]:
    """The current data version of each upstream asset, as recorded by its latest materialization."""
    versions = {}
    for key in keys:
        key = AssetKey.from_coercible(key)
        record = context.instance.get_latest_data_version_record(key)
        version = extract_data_version_from_entry(record.event_log_entry) if record else None
        versions[key.to_user_string()] = version.value if version else "none"
    return versions


@functools.cache
def package_version() -> str:
    """A hash of the project's own source files: any change to the code counts as new inputs, so a
    fixed bug or a changed strategy is never hidden behind a kept value (caches of paid-for work,
    TMDB answers and embeddings, are keyed by content and survive it)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def inputs_version(context: AssetExecutionContext, *, config: Any = None, upstream: Iterable[AssetKey | str] = (),
                   extra: Any = None) -> str:
    """The inputs version of the running asset: the code (its Dagster code version and the project's
    source), its config, the data versions of what it reads, and ``extra``."""
    code = (context.assets_def.code_versions_by_key.get(context.asset_key), package_version())
    plain_config = config.model_dump() if hasattr(config, "model_dump") else config
    return fingerprint(code, plain_config, upstream_data_versions(context, upstream), extra)


def previous_materialization(context: AssetExecutionContext) -> tuple[str, dict[str, Any]] | None:
    """(run id, metadata) of the latest materialization of the running asset, if any; the metadata
    also holds the data version it was given, under ``DATA_VERSION``."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    metadata = dict(event.asset_materialization.metadata)
    data_version = (event.asset_materialization.tags or {}).get("dagster/data_version")
    if data_version:
        metadata[DATA_VERSION] = data_version
    return event.run_id, metadata


def unchanged_since(context: AssetExecutionContext, version: str, still_there: bool = True
                    ) -> tuple[str, dict[str, Any]] | None:
    """The previous (run id, metadata) when it was computed from the same inputs version and its
    result is ``still_there``; None when the asset must do its work."""
    previous = previous_materialization(context)
    if previous is None or not still_there:
        return None
    recorded = previous[1].get(INPUTS_VERSION)
    recorded = getattr(recorded, "value", recorded)
    return previous if recorded == version else None


def _carried(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Previous metadata worth repeating (numbers and tables), without the bookkeeping entries."""
    return {k: v for k, v in metadata.items() if k not in (INPUTS_VERSION, KEPT_FROM_RUN, DATA_VERSION)}


def kept(context: AssetExecutionContext, version: str, previous: tuple[str, dict[str, Any]],
         value: Any = KEEP) -> Output:
    """The output of an asset whose inputs did not change since ``previous``: the stored value is kept."""
    run_id, metadata = previous
    origin = metadata.get(KEPT_FROM_RUN)  # a value kept over several runs names the run that computed it
    run_id = getattr(origin, "value", origin) or run_id
    context.log.info(f"inputs unchanged since run {run_id} (inputs version {version}): kept the stored value")
    return _output(value, metadata.get(DATA_VERSION, version), {
        **_carried(metadata),
        INPUTS_VERSION: version,
        KEPT_FROM_RUN: MetadataValue.text(run_id),
    })


def computed(value: Any, version: str, metadata: Mapping[str, Any] | None = None,
             data_version: str | None = None) -> Output:
    """The output of an asset that did its work from inputs ``version``. Its data version is
    ``data_version`` (e.g. a hash of the content, so an unchanged result keeps everything downstream
    up to date) or else the inputs version."""
    return _output(value, data_version or version, {**(metadata or {}), INPUTS_VERSION: version})


def _output(value: Any, data_version: str, metadata: Mapping[str, Any]) -> Output:
    with warnings.catch_warnings():  # Output(data_version=...) is marked beta in Dagster 1.13
        warnings.simplefilter("ignore", BetaWarning)
        return Output(value, data_version=DataVersion(data_version), metadata=metadata)


def kept_result(context: AssetExecutionContext, version: str, previous: tuple[str, dict[str, Any]]
                ) -> MaterializeResult:
    """:func:`kept` for an asset without an IO-managed value (a table, a collection)."""
    output = kept(context, version, previous, value=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return MaterializeResult(metadata=output.metadata, data_version=output.data_version)


def computed_result(version: str, metadata: Mapping[str, Any] | None = None,
                    data_version: str | None = None) -> MaterializeResult:
    """:func:`computed` for an asset without an IO-managed value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return MaterializeResult(metadata={**(metadata or {}), INPUTS_VERSION: version},
                                 data_version=DataVersion(data_version or version))


def frame_digest(frame) -> str:
    """A content hash of a DataFrame (values and column names), for a data version."""
    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return fingerprint(list(frame.columns), hashlib.sha256(hashed.tobytes()).hexdigest())


def value_is_stored(context: AssetExecutionContext) -> bool:
    """Whether the running asset's value is still stored (needs the ``local_state`` resource)."""
    return stored_value_path(context.resources.local_state.base_dir, context.asset_key.path) is not None


def arrays_digest(arrays) -> str:
    """A content hash of named NumPy arrays (names, dtypes, shapes and bytes), for a data version."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + b"\0")
        digest.update(array.tobytes())
    return fingerprint("arrays", digest.hexdigest())
