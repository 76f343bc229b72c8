"""CHS-Net (Ma et al. 2019) on the stage runner: ``python run.py experiment=chsnet fold=3``.

The stages are declared in ``conf/pipeline/chsnet.yaml`` and run by
:mod:`histo_lightning.pipelines.runner`, in ``<run>/<NN>_<name>/``:

1. ``01_screening`` (fit): the screening network (:class:`~histo_lightning.methods.chsnet.module.ChsnetPatchClassifier`)
   on all training positives and negatives (§3.1.1, §4.2.2);
2. ``02_mining`` (predict): p(mitosis) of every training patch into the stage's feature cache, read by the
   :class:`~histo_lightning.methods.chsnet.mining.HardExampleMining` callback: negatives with p > 0.2 are the
   false positives (``false_positives.csv``), with Table 2's report (§3.2, §4.2.2);
3. ``03_refined`` (fit): the refined network on negatives : positives : false positives drawn 1 : 1 : 3
   (:func:`use_mined_examples`, a data hook: the refined stage's own view of the data module, §4.2.3);
4. ``04_detection`` (test): :class:`~histo_lightning.methods.chsnet.module.ChsnetCascadeDetector` on the held-out
   fold's whole HPFs (screening p > 0.80, refined p > 0.85, NMS, matching; §4.3), with the detection
   report; its ``test/*`` metrics are the run's ``metrics.json`` (a Table 3 row);
5. ``05_detection_unlabelled`` (test, ``method.detection.unlabelled=true``): challenge-format predictions
   for ``mitoses-test-image-data/``.

``method.hard_example_mining`` and ``method.cascade`` select Table 4's ablations (without mining there is
one network; without a cascade the last trained network detects alone). This module holds only what is
CHS-Net's own: the config check and the two data hooks (``data:`` of a stage; they act on that stage's
own view of the data module, never on the data module the run shares).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from histo_lightning.data.datasets.tupac16 import Tupac16DataModule
from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.runner import StageContext
from histo_lightning.utils.instantiate import target_class
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


def check_config(cfg: DictConfig) -> None:
    """The CHS-Net settings fit together (``pipeline.checks``)."""
    model, method = cfg.model, cfg.get("method")
    for key in ("net", "screening", "refined", "detector"):
        if key not in model:
            raise ConfigError(f"model.{key} is missing: the CHS-Net pipeline needs model=chsnet")
    for key in ("detection", "mining", "refined_sampling"):
        if not isinstance(method, DictConfig) or key not in method:
            raise ConfigError(
                f"method.{key} is missing: the CHS-Net pipeline needs the method settings of "
                "experiment=chsnet (or an experiment derived from it)"
            )
    schedules = list(method.get("schedules", {}).keys())
    if method.get("schedule") not in schedules:
        raise ConfigError(
            f"method.schedule={method.get('schedule')!r}: expected one of {schedules}"
        )
    if method.cascade and not method.hard_example_mining:
        raise ConfigError(
            "method.cascade=true needs method.hard_example_mining=true: the refined network trains on "
            "the screening network's false positives (for one network use method.cascade=false)"
        )
    if cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is not used by the CHS-Net pipeline: rerun the same run_id to resume it "
            "(its stage checkpoints are in <run dir>/<NN>_<stage>/checkpoints)"
        )
    data_class = target_class(cfg.dataset)
    if data_class is None or not issubclass(data_class, Tupac16DataModule):
        target = cfg.dataset.get("_target_") if isinstance(cfg.dataset, DictConfig) else cfg.dataset
        raise ConfigError(
            f"dataset={target}: CHS-Net needs TUPAC16 mitosis data "
            "(dataset=tupac16 or dataset=tupac16_synthetic)"
        )


def use_mined_examples(
    ctx: StageContext,
    mining_stage: str = "mining",
    ratios: Sequence[float] = (1, 1, 3),
    epoch_samples: int | None = None,
) -> None:
    """Train on negatives : positives : false positives drawn in ``ratios`` (§4.2.3), the false positives
    being those the mining stage found."""
    mining = ctx.result(mining_stage)
    table = pd.read_csv(mining.path("false_positives"))
    rows = table["patch_row"].to_numpy(dtype=np.int64)
    if len(rows) == 0:
        log.warning(
            f"Stage {ctx.name}: the mining stage found no false positives, so the refined network trains on "
            f"negatives : positives only (ratios {list(ratios)[:2]}); see {mining.path('report')}"
        )
    ctx.datamodule.use_hard_examples(
        rows, ratios=list(ratios), epoch_samples=epoch_samples, seed=int(ctx.cfg.get("seed") or 0)
    )


def use_unlabelled_test_set(ctx: StageContext) -> None:
    """Serve ``mitoses-test-image-data/`` as the test set (refused when the dataset has none)."""
    if ctx.datamodule.unlabelled_hpfs() is None:
        raise ConfigError(
            f"method.detection.unlabelled=true but {ctx.datamodule.root} holds no unlabelled test set "
            "(mitoses-test-image-data/<NN>/01.tif); set method.detection.unlabelled=false"
        )
    ctx.datamodule.use_unlabelled_test_set(True)


__all__ = ["check_config", "use_mined_examples", "use_unlabelled_test_set"]
