"""Instantiate objects from config, keeping our one-line user errors intact.

Hydra wraps any exception raised inside a ``_target_`` in an ``InstantiationException``; a
:class:`~histo_lightning.errors.HistoError` raised by a constructor (a bad ``dataset.magnifications``, a
missing ``model.net.weights_path``) is unwrapped and re-raised as itself, so ``run.py`` reports it in one
line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import hydra
from omegaconf import DictConfig
from pytorch_lightning import Callback, LightningDataModule
from pytorch_lightning.loggers import Logger

from histo_lightning.errors import ConfigError, HistoError
from histo_lightning.utils.imports import import_function  # noqa: F401  (re-exported)
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


def _user_error(err: BaseException) -> HistoError | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HistoError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, **kwargs)``, re-raising a user error from inside unwrapped."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is not None:
            raise user_error from None
        raise


def _instantiate_all(
    cfg: DictConfig | None, group: str, kind: type, exclude: Collection[str] = ()
) -> list[Any]:
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{group} must be a mapping of named configs, got {type(cfg).__name__}")
    for name, node in cfg.items():
        if name in exclude:
            continue
        if isinstance(node, DictConfig) and "_target_" in node:
            obj = build(node)
            if not isinstance(obj, kind):
                raise ConfigError(
                    f"{group}.{name} builds a {type(obj).__name__}, expected a {kind.__name__}"
                )
            objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None, exclude: Collection[str] = ()) -> list[Callback]:
    """Every node with a ``_target_`` under ``callbacks``, except those named in ``exclude``."""
    return _instantiate_all(cfg, "callbacks", Callback, exclude)


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Every node with a ``_target_`` under ``logger``."""
    return _instantiate_all(cfg, "logger", Logger)


def build_datamodule(cfg: DictConfig) -> LightningDataModule:
    """The data module of ``cfg.dataset``, prepared now (dataset read, split written, caches built).

    Preparing before any trainer exists checks the data and the fold before a process is started.
    """
    log.info(f"Data: {cfg.dataset._target_}")
    datamodule = build(cfg.dataset)
    datamodule.prepare_data()
    return datamodule


def target_class(node: Any) -> type | None:
    """The class a config node's ``_target_`` names, or None (no ``_target_``, not importable, not a
    class): for checks by type (``issubclass(target_class(cfg.dataset), Tupac16DataModule)``), never by
    the ``_target_`` string."""
    target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
    if not target:
        return None
    try:
        found = hydra.utils.get_object(str(target))
    except Exception:
        return None
    return found if isinstance(found, type) else None
