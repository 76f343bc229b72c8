"""A LightningModule for image classification with injected net, loss, optimiser and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from histo_lightning.metrics.classification import ClassificationMetrics
from histo_lightning.models.base import Batch, SupervisedModule


class ImageClassifier(SupervisedModule):
    """Trains ``net`` with ``loss`` on batches ``{"image", "label", "patient", "group", "index"}``.

    Everything that varies between experiments comes from config (Hydra ``instantiate``):

    Args:
        net: an ``nn.Module`` returning logits ``(N, C)``.
        loss, optimizer, scheduler, monitor, monitor_mode: as
            :class:`~histo_lightning.models.base.SupervisedModule`.
        metrics: a partial building a :class:`ClassificationMetrics`; one copy each for val and test.
        channels_last: keep the net's weights and its input images in channels-last memory format (faster
            convolutions on CPUs with oneDNN and on tensor-core GPUs; the results are the same).

    Logged: ``{train,val,test}/loss``, ``train/acc``, ``val/<monitor>_best`` and every value of the metric
    suite under ``val/`` and ``test/``. Per-sample test probabilities are returned from ``test_step`` for
    :class:`~histo_lightning.callbacks.TestReport` (predictions, per-patient scores, ROC, confusion matrix).

    A loss with ``needs_class_counts`` (e.g. the reinforced focal loss with inverse-frequency class weights)
    receives the training set's class counts through ``set_class_counts`` in :meth:`setup`.
    """

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
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        super().__init__(net, loss, optimizer, metrics, scheduler, monitor, monitor_mode)
        self.channels_last = channels_last
        self.train_acc = MulticlassAccuracy(len(self.val_metrics.class_names), average="micro")

    def prepare_images(self, images: Tensor) -> Tensor:
        """Images in the memory format the net runs in."""
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.prepare_images(images))

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """``{"index", "probs"}`` and, for a net with ``embed()`` (PNN1/PNN2, TimmClassifier), ``"embedding"``:
        what predict stages store in a feature cache (e.g. SMSE Fig. 10's embeddings)."""
        images = self.prepare_images(batch["image"])
        out = {"index": batch["index"]}
        if callable(getattr(self.net, "embed", None)):
            embedding = self.net.embed(images)
            out["embedding"] = embedding.float()
            logits = self.net.classifier(embedding)
        else:
            logits = self.net(images)
        out["probs"] = logits.float().softmax(dim=-1)
        return out

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


__all__ = ["Batch", "ImageClassifier"]
