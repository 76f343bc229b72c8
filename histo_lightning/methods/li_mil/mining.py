"""Attention-based hard-negative instance mining (Li et al. §3.0.2, Eq. 3).

After training, the false-positive bags are the negative training bags that the model predicts positive.
In each such bag ``l`` with attention weights ``w_l``, the hard negative instances are

    H_l = { i : w_li ≥ mean(w_l) + k · std(w_l) }                               (Eq. 3, k = 1)

and all of them, from all false-positive bags, form the hard-negative pool ``{h_1, …, h_M}``.
``std`` is the population standard deviation of the bag's weights (``ddof=0``; the paper does not say,
and a bag of one instance then has std 0). A bag whose weights are all equal has std 0, so all of its
instances are hard (the comparison allows for rounding: ``w ≥ mean + k·std − 1e-9·mean``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def false_positive_bags(
    labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5
) -> np.ndarray:
    """Indices of the negative bags (label 0) predicted positive (``prob ≥ threshold``)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape:
        raise ValueError(f"{labels.shape} labels for {probs.shape} probabilities")
    return np.flatnonzero((labels == 0) & (probs >= threshold))


def hard_instances(weights: Sequence[float], k: float = 1.0) -> np.ndarray:
    """Positions ``i`` in one bag with ``w_i ≥ mean(w) + k · std(w)`` (Eq. 3)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("weights of one non-empty bag expected")
    mean = w.mean()
    return np.flatnonzero(w >= mean + k * w.std() - 1e-9 * abs(mean))


@dataclass
class MiningResult:
    """What mining found.

    Attributes:
        bags: indices of the false-positive bags.
        instances: global instance indices of the hard negatives (in bag order).
        source_bag: for each hard negative, the bag it came from.
        weights: its attention weight.
    """

    bags: np.ndarray
    instances: np.ndarray
    source_bag: np.ndarray
    weights: np.ndarray

    def describe(self) -> dict[str, int]:
        return {"false_positive_bags": len(self.bags), "hard_negatives": len(self.instances)}


def mine_hard_negatives(
    labels: Sequence[int],
    probs: Sequence[float],
    attention: Sequence[Sequence[float]],
    members: Sequence[Sequence[int]],
    k: float = 1.0,
    threshold: float = 0.5,
) -> MiningResult:
    """Eq. 3 over all training bags.

    Args:
        labels, probs: bag labels and predicted probabilities.
        attention: per bag, the attention weight of each of its instances.
        members: per bag, the global instance indices (same order as ``attention``).
        k: the number of standard deviations above the mean (paper: 1).
        threshold: the probability from which a bag is predicted positive.
    """
    if not (len(labels) == len(probs) == len(attention) == len(members)):
        raise ValueError("labels, probs, attention and members need one entry per bag")
    bags = false_positive_bags(labels, probs, threshold)
    instances, source, weights = [], [], []
    for b in bags:
        w = np.asarray(attention[b], dtype=np.float64)
        m = np.asarray(members[b], dtype=np.int64)
        if len(w) != len(m):
            raise ValueError(f"bag {b}: {len(w)} weights for {len(m)} instances")
        hard = hard_instances(w, k)
        instances.append(m[hard])
        source.append(np.full(len(hard), b, dtype=np.int64))
        weights.append(w[hard])
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return MiningResult(
        bags=bags,
        instances=cat(instances, np.int64),
        source_bag=cat(source, np.int64),
        weights=cat(weights, np.float64),
    )


__all__ = ["MiningResult", "false_positive_bags", "hard_instances", "mine_hard_negatives"]
