"""Point detection metrics: matching detections to ground-truth points, and F1 pooled over images.

TUPAC16 / AMIDA13 count a detection as a true positive when it lies within 30 px (7.5 µm at 0.25 µm/px)
of a ground-truth mitosis; F1 is computed from TP/FP/FN summed over all HPFs (pooled), not averaged per
image (CHS-Net Eqs. 1–3 on those sums). Two conventions decide what several detections near one mitosis
count as:

* ``one_to_one`` (default; MIDOG): a maximum one-to-one matching within the radius. Every ground truth
  matches at most one detection and vice versa; extra detections are false positives. The matching is a
  true maximum (Hungarian algorithm on distances, with a prohibitive cost beyond the radius), not a greedy
  nearest-first pass, which can match fewer pairs than exist.
* ``amida13`` (the AMIDA13 / TUPAC16 rule; CHS-Net's default, ``method.detection.match_rule``): a
  detection within the radius of a ground truth is a true detection, and several detections inside one
  ground truth's circle count as one TP, never as FPs. FP are the detections outside every circle; a
  ground truth is found when some detection counts for it, FN are the others. A detection counts for
  the nearest ground truth whose circle holds it (Veta et al. 2015, the AMIDA13 paper: "true positives
  if their distance to the closest ground truth location" is within 7.5 µm), so one detection between
  two close mitoses finds one of them, not both; TP + FN is always the number of ground truths.

"Within" includes the boundary (distance <= radius); Veta et al. write "less than 7.5 µm", which differs
only for a distance of exactly 30.000 px.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from torch import Tensor
from torchmetrics import Metric

MATCH_RULES = ("one_to_one", "amida13")


def match_assignments(
    pred_points: np.ndarray | Tensor,
    gt_points: np.ndarray | Tensor,
    radius: float = 30.0,
    rule: str = "one_to_one",
) -> tuple[np.ndarray, np.ndarray]:
    """Which detections count as true positives ``(N,)`` and which ground truths are found ``(M,)``.

    With ``one_to_one`` a true detection is one matched to a ground truth; with ``amida13`` one inside some
    ground truth's circle (never a false positive), and it finds the nearest such ground truth.
    """
    if rule not in MATCH_RULES:
        raise ValueError(f"rule={rule!r}: expected one of {MATCH_RULES}")
    pred = np.asarray(pred_points, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt_points, dtype=np.float64).reshape(-1, 2)
    pred_ok, gt_found = np.zeros(len(pred), bool), np.zeros(len(gt), bool)
    if len(pred) == 0 or len(gt) == 0:
        return pred_ok, gt_found
    distance = cdist(pred, gt)
    within = distance <= radius
    if rule == "amida13":
        pred_ok = within.any(axis=1)
        nearest = np.argmin(np.where(within, distance, np.inf), axis=1)
        gt_found[nearest[pred_ok]] = True
        return pred_ok, gt_found
    # Cost <= 1 inside the radius, more than all inside costs together outside it: the optimum matches
    # as many pairs within the radius as possible, and among those the closest.
    outside = min(len(pred), len(gt)) + 1.0
    cost = np.where(within, distance / max(radius, 1e-12), outside)
    rows, cols = linear_sum_assignment(cost)
    matched = within[rows, cols]
    pred_ok[rows[matched]] = True
    gt_found[cols[matched]] = True
    return pred_ok, gt_found


def match_detections(
    pred_points: np.ndarray | Tensor,
    gt_points: np.ndarray | Tensor,
    radius: float = 30.0,
    rule: str = "one_to_one",
) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of detections ``(N, 2)`` against ground truth ``(M, 2)`` (same units, e.g. row, col).

    A pair matches when its Euclidean distance is at most ``radius``; ``rule`` is ``one_to_one`` (maximum
    one-to-one matching, MIDOG) or ``amida13`` (several detections in one circle count once, not as FPs).
    """
    pred_ok, gt_found = match_assignments(pred_points, gt_points, radius, rule)
    tp = int(gt_found.sum())
    return tp, int((~pred_ok).sum()), len(gt_found) - tp


def detection_scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision (Eq. 1), recall (Eq. 2) and F1 (Eq. 3) from counts; 0 where a ratio is undefined."""
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


class DetectionF1(Metric):
    """TP/FP/FN summed over images (and processes), with pooled precision, recall and F1.

    ``compute`` returns ``precision, recall, f1, tp, fp, fn, images`` (scalars) and, with ``n_thresholds``
    > 0, ``curve``: the ``(T, 3)`` TP/FP/FN counts at every threshold of a grid (added per image with
    :meth:`update_curve`), for a precision–recall curve over the final detection threshold.
    """

    full_state_update = False

    def __init__(self, n_thresholds: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn", "images"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.n_thresholds = n_thresholds
        if n_thresholds:
            self.add_state(
                "curve",
                default=torch.zeros(n_thresholds, 3, dtype=torch.long),
                dist_reduce_fx="sum",
            )

    def update(self, tp: int, fp: int, fn: int) -> None:
        """Add the counts of one image."""
        self.tp += int(tp)
        self.fp += int(fp)
        self.fn += int(fn)
        self.images += 1

    def update_curve(self, counts: Tensor) -> None:
        """Add ``(T, 3)`` TP/FP/FN counts at the grid thresholds."""
        self.curve += counts.to(self.curve.device, torch.long)

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn = (int(getattr(self, n)) for n in ("tp", "fp", "fn"))
        scores = {k: torch.tensor(v) for k, v in detection_scores(tp, fp, fn).items()}
        counts = {k: torch.tensor(float(v)) for k, v in (("tp", tp), ("fp", fp), ("fn", fn))}
        out = {**scores, **counts, "images": self.images.clone()}
        if self.n_thresholds:
            out["curve"] = self.curve.clone()
        return out


__all__ = [
    "MATCH_RULES",
    "DetectionF1",
    "detection_scores",
    "match_assignments",
    "match_detections",
]
