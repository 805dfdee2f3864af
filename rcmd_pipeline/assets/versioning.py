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

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, DataVersion, MaterializeResult, MetadataValue, Output
from dagster._core.definitions.data_version import extract_data_version_from_entry

from rcmd_pipeline.resources.local_state import KEEP

INPUTS_VERSION = "inputs_version"
KEPT_FROM_RUN = "kept_from_run"


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


def inputs_version(context: AssetExecutionContext, *, config: Any = None, upstream: Iterable[AssetKey | str] = (),
                   extra: Any = None) -> str:
    """The inputs version of the running asset: code version, config, upstream data versions, ``extra``."""
    code = context.assets_def.code_versions_by_key.get(context.asset_key)
    plain_config = config.model_dump() if hasattr(config, "model_dump") else config
    return fingerprint(code, plain_config, upstream_data_versions(context, upstream), extra)


def previous_materialization(context: AssetExecutionContext) -> tuple[str, dict[str, Any]] | None:
    """(run id, metadata) of the latest materialization of the running asset, if any."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    return event.run_id, dict(event.asset_materialization.metadata)


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
    return {k: v for k, v in metadata.items() if k not in (INPUTS_VERSION, KEPT_FROM_RUN)}


def kept(context: AssetExecutionContext, version: str, previous: tuple[str, dict[str, Any]],
         value: Any = KEEP) -> Output:
    """The output of an asset whose inputs did not change since ``previous``: the stored value is kept."""
    run_id, metadata = previous
    context.log.info(f"inputs unchanged since run {run_id} (inputs version {version}): kept the stored value")
    return Output(value, data_version=DataVersion(version), metadata={
        **_carried(metadata),
        INPUTS_VERSION: version,
        KEPT_FROM_RUN: MetadataValue.text(run_id),
    })


def computed(value: Any, version: str, metadata: Mapping[str, Any] | None = None) -> Output:
    """The output of an asset that did its work from inputs ``version``."""
    return Output(value, data_version=DataVersion(version), metadata={**(metadata or {}), INPUTS_VERSION: version})


def kept_result(context: AssetExecutionContext, version: str, previous: tuple[str, dict[str, Any]]
                ) -> MaterializeResult:
    """:func:`kept` for an asset without an IO-managed value (a table, a collection)."""
    output = kept(context, version, previous, value=None)
    return MaterializeResult(metadata=output.metadata, data_version=output.data_version)


def computed_result(version: str, metadata: Mapping[str, Any] | None = None) -> MaterializeResult:
    """:func:`computed` for an asset without an IO-managed value."""
    return MaterializeResult(metadata={**(metadata or {}), INPUTS_VERSION: version}, data_version=DataVersion(version))
