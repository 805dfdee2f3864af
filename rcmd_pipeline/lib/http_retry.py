"""How long to wait before retrying an HTTP request: the server's ``Retry-After``, else backoff with jitter."""

import random
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent.

    ``headers`` must look names up case-insensitively (``requests``' and ``httpx``' headers do).
    """
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                moment = parsedate_to_datetime(value)
            except (TypeError, ValueError, OverflowError):
                continue
            if moment.tzinfo is None:  # "-0000": HTTP dates are GMT
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = (moment - datetime.now(timezone.utc)).total_seconds()
        if seconds == seconds:  # not NaN
            return max(0.0, seconds)
    return None


def retry_delay(attempt: int, retry_after: float | None, base_seconds: float, max_seconds: float,
                rng: random.Random) -> float:
    """``Retry-After`` capped by ``max_seconds``, else full jitter:
    ``uniform(0, min(max_seconds, base_seconds * 2**attempt))`` (``attempt`` counts from 0)."""
    if retry_after is not None:
        return min(max_seconds, retry_after)
    return rng.uniform(0.0, min(max_seconds, base_seconds * 2**attempt))


def retry_setting_problems(max_retries: int, timeout_seconds: float, backoff_base_seconds: float,
                           backoff_max_seconds: float) -> list[str]:
    """What is wrong with a client's retry settings, one phrase each (empty when all is well)."""
    problems = []
    if max_retries < 0:
        problems.append(f"max_retries must be >= 0, got {max_retries}")
    if not timeout_seconds > 0:
        problems.append(f"timeout_seconds must be > 0, got {timeout_seconds}")
    if backoff_base_seconds < 0 or backoff_max_seconds < 0:
        problems.append("backoff_base_seconds and backoff_max_seconds must be >= 0")
    return problems
