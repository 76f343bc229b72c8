"""Bag-level and instance-level metrics of multiple-instance classifiers.

* :class:`BagMetrics`: the columns of Li et al.'s Tables 1 and 2: accuracy, precision, recall, F-score,
  AUC and false positive rate ``FP / (FP + TN)``, of bag probabilities against bag labels (threshold 0.5),
  from torchmetrics (states synchronised across processes, so DDP gives the same numbers).
* :class:`InstanceAttentionAUROC`: how well the attention finds the key instances (epithelial nuclei,
  target digits, tumour patches), where instance labels exist. Attention weights are normalised within
  each bag (they sum to 1), so a weight means different things in a bag of 10 and a bag of 300:
  ``inst_auroc`` is the mean over bags of each bag's AUROC of its weights against its instance labels
  (bags holding both key and ordinary instances, i.e. positive bags that are not all key);
  ``inst_auroc_pooled`` pools all instances of all bags after scaling each bag's weights by its size
  (``w · n``: 1 = the uniform weight), one AUROC.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinaryStatScores,
)
from torchmetrics.functional.classification import binary_auroc

BAG_METRICS = ("acc", "precision", "recall", "f1", "auroc", "fpr")


class BagMetrics(nn.Module):
    """Accuracy, precision, recall, F1, AUROC and FPR of bag probabilities (Li Tables 1/2 columns)."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.acc = BinaryAccuracy(threshold=threshold)
        self.precision = BinaryPrecision(threshold=threshold)
        self.recall = BinaryRecall(threshold=threshold)
        self.f1 = BinaryF1Score(threshold=threshold)
        self.auroc = BinaryAUROC()
        self.stats = BinaryStatScores(threshold=threshold)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Bag probabilities ``(B,)`` and labels ``(B,)``."""
        target = target.long()
        for metric in (self.acc, self.precision, self.recall, self.f1, self.auroc, self.stats):
            metric.update(probs, target)

    def compute(self) -> dict[str, Tensor]:
        _, fp, tn, _, _ = self.stats.compute()
        negatives = fp + tn
        fpr = fp.float() / negatives if negatives > 0 else torch.tensor(float("nan"))
        return {
            "acc": self.acc.compute(),
            "precision": self.precision.compute(),
            "recall": self.recall.compute(),
            "f1": self.f1.compute(),
            "auroc": self.auroc.compute(),
            "fpr": fpr,
        }

    def reset(self) -> None:
        for metric in (self.acc, self.precision, self.recall, self.f1, self.auroc, self.stats):
            metric.reset()


class InstanceAttentionAUROC(Metric):
    """Attention against instance labels: per-bag mean AUROC and pooled AUROC of ``w · n`` (see above).

    ``update(attention (B, n), instance_labels (B, n), mask (B, n))``; labels -1 (unknown) and padding
    are ignored. ``compute()`` gives ``{"inst_auroc", "inst_auroc_pooled"}`` (NaN when undefined).
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("bag_aurocs", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(
        self, attention: Tensor, instance_labels: Tensor, mask: Tensor | None = None
    ) -> None:
        if mask is None:
            mask = torch.ones_like(instance_labels, dtype=torch.bool)
        for w, y, m in zip(attention.detach(), instance_labels, mask):
            n = m.sum()
            known = m & (y >= 0)
            if not known.any():
                continue
            scores = w[known].float() * n
            targets = y[known].long()
            self.scores.append(scores)
            self.targets.append(targets)
            if 0 < int(targets.sum()) < len(targets):
                self.bag_aurocs.append(binary_auroc(scores, targets).reshape(1))

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"))
        bag = _cat(self.bag_aurocs)
        scores, targets = _cat(self.scores), _cat(self.targets)
        both = targets.numel() and 0 < int(targets.sum()) < targets.numel()
        return {
            "inst_auroc": bag.mean() if bag.numel() else nan,
            "inst_auroc_pooled": binary_auroc(scores, targets.long()) if both else nan,
        }


def _cat(values: list[Tensor] | Tensor) -> Tensor:
    if isinstance(values, Tensor):
        return values
    return torch.cat(values) if values else torch.zeros(0)


__all__ = ["BAG_METRICS", "BagMetrics", "InstanceAttentionAUROC"]
