"""Attention MIL as a LightningModule: bag classification with per-instance attention (Ilse et al. 2018,
Li et al. §3.0.1), and the frozen instance encoder that feeds FMB's K-means and feature bags.

:class:`MILModule` follows the supervised-module contract (CONTRACTS.md C2): the network (an
:class:`~histo_lightning.nets.mil.MILClassifier` from ``model.net``), the loss (``loss=bag_bce``: the
clamped bag cross-entropy), the optimiser (a partial; Adam β = (0.9, 0.999), Li §4.0.2) and the metric
suite (a factory of :class:`~histo_lightning.metrics.mil.BagMetrics`) are injected; hyper-parameters hold
plain data only (checkpoints load with ``weights_only=True``); ``val/<monitor>_best`` is the best over all
validation epochs of the run and is kept in the checkpoint, so it survives a resume.

Logged: ``train/loss``, ``train/acc``; ``{val,test}/{loss,acc,precision,recall,f1,auroc,fpr}`` (the
columns of Li's Tables 1 and 2) and, where instance labels exist, ``{val,test}/inst_auroc`` (mean over
bags of the AUROC of the attention against the key-instance labels) and ``inst_auroc_pooled``.

"The epoch with the lowest loss is chosen for evaluation" (§4.0.2): ``monitor: val/loss`` (min) selects
the checkpoint where the fold has validation bags; with ``split.val_fraction=0`` the stage runner keeps
the last epoch (there is no held-out loss to choose by, and choosing by the training loss would pick the
most over-fitted epoch).

``test_step`` returns each bag's probability and attention for the test report (heatmaps, per-instance
CSV); ``predict_step`` returns ``scores``: per bag ``[p, w_1 … w_n, 0 …]`` (the bag probability, then the
attention of its instances, zero-padded to the predict dataset's largest bag), what hard-negative mining
reads back from the feature cache.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from histo_lightning.metrics.mil import BagMetrics, InstanceAttentionAUROC

Batch = dict[str, Tensor]

warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(\w+/)?(val|test|train)/"
)

MONITOR_MODES = ("max", "min")
BEST_KEY = "monitor_best"


def _plain(value: Any, name: str) -> Any:
    """``value`` as plain data (config nodes become containers); a ``TypeError`` naming ``name``."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{name}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"hyper-parameter {name} is a {type(value).__name__}, not plain data")


class MILModule(pl.LightningModule):
    """Trains a MIL bag classifier on padded bag batches ``{instances, mask, label, instance_labels}``.

    Args:
        net: a :class:`~histo_lightning.nets.mil.MILClassifier` (``forward(instances, mask)`` → dict
            with ``prob`` and ``attention``).
        loss: ``loss(probs (B,), labels (B,))`` (``model.loss: ${loss}``).
        optimizer: a partial taking ``params``.
        metrics: a factory of the bag metric suite (one for validation, one for test).
        scheduler: an optional partial taking ``optimizer`` (stepped each epoch).
        monitor, monitor_mode: the validation metric checkpoints are chosen on (``val/loss``, min).
    """

    injected: ClassVar[tuple[str, ...]] = ("net", "loss", "optimizer", "scheduler", "metrics")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        metrics: Callable[[], BagMetrics] | None = None,
        scheduler: Callable[..., Any] | None = None,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__()
        if monitor_mode not in MONITOR_MODES:
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        self.save_hyperparameters(logger=False, ignore=list(self.injected))
        for key, value in list(self.hparams.items()):
            self.hparams[key] = _plain(value, key)
        self._hparams_initial = copy.deepcopy(self._hparams)
        self.net = net
        self.loss = loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.monitor, self.monitor_mode = monitor, monitor_mode
        factory = metrics or BagMetrics
        self.val_metrics, self.test_metrics = factory(), factory()
        self.val_instances, self.test_instances = InstanceAttentionAUROC(), InstanceAttentionAUROC()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = BinaryAccuracy()
        self.best_value: float | None = None

    # ---- the network -------------------------------------------------------------------------------
    def forward(self, instances: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        return self.net(instances, mask)

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, outputs)`` of a padded batch of bags."""
        out = self(batch["instances"], batch.get("mask"))
        return self.loss(out["prob"], batch["label"]), out

    # ---- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # the sanity-check validation must not count
        self.val_metrics.reset()
        self.val_instances.reset()
        self.val_loss.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, out = self.step(batch)
        n = len(batch["label"])
        self.train_loss.update(loss.detach(), weight=n)
        self.train_acc.update(out["prob"].detach(), batch["label"])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    # ---- evaluation --------------------------------------------------------------------------------
    def _suite(self, stage: str) -> tuple[BagMetrics, InstanceAttentionAUROC, MeanMetric]:
        if stage == "val":
            return self.val_metrics, self.val_instances, self.val_loss
        return self.test_metrics, self.test_instances, self.test_loss

    def evaluate(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        loss, out = self.step(batch)
        metrics, instances, loss_metric = self._suite(stage)
        loss_metric.update(loss, weight=len(batch["label"]))
        metrics.update(out["prob"].float(), batch["label"])
        instances.update(out["attention"], batch["instance_labels"], batch["mask"])
        return out

    def epoch_values(self, stage: str) -> dict[str, Tensor]:
        """The ``stage`` metrics of the epoch (undefined ones, e.g. the instance AUROC without instance
        labels, left out), then reset."""
        metrics, instances, loss_metric = self._suite(stage)
        values = {**metrics.compute(), **instances.compute(), "loss": loss_metric.compute()}
        metrics.reset()
        instances.reset()
        loss_metric.reset()
        return {f"{stage}/{k}": v for k, v in values.items() if not torch.isnan(v).any()}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        values = self.epoch_values("val")
        self.log_dict(values)
        if self.monitor in values and not self.trainer.sanity_checking:
            self.update_best(float(values[self.monitor]))
            if self.best_value is not None:
                self.log(f"{self.monitor}_best", torch.tensor(self.best_value), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        out = self.evaluate(batch, "test")
        return {
            "index": batch["index"],
            "prob": out["prob"].detach(),
            "attention": out["attention"].detach(),
            "mask": batch["mask"],
        }

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.epoch_values("test"))

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        out = self(batch["instances"], batch.get("mask"))
        prob, attention = out["prob"].float(), out["attention"].float()
        return {
            "index": batch["index"],
            "prob": prob,
            "attention": attention,
            "scores": torch.cat([prob[:, None], attention], dim=1),
        }

    # ---- best so far, kept in checkpoints ----------------------------------------------------------
    def update_best(self, value: float) -> None:
        if math.isnan(value):
            return
        best = self.best_value
        if best is None or (value > best if self.monitor_mode == "max" else value < best):
            self.best_value = value

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = {"monitor": self.monitor, "value": self.best_value}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(BEST_KEY)
        if state is not None and state.get("monitor") == self.monitor:
            self.best_value = state["value"]

    # ---- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": self.monitor},
        }


class EncoderFeatures(pl.LightningModule):
    """A frozen encoder (the ``encoder`` group) as a predict-stage module: ``{"index", "features"}`` of
    ``{"index", "image"}`` batches, e.g. every instance of a MIL dataset into the shared feature cache.

    Li et al. §3.0.3: "the hard negative instances first go through a pre-trained CNN model to convert to
    feature vectors". ``input_size`` resizes the instances first (bilinear; None: as they are, a 27 px
    patch gives a 1×1 map at a CNN's last stage). :meth:`fingerprint` keys the cache.
    """

    def __init__(self, encoder: nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_size = int(input_size) if input_size else None

    def fingerprint(self) -> dict[str, Any]:
        own = self.encoder.fingerprint() if hasattr(self.encoder, "fingerprint") else {}
        return {"encoder": own, "input_size": self.input_size}

    def forward(self, images: Tensor) -> Tensor:
        if self.input_size and images.shape[-1] != self.input_size:
            images = nn.functional.interpolate(
                images,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
            )
        return self.encoder(images)

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        return {"index": batch["index"], "features": self(batch["image"]).float()}


__all__ = ["BEST_KEY", "EncoderFeatures", "MILModule"]
