"""Stop a fit at the first non-finite training loss, naming the stage, epoch and batch.

A NaN or infinite loss poisons the weights at the next optimiser step, and every later stage (CHS-Net's
hard-example mining and detection, a test) would then run on a NaN network and report nonsense.
:class:`StopOnNonFiniteLoss` checks the loss of every training batch and, after ``patience`` consecutive
non-finite ones, raises :class:`~histo_lightning.errors.NonFiniteLossError` (a user-facing
:class:`~histo_lightning.errors.HistoError`): the run stops with one line, nothing after the fit runs,
and in a sweep only this job fails (it writes ``failed.json``). Checkpoints on disk are those saved
before the loss went bad (a checkpoint is written at the end of an epoch or validation, never during
the failing batch).

``patience`` > 1 tolerates a few isolated overflows (e.g. an fp16 loss scaler skipping steps); with
fp32 training one NaN loss already means NaN gradients, so the default is 1. Under DDP the decision is
taken jointly (any rank's bad loss stops every rank together, so none waits forever for the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from histo_lightning.errors import ConfigError, NonFiniteLossError


class StopOnNonFiniteLoss(pl.Callback):
    """Raise :class:`NonFiniteLossError` after ``patience`` consecutive non-finite training losses.

    Args:
        patience: how many non-finite losses in a row stop the fit (>= 1).
        config_key: the key that sets ``patience``, for the message.
    """

    def __init__(self, patience: int = 1, config_key: str = "callbacks.nonfinite_loss") -> None:
        if int(patience) < 1:
            raise ConfigError(f"{config_key}.patience={patience}: expected an integer >= 1")
        self.patience = int(patience)
        self.config_key = config_key
        self.streak = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.streak = 0

    @staticmethod
    def _loss(outputs: Any) -> torch.Tensor | None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        return loss if isinstance(loss, torch.Tensor) else None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = self._loss(outputs)
        bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        self.streak = self.streak + 1 if bad else 0
        if self.streak < self.patience:
            return
        value = "non-finite" if loss is None else str(float(loss.detach().float().flatten()[0]))
        stage = getattr(pl_module, "stage", None) or "fit"
        raise NonFiniteLossError(
            f"training loss is {value} in stage {stage}, epoch {trainer.current_epoch}, batch "
            f"{batch_idx} (global step {trainer.global_step}; epochs and batches counted from 0), "
            f"{self.streak} in a row ({self.config_key}.patience={self.patience}); stopped before "
            "anything runs on these weights. Lower the learning rate or check the inputs and the loss"
        )


__all__ = ["StopOnNonFiniteLoss"]
