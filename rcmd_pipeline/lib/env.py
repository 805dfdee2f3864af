"""Reading environment variables the one way the project does: stripped, blank counts as unset."""

import os
from collections.abc import Mapping


def env_text(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable's value without surrounding white space; ``''`` when unset or blank.

    ``environ`` defaults to the process environment (read at call time, so tests may patch it).
    """
    return ((os.environ if environ is None else environ).get(name) or "").strip()
