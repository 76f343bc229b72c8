"""Instantiate callbacks and loggers from their config groups (dicts of named ``_target_`` nodes)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

from histo_lightning.errors import ConfigError


def _instantiate_all(cfg: DictConfig | None, group: str, kind: type) -> list[Any]:
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{group} must be a mapping of named configs, got {type(cfg).__name__}")
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            obj = hydra.utils.instantiate(node)
            if not isinstance(obj, kind):
                raise ConfigError(
                    f"{group}.{name} builds a {type(obj).__name__}, expected a {kind.__name__}"
                )
            objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Every node with a ``_target_`` under ``callbacks``."""
    return _instantiate_all(cfg, "callbacks", Callback)


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Every node with a ``_target_`` under ``logger``."""
    return _instantiate_all(cfg, "logger", Logger)
