"""The classification metric suites the supervised LightningModules log (one place for all of them).

Built from config (or by default) and injected into the LightningModule (``model.metrics``), one instance
per stage (:class:`~histo_lightning.models.base.SupervisedModule`). Every suite has ``update(probs, target,
patient=None, group=None)``, ``compute() -> {name: value}`` and ``reset()``; every member is a torchmetrics
``Metric`` whose states are synchronised across processes before compute, so the numbers are the same on
1 GPU and under DDP (with an unrepeated sampler for val/test, see :mod:`histo_lightning.data.base`).

* :class:`ClassificationMetrics`: accuracy, per-class F1, AUROC, patient recognition rate (image
  classification, SMSE);
* :class:`BinaryClassificationMetrics`: average precision, AUROC and precision, recall, F1 of the positive
  class at a threshold (CHS-Net's patch classifiers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
)

from histo_lightning.metrics.patient import PatientRecognitionRate


class ClassificationMetrics(nn.Module):
    """Accuracy, per-class F1, AUROC, patient recognition rate and RR per group.

    Args:
        num_classes: number of classes C.
        class_names: names used in the logged keys, e.g. ``f1_benign``.
        groups: optional mapping from a group id carried by the batch (e.g. magnification 40) to the name
            used in the key (``rr_40x``); RR is then also reported per group (SMSE Table VII).
        patient_level: compute the patient recognition rate ``rr`` (needs patient ids in the batch).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        groups: Mapping[int, str] | None = None,
        patient_level: bool = True,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names for num_classes={num_classes}"
            )
        self.class_names = [str(c) for c in class_names]
        self.groups = {int(k): str(v) for k, v in (groups or {}).items()}
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.f1 = MulticlassF1Score(num_classes, average="none")
        self.auroc = MulticlassAUROC(num_classes, average="macro")
        self.rr = PatientRecognitionRate() if patient_level else None

    def update(
        self,
        probs: Tensor,
        target: Tensor,
        patient: Tensor | None = None,
        group: Tensor | None = None,
    ) -> None:
        """Update with class probabilities ``(N, C)``, targets ``(N,)`` and optional patient/group ids."""
        self.accuracy.update(probs, target)
        self.f1.update(probs, target)
        self.auroc.update(probs, target)
        if self.rr is not None:
            if patient is None:
                raise ValueError(
                    "patient ids are needed for the patient recognition rate (patient_level=True)"
                )
            self.rr.update(probs, target, patient, group)

    def compute(self) -> dict[str, Tensor]:
        """Scalar values keyed by metric name (without the stage prefix)."""
        values: dict[str, Tensor] = {"acc": self.accuracy.compute(), "auroc": self.auroc.compute()}
        for name, f1 in zip(self.class_names, self.f1.compute()):
            values[f"f1_{name}"] = f1
        if self.rr is not None:
            values["rr"] = self.rr.compute()
            if self.groups:
                by_group = self.rr.compute_by_group()
                for group_id, group_name in self.groups.items():
                    if group_id in by_group:
                        values[f"rr_{group_name}"] = by_group[group_id]
        return values

    def reset(self) -> None:
        for metric in (self.accuracy, self.f1, self.auroc, self.rr):
            if metric is not None:
                metric.reset()


class BinaryClassificationMetrics(nn.Module):
    """AP, AUROC, and precision, recall and F1 of the positive class at ``p > threshold``.

    ``update`` takes class probabilities ``(N, 2)`` (column 1: the positive class) or positive-class
    probabilities ``(N,)``; patient and group ids are ignored. Precision, recall and F1 are 0 where
    undefined (no predicted or no true positive), as in torchmetrics.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.ap = BinaryAveragePrecision()
        self.auroc = BinaryAUROC()
        self.precision = BinaryPrecision(threshold=threshold)
        self.recall = BinaryRecall(threshold=threshold)
        self.f1 = BinaryF1Score(threshold=threshold)

    def _members(self) -> dict[str, nn.Module]:
        return {
            "ap": self.ap,
            "auroc": self.auroc,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }

    def update(self, probs: Tensor, target: Tensor, *ids: Tensor | None) -> None:
        """Update with probabilities and targets; patient/group ids (``ids``) are not used."""
        positive = probs[:, 1] if probs.ndim == 2 else probs
        for metric in self._members().values():
            metric.update(positive, target)

    def compute(self) -> dict[str, Tensor]:
        return {name: metric.compute() for name, metric in self._members().items()}

    def reset(self) -> None:
        for metric in self._members().values():
            metric.reset()


__all__ = ["BinaryClassificationMetrics", "ClassificationMetrics"]
