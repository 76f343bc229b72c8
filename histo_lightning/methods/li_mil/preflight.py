"""Pre-flight checks of the MIL pipelines (``pipeline.preflight`` in ``conf/pipeline/mil_hnm.yaml``).

They read the composed config only and import neither torch nor timm, so ``run.py`` runs them right
after composing the command line's config (:mod:`histo_lightning.cli`) and the stage runner again before
any stage (:meth:`~histo_lightning.pipelines.runner.PipelineRunner.check`): a run that cannot get the
weights it needs ends within seconds in one ``error:`` line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from histo_lightning.errors import ConfigError
from histo_lightning.utils.pretrained import weights_problem


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def check_cluster_features(cfg: Any) -> None:
    """FMB with ``hnm.cluster_features=encoder`` clusters with the frozen ``encoder`` (§3.0.3's
    "pre-trained CNN"): its ``encoder.weights`` must be available offline
    (:func:`~histo_lightning.utils.pretrained.weights_problem`). Feature bags
    (``dataset.protocol.feature_bags``) need ``dataset.protocol.frozen_encoder_weights`` likewise."""
    name = str(_select(cfg, "encoder.name", ""))
    if _select(cfg, "dataset.protocol.feature_bags", False):
        weights = _select(cfg, "dataset.protocol.frozen_encoder_weights", "random")
        problem = weights_problem(name, weights)
        if problem is not None:
            raise ConfigError(
                f"dataset.protocol.frozen_encoder_weights={weights}: the feature bags need the frozen "
                f"encoder {name} with these weights, and {problem}; pass "
                "dataset.protocol.frozen_encoder_weights=<local file> (or random)"
            )
    method = str(_select(cfg, "hnm.method", "")).upper()
    features = str(_select(cfg, "hnm.cluster_features", ""))
    if method != "FMB" or features != "encoder":
        return
    weights = _select(cfg, "encoder.weights", "???")
    problem = weights_problem(name, weights)
    if problem is not None:
        raise ConfigError(
            f"hnm.cluster_features=encoder clusters FMB's hard negatives with the frozen encoder {name}, "
            f"but encoder.weights={weights}: {problem}; use hnm.cluster_features=mil (the stage-1 MIL "
            "network's instance embeddings, no outside weights) or encoder.weights=<local file>"
        )


__all__ = ["check_cluster_features"]
