"""Fingerprints of configurations and of what produced a file, and the differences between two of them.

Stage folders (``done.json``) and feature caches (``cache.json``) record what produced them as a JSON
document; :func:`digest` condenses it and :func:`describe_differences` says, key by key, why a recorded
document and a requested one differ, so that a refusal or a redo can name its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical(value: Any) -> Any:
    """The JSON form of ``value`` (tuples as lists, numpy scalars and paths as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def digest(value: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True).encode()).hexdigest()[
        :length
    ]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` for ``{"a": {"b": 1}}`` (lists stay values)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def describe_differences(
    recorded: Mapping[str, Any],
    requested: Mapping[str, Any],
    here: str = "here",
    there: str = "recorded",
    limit: int = 8,
) -> list[str]:
    """``key: <requested> <here>, <recorded> <there>`` for each flattened key that differs (at most ``limit``)."""
    old, new = flatten(canonical(recorded)), flatten(canonical(requested))
    lines = [
        f"{key}: {new.get(key, '<absent>')!r} {here}, {old.get(key, '<absent>')!r} {there}"
        for key in sorted(set(old) | set(new))
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


__all__ = ["canonical", "describe_differences", "digest", "flatten"]
