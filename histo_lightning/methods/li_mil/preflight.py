"""Pre-flight checks of the MIL pipelines (``pipeline.preflight`` in ``conf/pipeline/mil{,_hnm}.yaml``).

They read the composed config only and import neither torch nor timm, so ``run.py`` runs them right
after composing the command line's config (:mod:`histo_lightning.cli`) and the stage runner again before
any stage (:meth:`~histo_lightning.pipelines.runner.PipelineRunner.check`): a run that cannot get the
weights it needs ends within seconds in one ``error:`` line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from histo_lightning.cli import CONF
from histo_lightning.errors import ConfigError
from histo_lightning.utils.pretrained import weights_problem


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def _dataset_choice(cfg: Any) -> str | None:
    """The ``dataset=`` option of the run (from the composed config's ``hydra`` node, or Hydra's)."""
    choice = _select(cfg, "hydra.runtime.choices.dataset")
    if choice is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            choice = HydraConfig.get().runtime.choices.get("dataset")
        except Exception:  # no Hydra run (a test composing the config): the name is not known
            choice = None
    return None if choice is None else str(choice)


def check_protocol(cfg: Any) -> None:
    """Li et al.'s protocol for the dataset (§4.0.2: folds, repetitions, learning rate, epochs, instance
    encoder) is ``method.protocol``, read from ``conf/protocol/li_mil/<dataset>.yaml``; a dataset without
    one (``experiment=mil_ilse dataset=bach``) stops here, naming the datasets that have one."""
    if not _select(cfg, "method.protocol"):
        folder = CONF / "protocol" / "li_mil"
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        dataset = _dataset_choice(cfg) or "<dataset>"
        raise ConfigError(
            f"dataset={dataset}: Li et al.'s MIL experiments have no protocol for it (method.protocol "
            f"comes from conf/protocol/li_mil/{dataset}.yaml; there are: {known}); write that file or "
            "choose one of those datasets"
        )


def check_cluster_features(cfg: Any) -> None:
    """FMB with ``method.hnm.cluster_features=encoder`` clusters with the frozen ``encoder`` (§3.0.3's
    "pre-trained CNN"): its ``encoder.weights`` must be available offline
    (:func:`~histo_lightning.utils.pretrained.weights_problem`). Feature bags
    (``method.protocol.feature_bags``) need ``method.protocol.frozen_encoder_weights`` likewise."""
    name = str(_select(cfg, "encoder.name", ""))
    if _select(cfg, "method.protocol.feature_bags", False):
        weights = _select(cfg, "method.protocol.frozen_encoder_weights", "random")
        problem = weights_problem(name, weights)
        if problem is not None:
            raise ConfigError(
                f"method.protocol.frozen_encoder_weights={weights}: the feature bags need the frozen "
                f"encoder {name} with these weights, and {problem}; pass "
                "method.protocol.frozen_encoder_weights=<local file> (or random)"
            )
    method = str(_select(cfg, "method.hnm.method", "")).upper()
    features = str(_select(cfg, "method.hnm.cluster_features", ""))
    if method != "FMB" or features != "encoder":
        return
    weights = _select(cfg, "encoder.weights", "???")
    problem = weights_problem(name, weights)
    if problem is not None:
        raise ConfigError(
            f"method.hnm.cluster_features=encoder clusters FMB's hard negatives with the frozen encoder {name}, "
            f"but encoder.weights={weights}: {problem}; use method.hnm.cluster_features=mil (the stage-1 MIL "
            "network's instance embeddings, no outside weights) or encoder.weights=<local file>"
        )


__all__ = ["check_cluster_features", "check_protocol"]
