"""Secrets from the environment: passed to Dagster by name, resolved only where used, never shown.

Every resource that holds a credential (TMDB, OpenAI, Qdrant, the database URL) goes through these
three functions, so "the UI shows the variable's name, never its value" and "an error message never
quotes a key" are implemented once.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import EnvVar

REDACTED = "***"


def env_value(environ: Mapping[str, str], name: str):
    """``EnvVar(name)`` when ``environ`` agrees with the process environment (Dagster then stores
    and shows the variable's name, not the secret); the plain value otherwise (a custom mapping,
    e.g. in tests, where an EnvVar could not resolve at run time). Resources keep either out of
    their ``repr``."""
    value = environ[name]
    return EnvVar(name) if os.environ.get(name) == value else value


def secret_value(value: Any) -> str:
    """The string behind a secret field ('' when unset), resolving an ``EnvVar`` outside a run too
    (inside a run Dagster has already resolved it)."""
    if isinstance(value, EnvVar):
        value = value.get_value()
    return (value or "").strip()


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
