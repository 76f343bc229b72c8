"""A pipeline's pre-flight checks (``pipeline.preflight: [{fn: package.module.function, ...kwargs}]``).

Each is called as ``fn(cfg, **kwargs)`` on the composed config and raises a
:class:`~histo_lightning.errors.ConfigError` naming the key that is wrong and the way out. They must be
light (no torch, no timm: e.g. :mod:`histo_lightning.methods.li_mil.preflight`) because ``run.py`` runs them right
after composing the command line's config, before the heavy imports (:mod:`histo_lightning.cli`), so a
run that cannot succeed ends within seconds; the stage runner runs them again before any stage.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from histo_lightning.utils.imports import import_function

PREFLIGHT_KEY = "preflight"


def run_preflight(cfg: DictConfig) -> None:
    """Call every check of ``cfg.pipeline.preflight`` (none: nothing to do)."""
    pipeline = cfg.get("pipeline") if isinstance(cfg, DictConfig) else None
    specs = pipeline.get(PREFLIGHT_KEY) if isinstance(pipeline, DictConfig) else None
    for spec in specs or []:
        spec = dict(OmegaConf.to_container(spec, resolve=False))
        check = import_function(str(spec.pop("fn", "")), key=f"pipeline.{PREFLIGHT_KEY}.fn")
        check(cfg, **spec)


__all__ = ["PREFLIGHT_KEY", "run_preflight"]
