"""CHS-Net (Ma et al. 2019) as a resumable multi-stage pipeline: ``python run.py experiment=chsnet fold=3``.

The task :func:`run_chsnet` (``task: histo_lightning.pipelines.chsnet.run_chsnet``) runs, in the job's
run directory:

1. ``stage1_screening/``: fit the screening network (:class:`~histo_lightning.models.PatchClassifier`) on
   all training positives and negatives (§3.1.1, §4.2.2);
2. ``stage1_screening/mining/``: offline hard-example mining, a ``trainer.predict`` over every training
   patch with the :class:`~histo_lightning.callbacks.HardExampleMining` callback: negatives with
   p(mitosis) > 0.2 are the false positives; the Table 2 report (§3.2, §4.2.2);
3. ``stage2_refined/``: fit the refined network on negatives : positives : false positives drawn
   1 : 1 : 3 (§4.2.3);
4. ``detection/``: detect on the held-out fold's whole HPFs with the cascade (screening p > 0.80, refined
   p > 0.85, NMS) and match to the ground truth (§4.3), writing ``metrics.json`` (a Table 3 row) and the
   detection report (:class:`~histo_lightning.callbacks.DetectionReport`).

``model.hard_example_mining`` and ``model.cascade`` select Table 4's ablations: without a cascade the
last trained network detects alone; without mining there is no stage 2 (one network, Table 4's "SFL").

Each stage checkpoints into its own folder and writes ``done.json`` when finished; a rerun of the same
run directory (same ``run_id``) skips finished stages and resumes an interrupted fit from its
``checkpoints/last.ckpt``. Under DDP (``trainer=ddp``, ``trainer=ddp_cpu``) every process runs this same
sequence of trainers; mining and detection gather their results across processes. Stage metrics are
logged to the run's loggers with stage-prefixed keys (``screening/val/ap``, ``refined/train/loss``,
``mining/fp``, ``test/f1``).

``trainer.max_epochs`` caps each stage's own epochs (``model.screening.max_epochs`` = 10,
``model.refined.max_epochs`` = 15), so ``debug=smoke`` runs every stage for one epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from histo_lightning.callbacks.detection_report import DetectionReport
from histo_lightning.callbacks.mining import HardExampleMining, MiningResult, load_mining
from histo_lightning.data.tupac16 import Tupac16DataModule
from histo_lightning.errors import ConfigError
from histo_lightning.models.cascade import CascadeDetector
from histo_lightning.models.mitosis import PatchClassifier
from histo_lightning.train import (
    build_datamodule,
    log_hyperparameters,
    scalars,
    seed_run,
    write_run_report,
)
from histo_lightning.utils.batchnorm import check_training_batch_size
from histo_lightning.utils.checkpoints import check_checkpoint, load_state_dict
from histo_lightning.utils.hydra_ddp import prepare_ddp_subprocess_launch
from histo_lightning.utils.instantiate import build, instantiate_callbacks, instantiate_loggers
from histo_lightning.utils.io import read_json, write_json_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

STAGE_DIRS = {"screening": "stage1_screening", "refined": "stage2_refined"}
DETECTION_DIR = "detection"
DONE = "done.json"


class Pipeline:
    """One CHS-Net job: the configured stages over one data module, sharing loggers (see module doc)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model
        self.out = Path(cfg.paths.output_dir)
        self.check_config()
        self.hem = bool(self.model_cfg.hard_example_mining)
        self.cascade = bool(self.model_cfg.cascade)
        self.datamodule: Tupac16DataModule | None = None
        self.loggers: list = []
        self.metrics: dict[str, float] = {}
        self.stages: dict[str, dict[str, Any]] = {}
        self._hparams_logged = False

    # ---- configuration ----------------------------------------------------------------------------
    def check_config(self) -> None:
        cfg, model = self.cfg, self.cfg.model
        for key in ("net", "screening", "refined", "detection", "mining", "refined_sampling"):
            if key not in model:
                raise ConfigError(
                    f"model.{key} is missing: the CHS-Net pipeline needs model=chsnet"
                )
        schedules = list(model.get("schedules", {}).keys())
        if model.get("schedule") not in schedules:
            raise ConfigError(
                f"model.schedule={model.get('schedule')!r}: expected one of {schedules}"
            )
        if model.cascade and not model.hard_example_mining:
            raise ConfigError(
                "model.cascade=true needs model.hard_example_mining=true: the refined network trains on the "
                "screening network's false positives (for one network use model.cascade=false)"
            )
        if cfg.get("ckpt_path"):
            raise ConfigError(
                "ckpt_path is not used by the CHS-Net pipeline: rerun the same run_id to resume it "
                "(its stage checkpoints are in <run dir>/stage*/checkpoints)"
            )
        if not isinstance(cfg.dataset, DictConfig) or "Tupac16" not in str(
            cfg.dataset.get("_target_")
        ):
            raise ConfigError(
                f"dataset={cfg.dataset.get('_target_')}: CHS-Net needs TUPAC16 mitosis data "
                "(dataset=tupac16 or dataset=tupac16_synthetic)"
            )

    def stage_epochs(self, stage: str) -> int:
        cap = self.cfg.trainer.get("max_epochs")
        own = int(self.model_cfg[stage].max_epochs)
        return own if cap is None or cap < 0 else min(own, int(cap))

    # ---- building blocks --------------------------------------------------------------------------
    def generic_callbacks(self) -> list[pl.Callback]:
        """The configured callbacks except the checkpointing one (each stage makes its own)."""
        callbacks = self.cfg.get("callbacks")
        if not callbacks:
            return []
        keep = [k for k in callbacks if k not in ("model_checkpoint", "test_report")]
        return instantiate_callbacks(OmegaConf.masked_copy(callbacks, keep))

    def checkpoint_callback(
        self, stage: str, stage_dir: Path, has_validation: bool
    ) -> ModelCheckpoint:
        monitor = f"{stage}/{self.model_cfg.monitor}" if has_validation else None
        template = (self.cfg.get("callbacks") or {}).get("model_checkpoint")
        settings = {
            "dirpath": str(stage_dir / "checkpoints"),
            "monitor": monitor,
            "mode": self.model_cfg.monitor_mode,
        }
        if template is not None:
            return build(template, **settings)
        return ModelCheckpoint(
            **settings, save_last=True, filename="epoch_{epoch:03d}", auto_insert_metric_name=False
        )

    def trainer(self, callbacks: list[pl.Callback], root: Path, **overrides: Any) -> pl.Trainer:
        return build(
            self.cfg.trainer,
            callbacks=callbacks,
            logger=self.loggers,
            default_root_dir=str(root),
            **overrides,
        )

    def log_hparams_once(self, module: pl.LightningModule, trainer: pl.Trainer) -> None:
        if self._hparams_logged:
            return
        assert self.datamodule is not None
        data = {"dataset": self.datamodule.name, "synthetic": self.datamodule.is_synthetic}
        log_hyperparameters(self.cfg, module, trainer, data)
        self._hparams_logged = True

    @staticmethod
    def load_weights(module: pl.LightningModule, checkpoint: str | Path) -> None:
        module.load_state_dict(load_state_dict(checkpoint, key="stage checkpoint"))

    # ---- stages -----------------------------------------------------------------------------------
    def fit_stage(self, stage: str) -> PatchClassifier:
        """Fit one network (or reuse a finished stage) and return it with its best weights loaded."""
        assert self.datamodule is not None
        stage_dir = self.out / STAGE_DIRS[stage]
        module: PatchClassifier = build(self.model_cfg[stage])
        done = read_json(stage_dir / DONE)
        if done is not None:
            log.info(f"Stage {stage}: finished earlier, using {done['best_checkpoint']}")
            self.load_weights(module, done["best_checkpoint"])
            self.stages[stage] = {**done, "status": "reused"}
            self.metrics.update(done.get("metrics", {}))
            return module
        if not self.cfg.get("train", True):
            raise ConfigError(
                f"train=false but stage {stage} has not finished in {stage_dir}: nothing to evaluate"
            )
        check_training_batch_size(module, self.datamodule.batch_size)
        has_val = len(self.datamodule.hpf_ids("val")) > 0
        checkpoint = self.checkpoint_callback(stage, stage_dir, has_val)
        trainer = self.trainer(
            [checkpoint, *self.generic_callbacks()], stage_dir, max_epochs=self.stage_epochs(stage)
        )
        self.log_hparams_once(module, trainer)
        last = stage_dir / "checkpoints" / "last.ckpt"
        resumed_from = (
            check_checkpoint(last, key=f"resume (stage {stage})")
            if self.cfg.get("resume", True) and last.is_file()
            else None
        )
        if resumed_from:
            log.info(f"Stage {stage}: resuming from {resumed_from}")
        log.info(f"Stage {stage}: fitting for {trainer.max_epochs} epoch(s) into {stage_dir}")
        trainer.fit(module, datamodule=self.datamodule, ckpt_path=resumed_from, weights_only=True)
        best = checkpoint.best_model_path or checkpoint.last_model_path or str(last)
        self.load_weights(module, best)
        metrics = {
            k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith(f"{stage}/")
        }
        best_key = f"{stage}/{self.model_cfg.monitor}_best"
        if best_key not in metrics and checkpoint.best_model_score is not None:
            # resumed from a last.ckpt taken after the final epoch: fit had nothing left to run, so
            # nothing was logged; the restored checkpoint callback still knows the best score
            metrics[best_key] = float(checkpoint.best_model_score)
        info = {
            "best_checkpoint": best,
            "resumed_from": resumed_from,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "metrics": metrics,
        }
        if trainer.is_global_zero:
            write_json_atomic(stage_dir / DONE, info)
        self.stages[stage] = {**info, "status": "resumed" if resumed_from else "trained"}
        self.metrics.update(metrics)
        return module

    def mine(self, screening: PatchClassifier) -> MiningResult:
        """Hard-example mining with the screening network (or the finished result of an earlier run)."""
        assert self.datamodule is not None
        mining_dir = self.out / STAGE_DIRS["screening"] / "mining"
        fingerprint = self.datamodule.index_fingerprint()
        result = load_mining(mining_dir)
        if result is not None:
            if result.report.get("index_fingerprint") != fingerprint:
                raise ConfigError(
                    f"{mining_dir} was mined on another patch index (dataset or dataset.sampling changed); "
                    f"use a new run_id, or delete {mining_dir} to mine again"
                )
            log.info(
                f"Hard-example mining: finished earlier ({len(result.false_positives)} false positives)"
            )
            status = "reused"
        else:
            callback = HardExampleMining(
                mining_dir, float(self.model_cfg.mining.threshold), fingerprint
            )
            trainer = self.trainer([callback, *self.generic_callbacks()], mining_dir)
            self.log_hparams_once(screening, trainer)
            trainer.predict(screening, datamodule=self.datamodule, return_predictions=False)
            assert callback.result is not None
            result, status = callback.result, "mined"
        self.stages["mining"] = {
            "status": status,
            "false_positives": len(result.false_positives),
            **result.report,
        }
        self.metrics.update(
            {
                f"mining/{k}": float(v)
                for k, v in result.report.items()
                if isinstance(v, (int, float))
            }
        )
        return result

    def detect(self, screening: PatchClassifier | None, final: PatchClassifier) -> dict[str, float]:
        """Detection on the held-out fold (and, if asked, the unlabelled test set)."""
        assert self.datamodule is not None
        det_dir = self.out / DETECTION_DIR
        done = read_json(det_dir / DONE)
        if done is not None:
            log.info(f"Detection: finished earlier ({det_dir / DONE})")
            self.stages["detection"] = {**done, "status": "reused"}
            return done["metrics"]
        settings = self.model_cfg.detection
        radius = self.datamodule.radius_px(float(settings.match_radius_um))
        detector = CascadeDetector(
            final_net=final.inference_net(),
            screening_net=screening.inference_net() if screening is not None else None,
            screening_threshold=settings.screening_threshold,
            refined_threshold=settings.refined_threshold,
            stride=settings.stride,
            batch_size=settings.batch_size,
            nms_box=settings.nms_box,
            nms_iou=settings.nms_iou,
            match_radius_px=radius,
            match_rule=settings.match_rule,
        )
        report = DetectionReport(
            det_dir,
            match_radius_px=radius,
            match_rule=settings.match_rule,
            refined_threshold=settings.refined_threshold,
            overlays=settings.overlays,
            overlay_max_side=settings.overlay_max_side,
            max_logged_overlays=settings.max_logged_overlays,
        )
        trainer = self.trainer([report, *self.generic_callbacks()], det_dir)
        self.log_hparams_once(final, trainer)
        log.info(
            f"Detection on the held-out fold: {'cascade' if screening is not None else 'one network'}, "
            f"stride {settings.stride}, match radius {radius:g} px"
        )
        trainer.test(detector, datamodule=self.datamodule)
        metrics = {
            k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")
        }
        unlabelled = None
        if settings.get("unlabelled") and self.datamodule.unlabelled_hpfs() is not None:
            self.datamodule.use_unlabelled_test_set(True)
            trainer.test(detector, datamodule=self.datamodule)
            self.datamodule.use_unlabelled_test_set(False)
            unlabelled = str(det_dir / "unlabelled")
        info = {"metrics": metrics, "match_radius_px": radius, "unlabelled_predictions": unlabelled}
        if trainer.is_global_zero:
            write_json_atomic(det_dir / DONE, info)
        self.stages["detection"] = {**info, "status": "detected"}
        return metrics

    # ---- the job ----------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        started = time.time()
        seed_run(self.cfg)
        datamodule = build_datamodule(self.cfg)
        datamodule.setup("fit")
        self.datamodule = datamodule
        self.loggers = instantiate_loggers(self.cfg.get("logger"))
        prepare_ddp_subprocess_launch()

        screening = self.fit_stage("screening")
        final = screening
        if self.hem:
            mined = self.mine(screening)
            sampling = self.model_cfg.refined_sampling
            datamodule.use_hard_examples(
                mined.false_positives,
                ratios=list(sampling.ratios),
                epoch_samples=sampling.epoch_samples,
                seed=int(self.cfg.get("seed") or 0),
            )
            final = self.fit_stage("refined")
        if self.cfg.get("test", True):
            self.metrics.update(self.detect(screening if self.cascade else None, final))

        if getattr(rank_zero_only, "rank", 0) == 0:
            write_run_report(
                self.cfg,
                datamodule,
                self.metrics,
                started,
                pipeline={
                    "method": "CHS-Net",
                    "hard_example_mining": self.hem,
                    "cascade": self.cascade,
                    "schedule": self.model_cfg.schedule,
                    "loss": OmegaConf.to_container(self.cfg.loss, resolve=True),
                },
                stages=self.stages,
            )
        return self.metrics


def run_chsnet(cfg: DictConfig) -> dict[str, float]:
    """The CHS-Net task (``task: histo_lightning.pipelines.chsnet.run_chsnet``): see the module docstring."""
    return Pipeline(cfg).run()


__all__ = ["DETECTION_DIR", "STAGE_DIRS", "Pipeline", "run_chsnet"]
