"""One CHS-Net stage: a mitosis / non-mitosis patch classifier trained with the paper's settings (§4.2.2).

:class:`PatchClassifier` trains the screening network (stage 1) and the refined network (stage 2); the
pipeline (:mod:`histo_lightning.pipelines.chsnet`) builds one of each from config.

* **Optimiser**: an injected partial (Adam with L2 ``weight_decay`` 2e-7: "regularize decay of 2e-07").
* **Learning-rate schedule**: piecewise constant over *fractional* epochs (the refined network's drops
  at 2.5 and 9.5), stepped after every optimiser step, so a milestone at epoch 2.5 takes effect at
  exactly half of the third epoch (:func:`piecewise_constant`).
* **Weight moving average 0.9** ("moving average decay of 0.9", TensorFlow's ExponentialMovingAverage of
  the trainable variables): an EMA copy of the network (``torch.optim.swa_utils.AveragedModel``, buffers
  averaged too) updated after every optimiser step; validation, mining and detection use it.
* **BN moving decay 0.99** lives in the network (momentum 0.01).

Logged under the stage name: ``<stage>/train/loss``, ``<stage>/val/{loss,ap,auroc,precision,recall,f1}``
(precision/recall/F1 of the mitosis class at p > 0.5) and ``<stage>/val/<monitor>_best``.
``predict_step`` returns ``{"index", "label", "prob"}`` (p(mitosis)) for hard-example mining.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric, MinMetric
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryStatScores

warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('\w+/(val|train)/")

Batch = dict[str, Tensor]


def piecewise_constant(epoch: float, milestones: Sequence[float], values: Sequence[float]) -> float:
    """``values[i]`` for ``milestones[i-1] <= epoch < milestones[i]`` ("0.01 after epoch 2": from 2.0 on)."""
    return float(values[bisect.bisect_right(list(milestones), epoch)])


def check_schedule(milestones: Sequence[float], values: Sequence[float]) -> None:
    if len(values) != len(milestones) + 1:
        raise ValueError(
            f"a schedule needs one more value than milestones, got {len(milestones)} milestones "
            f"and {len(values)} values"
        )
    if list(milestones) != sorted(milestones) or any(v <= 0 for v in values):
        raise ValueError("schedule milestones must increase and values be positive")


class PatchClassifier(pl.LightningModule):
    """Trains a CHS-Net network on ``{"image" (N,3,128,128) uint8, "label", "index"}`` batches.

    Args:
        net: the network (:class:`~histo_lightning.nets.chsnet.CHSNet`), logits ``(N, 2)``.
        loss: the criterion (semi-focal, focal or cross-entropy; ``model.<stage>.loss: ${loss}``).
        optimizer: partial taking ``params`` (the learning rate it carries is ignored when a schedule is set).
        schedule: ``{"milestones": [...epochs], "values": [...learning rates]}``, or None for a constant rate.
        stage: the name every logged key starts with (``screening``, ``refined``).
        ema_decay: weight moving average decay (§4.2.2: 0.9); None trains and evaluates the raw weights.
        max_epochs: the stage's epochs (the pipeline caps them at ``trainer.max_epochs``).
        monitor: validation metric for checkpoint selection, without the stage prefix (``val/ap``).
        monitor_mode: ``max`` or ``min``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Sequence[float]] | None = None,
        stage: str = "screening",
        ema_decay: float | None = 0.9,
        max_epochs: int = 10,
        monitor: str = "val/ap",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer"])
        self.optimizer_factory = optimizer
        if schedule is not None:
            check_schedule(schedule["milestones"], schedule["values"])
        if monitor_mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        self.net = net
        self.loss = loss
        self.ema = (
            AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay is not None
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)  # not optimised (and not "unused parameters" under DDP)
        self.stage = stage
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_ap = BinaryAveragePrecision()
        self.val_auroc = BinaryAUROC()
        self.val_stats = BinaryStatScores(threshold=0.5)
        self.val_best = MaxMetric() if monitor_mode == "max" else MinMetric()

    def inference_net(self) -> nn.Module:
        """The network used for evaluation, mining and detection: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def forward(self, images: Tensor) -> Tensor:
        """Logits of the evaluation network (EMA weights)."""
        return self.inference_net()(images)

    def probabilities(self, images: Tensor) -> Tensor:
        """p(mitosis) of ``(N, 3, 128, 128)`` patches from the evaluation network."""
        return self(images).float().softmax(dim=-1)[:, 1]

    def key(self, name: str) -> str:
        return f"{self.stage}/{name}"

    # ---- training ---------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.val_best.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self.net(batch["image"])
        loss = self.loss(logits, batch["label"])
        self.train_loss.update(loss.detach(), weight=len(logits))
        self.log(
            self.key("train/loss_step"), loss.detach(), on_step=True, on_epoch=False, prog_bar=True
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def on_train_epoch_end(self) -> None:
        self.log(self.key("train/loss"), self.train_loss.compute())
        self.train_loss.reset()

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        labels = batch["label"]
        self.val_loss.update(self.loss(logits, labels), weight=len(labels))
        probs = logits.softmax(dim=-1)[:, 1]
        self.val_ap.update(probs, labels)
        self.val_auroc.update(probs, labels)
        self.val_stats.update(probs, labels)

    def on_validation_epoch_end(self) -> None:
        tp, fp, _, fn, _ = (float(v) for v in self.val_stats.compute())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        values = {
            "val/loss": self.val_loss.compute(),
            "val/ap": self.val_ap.compute(),
            "val/auroc": self.val_auroc.compute(),
            "val/precision": torch.tensor(precision),
            "val/recall": torch.tensor(recall),
            "val/f1": torch.tensor(
                2 * precision * recall / (precision + recall) if precision + recall else 0.0
            ),
        }
        self.log_dict({self.key(k): v for k, v in values.items()})
        monitor = self.hparams.monitor
        if monitor in values and not self.trainer.sanity_checking:
            self.val_best.update(values[monitor])
            self.log(self.key(f"{monitor}_best"), self.val_best.compute(), prog_bar=True)
        for metric in (self.val_loss, self.val_ap, self.val_auroc, self.val_stats):
            metric.reset()

    # ---- mining -----------------------------------------------------------------------------------
    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        return {
            "index": batch["index"],
            "label": batch["label"],
            "prob": self.probabilities(batch["image"]),
        }

    # ---- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        schedule = self.hparams.schedule
        if schedule is None:
            return optimizer
        milestones, values = list(schedule["milestones"]), list(schedule["values"])
        for group in optimizer.param_groups:
            group["lr"] = values[0]
            group["initial_lr"] = values[0]
        steps_per_epoch = max(
            1.0, self.trainer.estimated_stepping_batches / max(1, self.trainer.max_epochs)
        )

        def factor(step: int) -> float:
            return piecewise_constant(step / steps_per_epoch, milestones, values) / values[0]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


__all__ = ["PatchClassifier", "check_schedule", "piecewise_constant"]
