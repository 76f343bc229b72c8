"""Attention MIL as a LightningModule: bag classification with per-instance attention (Ilse et al. 2018,
Li et al. §3.0.1), and the frozen instance encoder that feeds FMB's K-means and feature bags.

:class:`MILModule` derives from the supervised base (:class:`~histo_lightning.models.base.
SupervisedModule`, docs/CONTRACTS.md C2): the network (a :class:`~histo_lightning.nets.mil.MILClassifier`
from ``model.net``), the loss (``loss=bag_bce``: the
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

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

from histo_lightning.metrics.mil import BagMetrics, InstanceAttentionAUROC
from histo_lightning.models.base import SupervisedModule

Batch = dict[str, Tensor]


class MILModule(SupervisedModule):
    """Trains a MIL bag classifier on padded bag batches ``{instances, mask, label, instance_labels}``.

    Args:
        net: a :class:`~histo_lightning.nets.mil.MILClassifier` (``forward(instances, mask)`` → dict
            with ``prob`` and ``attention``).
        loss: ``loss(probs (B,), labels (B,))`` (``model.loss: ${loss}``).
        optimizer: a partial taking ``params``.
        metrics: a factory of the bag metric suite (one for validation, one for test; default
            :class:`~histo_lightning.metrics.mil.BagMetrics`).
        scheduler: an optional partial taking ``optimizer`` (stepped each epoch).
        monitor, monitor_mode: the validation metric checkpoints are chosen on (``val/loss``, min).
    """

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
        super().__init__(
            net, loss, optimizer, metrics or BagMetrics, scheduler, monitor, monitor_mode
        )
        self.val_instances, self.test_instances = InstanceAttentionAUROC(), InstanceAttentionAUROC()
        self.train_acc = BinaryAccuracy()

    # ---- the network -------------------------------------------------------------------------------
    def forward(self, instances: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        return self.net(instances, mask)

    def outputs(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, network outputs)`` of a padded batch of bags."""
        out = self(batch["instances"], batch.get("mask"))
        return self.loss(out["prob"], batch["label"]), out

    def step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        """``(loss, bag probabilities)``: the base's training loop counts bags and their accuracy."""
        loss, out = self.outputs(batch)
        return loss, out["prob"]

    # ---- evaluation --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        self.val_instances.reset()  # the sanity-check validation must not count

    def evaluate(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        """Update the ``stage`` loss, bag metrics and attention AUROC; the network's outputs."""
        loss, out = self.outputs(batch)
        n = len(batch["label"])
        (self.val_loss if stage == "val" else self.test_loss).update(loss, weight=n)
        (self.val_metrics if stage == "val" else self.test_metrics).update(
            out["prob"].float(), batch["label"]
        )
        instances = self.val_instances if stage == "val" else self.test_instances
        instances.update(out["attention"], batch["instance_labels"], batch["mask"])
        return out

    def _epoch_values(self, stage: str) -> dict[str, Tensor]:
        """The base's values plus the attention AUROC, the undefined ones (NaN: the instance AUROC
        without instance labels, FPR without negative bags) left out."""
        values = super()._epoch_values(stage)
        instances = self.val_instances if stage == "val" else self.test_instances
        values.update({f"{stage}/{k}": v for k, v in instances.compute().items()})
        instances.reset()
        return {k: v for k, v in values.items() if not torch.isnan(v).any()}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        out = self.evaluate(batch, "test")
        return {
            "index": batch["index"],
            "prob": out["prob"].detach(),
            "attention": out["attention"].detach(),
            "mask": batch["mask"],
        }

    def instance_embeddings(self, images: Tensor) -> Tensor:
        """Per-instance vectors of the trained MIL network (``method.hnm.cluster_features=mil``): the
        instance encoder, then the attention network without its last layer
        (:meth:`~histo_lightning.nets.mil.WeightedPooling.instance_embeddings`)."""
        net = self.net
        h = net.encoder(images)
        pooling = getattr(net.pooling, "instance_embeddings", None)
        return pooling(h) if callable(pooling) else h

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        if "instances" not in batch:  # single instances (subset `instances`): their embeddings
            return {
                "index": batch["index"],
                "embeddings": self.instance_embeddings(batch["image"]).float(),
            }
        out = self(batch["instances"], batch.get("mask"))
        prob, attention = out["prob"].float(), out["attention"].float()
        return {
            "index": batch["index"],
            "prob": prob,
            "attention": attention,
            "scores": torch.cat([prob[:, None], attention], dim=1),
        }


class EncoderFeatures(pl.LightningModule):
    """A frozen encoder (the ``encoder`` group) as a predict-stage module: ``{"index", "features"}`` of
    ``{"index", "image"}`` batches, e.g. every instance of a MIL dataset into the shared feature cache.

    Li et al. §3.0.3: "the hard negative instances first go through a pre-trained CNN model to convert to
    feature vectors". ``input_size`` resizes the instances first (bilinear; None: as they are, a 27 px
    patch gives a 1×1 map at a CNN's last stage). :meth:`fingerprint` keys the cache.

    ``encoder`` is a module, or (with ``_recursive_: false`` in the config) an encoder config built here,
    with ``weights`` in place of its own when given: the MIL pipelines' bag features use the dataset
    protocol's weights (``method.protocol.frozen_encoder_weights``) whatever ``encoder.weights`` (FMB's
    pre-trained CNN) says, so a run that clusters with ``method.hnm.cluster_features=mil`` never loads those.
    """

    def __init__(
        self, encoder: Any, input_size: int | None = None, weights: str | None = None
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            from histo_lightning.utils.instantiate import build

            encoder = build(encoder, **({"weights": weights} if weights is not None else {}))
        self.encoder = encoder
        self.input_size = int(input_size) if input_size else None

    def fingerprint(self) -> dict[str, Any]:
        own = self.encoder.fingerprint() if hasattr(self.encoder, "fingerprint") else {}
        return {"encoder": own, "input_size": self.input_size}

    def forward(self, images: Tensor) -> Tensor:
        if (
            images.ndim == 4 and images.shape[1] == 1
        ):  # one-channel instances (digits) into an RGB CNN
            images = images.expand(-1, 3, -1, -1)
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


__all__ = ["EncoderFeatures", "MILModule"]
