"""DataFrames to and from the tables' rows: plain Python values checked against each column's type."""

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Column, Date, DateTime, Integer, Table


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _to_int(value: Any, column: str) -> int | None:
    if _is_missing(value):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"column {column}: expected a whole number, got {value!r}")


def _to_date(value: Any, column: str) -> date | None:
    if _is_missing(value):
        return None
    if isinstance(value, datetime):  # also pd.Timestamp
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise ValueError(f"column {column}: expected a date (YYYY-MM-DD), got {value!r}")


def _to_datetime(value: Any, column: str) -> datetime | None:
    if _is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).to_pydatetime()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"column {column}: expected a timestamp, got {value!r}")


def _to_str(value: Any, column: str) -> str | None:
    return None if _is_missing(value) else str(value)


def _converter(column: Column):
    if isinstance(column.type, Integer):
        return _to_int
    if isinstance(column.type, DateTime):
        return _to_datetime
    if isinstance(column.type, Date):
        return _to_date
    return _to_str


def table_rows(table: Table, frame: pd.DataFrame, regtime: datetime | None = None) -> list[dict[str, Any]]:
    """The frame's rows as plain Python values, one dict per row with every column of ``table``.

    The frame uses the table's column names; a missing ``series_id`` is 0, ``adult`` 'N',
    ``useyn`` 'Y', any other missing column NULL. ``regtime``: the given timestamp on every row, or
    else the frame's values with gaps filled by one timestamp taken now (one per load).
    """
    unknown = [c for c in frame.columns if c not in table.columns]
    if unknown:
        raise ValueError(f"{table.name}: unknown column(s) {', '.join(map(str, unknown))}; "
                         f"expected some of {', '.join(table.columns.keys())}")
    (key,) = table.primary_key.columns
    if key.name not in frame.columns:
        raise ValueError(f"{table.name}: the frame has no {key.name} column (the primary key)")
    keys = frame[key.name]
    if keys.isna().any():
        raise ValueError(f"{table.name}: {int(keys.isna().sum())} row(s) without {key.name}")
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        shown = ", ".join(str(v) for v in duplicated.unique()[:5])
        raise ValueError(f"{table.name}: duplicate {key.name} value(s) {shown} ({len(duplicated)} extra row(s))")

    load_time = regtime or datetime.now().replace(microsecond=0)
    n = len(frame)
    values: dict[str, list] = {}
    for column in table.columns:
        convert = _converter(column)
        if column.name == "regtime" and regtime is not None:
            values[column.name] = [regtime] * n
        elif column.name in frame.columns:
            values[column.name] = [convert(v, column.name) for v in frame[column.name].tolist()]
            if column.name == "regtime":
                values[column.name] = [load_time if v is None else v for v in values[column.name]]
        elif column.name == "regtime":
            values[column.name] = [load_time] * n
        else:
            default = column.default.arg if column.default is not None else None
            values[column.name] = [default] * n
        if not column.nullable and any(v is None for v in values[column.name]):
            raise ValueError(f"{table.name}.{column.name} must not be NULL")
    names = list(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]


def frame_from_rows(rows, columns: Iterable[str]) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
    for name in ("release_date", "regtime"):
        if name in frame.columns:
            frame[name] = pd.to_datetime(frame[name], errors="coerce")
    return frame
