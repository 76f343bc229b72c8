"""A LightningModule for image classification with injected net, loss, optimiser and metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MinMetric
from torchmetrics.classification import MulticlassAccuracy

from histo_lightning.metrics.classification import ClassificationMetrics

Batch = dict[str, Tensor]

# Epoch-level values logged here come from torchmetrics objects that already synchronised their states
# across processes, so Lightning's advice to add sync_dist=True (an extra all-reduce) does not apply.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test|train)/")


class ImageClassifier(pl.LightningModule):
    """Trains ``net`` with ``loss`` on batches ``{"image", "label", "patient", "group", "index"}``.

    Everything that varies between experiments comes from config (Hydra ``instantiate``):

    Args:
        net: an ``nn.Module`` returning logits ``(N, C)``.
        loss: a criterion ``loss(logits, target)`` (``model.loss: ${loss}`` in the configs).
        optimizer: a partial taking ``params`` (``_partial_: true``).
        scheduler: an optional partial taking ``optimizer``; stepped each epoch, with ``val`` monitoring for
            ``ReduceLROnPlateau``.
        metrics: a partial building a :class:`ClassificationMetrics`; one copy each for val and test.
        monitor: the validation metric checkpoints are selected on; ``<monitor>_best`` is logged for sweepers.
        monitor_mode: ``max`` or ``min``.
        channels_last: keep the net's weights and its input images in channels-last memory format (faster
            convolutions on CPUs with oneDNN and on tensor-core GPUs; the results are the same).

    Logged: ``{train,val,test}/loss``, ``train/acc`` and every value of the metric suite under
    ``val/`` and ``test/``. Per-sample test probabilities are returned from :meth:`test_step` for
    :class:`~histo_lightning.callbacks.TestReport` (predictions, per-patient scores, ROC, confusion matrix).

    A loss with ``needs_class_counts`` (e.g. the reinforced focal loss with inverse-frequency class weights)
    receives the training set's class counts through ``set_class_counts`` in :meth:`setup`.
    """

    # injected modules: kept out of the saved hyper-parameters (they are in the state dict)
    injected_modules: tuple[str, ...] = ("net", "loss", "metrics")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        metrics: Callable[[], ClassificationMetrics],
        scheduler: Callable[..., Any] | None = None,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # partials and modules stay out of the checkpoint (it must load with weights_only=True)
        self.save_hyperparameters(
            logger=False, ignore=[*self.injected_modules, "optimizer", "scheduler"]
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.loss = loss
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_metrics = metrics()
        self.test_metrics = metrics()
        self.train_acc = MulticlassAccuracy(len(self.val_metrics.class_names), average="micro")
        if monitor_mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        self.val_best = MaxMetric() if monitor_mode == "max" else MinMetric()

    def prepare_images(self, images: Tensor) -> Tensor:
        """Images in the memory format the net runs in."""
        if self.hparams.get("channels_last") and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.prepare_images(images))

    def setup(self, stage: str) -> None:
        if not getattr(self.loss, "needs_class_counts", False):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "datasets", {}).get("train")
        if train is None:
            raise RuntimeError(
                "the loss needs the training class counts but no training set is set up"
            )
        counts = np.bincount(train.labels, minlength=len(self.val_metrics.class_names))
        self.loss.set_class_counts(counts.tolist())

    def _shared_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = self(batch["image"])
        return self.loss(logits, batch["label"]), logits

    def on_train_start(self) -> None:
        # the sanity-check validation must not count as the best epoch
        self.val_metrics.reset()
        self.val_loss.reset()
        self.val_best.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, logits = self._shared_step(batch)
        self.train_loss.update(loss.detach(), weight=len(logits))
        self.train_acc.update(logits.detach(), batch["label"])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def _eval_step(
        self, batch: Batch, metrics: ClassificationMetrics, loss_metric: MeanMetric
    ) -> Tensor:
        loss, logits = self._shared_step(batch)
        probs = logits.float().softmax(dim=-1)
        loss_metric.update(loss, weight=len(logits))
        metrics.update(probs, batch["label"], batch.get("patient"), batch.get("group"))
        return probs

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        values["val/loss"] = self.val_loss.compute()
        self.log_dict(values, prog_bar=False)
        monitor = self.hparams.monitor
        if monitor in values and not self.trainer.sanity_checking:
            self.val_best.update(values[monitor])
            self.log(f"{monitor}_best", self.val_best.compute(), prog_bar=True)
        self.val_metrics.reset()
        self.val_loss.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        probs = self._eval_step(batch, self.test_metrics, self.test_loss)
        return {"probs": probs.detach(), "index": batch["index"]}

    def on_test_epoch_end(self) -> None:
        values = {f"test/{k}": v for k, v in self.test_metrics.compute().items()}
        values["test/loss"] = self.test_loss.compute()
        self.log_dict(values)
        self.test_metrics.reset()
        self.test_loss.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "epoch",
                "monitor": self.hparams.monitor,
            },
        }
