"""Shared pieces of config validation: unknown-key checks and type names for messages.

The lowest module of the config chain (``bdn.config.uri``, ``bdn.config.auth`` and
``bdn.config.weights`` all use it), so it imports nothing of theirs.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from bdn.errors import ConfigError

__all__ = ["reject_unknown_keys", "type_name"]


def reject_unknown_keys(data: Mapping[Any, Any], valid: tuple[str, ...], where: str) -> None:
    """Raise ConfigError naming the keys of ``data`` not in ``valid``, and the closest one."""
    unknown = [key for key in data if key not in valid]
    if not unknown:
        return
    names = ", ".join(repr(key) for key in unknown)
    close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(
        f"unknown key{plural} {names}{hint}; valid keys are {', '.join(valid)}", field=where
    )


def type_name(value: object) -> str:
    """A YAML-flavoured name for a value's type, for 'got ...' in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
