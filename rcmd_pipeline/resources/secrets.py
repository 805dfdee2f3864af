"""Moved to :mod:`rcmd_pipeline.lib.secrets` (it talks to no outside system); kept so old imports work
(remove once the branches that were open when it moved have merged)."""

from rcmd_pipeline.lib.secrets import REDACTED, env_value, redact, secret_value

__all__ = ["REDACTED", "env_value", "redact", "secret_value"]
