"""CHS-Net's patch classifier: mitosis / non-mitosis, trained with the paper's settings (§4.2.2).

:class:`ChsnetPatchClassifier` trains the screening network (stage ``screening``) and the refined network
(stage ``refined``) of the CHS-Net pipeline (``conf/pipeline/chsnet.yaml``), one of each from config.

* **Optimiser**: an injected partial (Adam with L2 ``weight_decay`` 2e-7: "regularize decay of 2e-07").
* **Learning-rate schedule**: piecewise constant over *fractional* epochs (the refined network's drops
  at 2.5 and 9.5), stepped after every optimiser step, so a milestone at epoch 2.5 takes effect at
  exactly half of the third epoch (:func:`piecewise_constant`).
* **Weight moving average 0.9** ("moving average decay of 0.9", TensorFlow's ExponentialMovingAverage of
  the trainable variables): an EMA copy of the network (``torch.optim.swa_utils.AveragedModel``, buffers
  averaged too) updated after every optimiser step; validation, mining and detection use it.
* **BN moving decay 0.99** lives in the network (momentum 0.01).

Logged (:class:`~histo_lightning.models.base.SupervisedModule`): ``train/loss``,
``val/{loss,ap,auroc,precision,recall,f1}`` (precision, recall and F1 of the mitosis class at p > 0.5,
torchmetrics) and ``val/<monitor>_best``; the stage runner prefixes them with the stage's name in the
loggers and results (``screening/val/ap``).
``predict_step`` returns ``{"index", "label", "prob"}`` (p(mitosis)) for hard-example mining.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from histo_lightning.metrics.classification import BinaryClassificationMetrics
from histo_lightning.models.base import Batch, SupervisedModule


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


class ChsnetPatchClassifier(SupervisedModule):
    """Trains a CHS-Net network on ``{"image" (N,3,128,128) uint8, "label", "index"}`` batches.

    Args:
        net: the network (:class:`~histo_lightning.nets.chsnet.CHSNet`), logits ``(N, 2)``.
        loss: the criterion (semi-focal, focal or cross-entropy; ``model.<stage>.loss: ${loss}``).
        optimizer: partial taking ``params`` (the learning rate it carries is ignored when a schedule is set).
        schedule: ``{"milestones": [...epochs], "values": [...learning rates]}``, or None for a constant rate.
        ema_decay: weight moving average decay (§4.2.2: 0.9); None trains and evaluates the raw weights.
        max_epochs: the stage's epochs (the pipeline caps them at ``trainer.max_epochs``).
        monitor: validation metric for checkpoint selection, without the stage prefix (``val/ap``).
        monitor_mode: ``max`` or ``min``.
        metrics: a factory of the validation metric suite (default:
            :class:`~histo_lightning.metrics.classification.BinaryClassificationMetrics` at p > 0.5).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Sequence[float]] | None = None,
        ema_decay: float | None = 0.9,
        max_epochs: int = 10,
        monitor: str = "val/ap",
        monitor_mode: str = "max",
        metrics: Callable[[], BinaryClassificationMetrics] | None = None,
    ) -> None:
        if schedule is not None:
            check_schedule(schedule["milestones"], schedule["values"])
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        super().__init__(
            net,
            loss,
            optimizer,
            metrics or BinaryClassificationMetrics,
            monitor=monitor,
            monitor_mode=monitor_mode,
        )
        self.schedule = self.hparams.schedule
        self.ema = (
            AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay is not None
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)  # not optimised (and not "unused parameters" under DDP)

    def inference_net(self) -> nn.Module:
        """The network used for evaluation, mining and detection: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def forward(self, images: Tensor) -> Tensor:
        """Logits of the evaluation network (EMA weights)."""
        return self.inference_net()(images)

    def probabilities(self, images: Tensor) -> Tensor:
        """p(mitosis) of ``(N, 3, 128, 128)`` patches from the evaluation network."""
        return self(images).float().softmax(dim=-1)[:, 1]

    def step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        """Training: the raw network; evaluation: the EMA network (§4.2.2), logits in float32."""
        logits = self.net(batch["image"]) if stage == "train" else self(batch["image"]).float()
        return self.loss(logits, batch["label"]), logits

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

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
    def optimized_parameters(self) -> Any:
        return self.net.parameters()  # not the EMA copy

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The piecewise-constant schedule over fractional epochs, stepped after every optimiser step."""
        if self.schedule is None:
            return None
        milestones, values = list(self.schedule["milestones"]), list(self.schedule["values"])
        for group in optimizer.param_groups:
            group["lr"] = values[0]
            group["initial_lr"] = values[0]
        steps_per_epoch = max(
            1.0, self.trainer.estimated_stepping_batches / max(1, self.trainer.max_epochs)
        )

        def factor(step: int) -> float:
            return piecewise_constant(step / steps_per_epoch, milestones, values) / values[0]

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"scheduler": scheduler, "interval": "step"}


__all__ = ["ChsnetPatchClassifier", "check_schedule", "piecewise_constant"]
