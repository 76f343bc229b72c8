"""``package.module.function`` names in configs (a stage's ``fn``, a check, a pre-flight check) resolved to
the function. Light on purpose (no torch, no Lightning): ``run.py``'s pre-flight checks use it before the
heavy imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from histo_lightning.errors import ConfigError


def import_function(name: str, key: str = "fn") -> Callable[..., Any]:
    """The function named ``package.module.function``; ``key`` names the config key in the error."""
    module_name, _, function = str(name).rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), function) if module_name else None
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}={name}: cannot import it ({err})") from None
    if not callable(found):
        raise ConfigError(f"{key}={name} is not a function (expected package.module.function)")
    return found


__all__ = ["import_function"]
