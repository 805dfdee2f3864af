"""Secrets from the environment: passed to Dagster by name, resolved only where used, never shown.

Every resource that holds a credential (TMDB, OpenAI, Qdrant, the database URL) goes through these
functions, so "the UI shows the variable's name, never its value", "an error message never quotes
a key" and "a URL is shown without its credentials" are implemented once.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dagster import EnvVar
from sqlalchemy.engine import make_url

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


def mask_url(url: str) -> str:
    """A service URL without user info (``user:password@`` becomes ``***@``), safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def mask_database_url(url: str) -> str:
    """A SQLAlchemy database URL with its password (and any ``password``/``pwd`` query value) replaced
    by ``***``; the user name stays (it says which account). Parsed with SQLAlchemy's own grammar, so
    a string it cannot parse is shown as nothing of it."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as nothing of it
        return "<unparseable database URL>"
    secret_keys = {k for k in parsed.query if k.lower() in ("password", "passwd", "pwd")}
    if secret_keys:
        parsed = parsed.set(query={k: ("***" if k in secret_keys else v) for k, v in parsed.query.items()})
    return parsed.render_as_string(hide_password=True)
