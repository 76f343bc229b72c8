"""BACH metrics (Rakhlin et al. §3): 4-class accuracy, and carcinoma vs non-carcinoma from the 4-class output.

Classes in label order 0 Normal, 1 Benign, 2 InSitu, 3 Invasive; carcinoma = InSitu or Invasive.

The carcinoma score. The paper does not say how the 2-class numbers come from the 4-class model. The
authors' ``crossvalidate_blending.py`` takes the fused 4-class probabilities (averaged over models, seeds
and augmentations), groups them as (Normal, Benign) and (InSitu, Invasive), takes the *maximum* within each
group and renormalises: ``score = max(p_is, p_iv) / (max(p_n, p_b) + max(p_is, p_iv))``
(``rule="max"``, the default; summing the groups, ``p_is + p_iv``, is left commented out there and is
``rule="sum"`` here). Their 2-class prediction is the 4-class argmax mapped to its group, which for the
max rule is exactly ``score > 0.5`` (both say the largest class is a carcinoma); the ROC curve and AUC
(Fig. 4a) use the score, and the setpoints 0.33 (high sensitivity) and 0.5 are thresholds on it: an image
is called carcinoma when ``score >= setpoint``. The paper's sensitivity/specificity at 0.5 (93.0/94.5)
average to its 2-class accuracy (93.8), as this reading implies.

Metrics come from scikit-learn; the paper pools the ten folds' predictions for the ROC, the AUC and the
setpoints (one curve over 400 images) and reports accuracies as mean ± std over folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from histo_lightning.errors import ConfigError

CARCINOMA_RULES = ("max", "sum")
SETPOINTS = (0.33, 0.5)
CARCINOMA_CLASSES = (2, 3)


def carcinoma_score(probs: np.ndarray, rule: str = "max") -> np.ndarray:
    """``(n,)`` carcinoma score of ``(n, 4)`` class probabilities (see the module docstring)."""
    if rule not in CARCINOMA_RULES:
        raise ConfigError(f"carcinoma rule {rule!r}: expected one of {', '.join(CARCINOMA_RULES)}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 4:
        raise ValueError(f"expected (n, 4) probabilities, got {probs.shape}")
    groups = probs.reshape(-1, 2, 2)
    grouped = groups.max(axis=-1) if rule == "max" else groups.sum(axis=-1)
    return grouped[:, 1] / grouped.sum(axis=1)


def is_carcinoma(labels: np.ndarray) -> np.ndarray:
    """Whether each 4-class label is a carcinoma (InSitu or Invasive)."""
    return np.isin(np.asarray(labels), CARCINOMA_CLASSES)


def four_class_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Accuracy of the argmax of ``(n, 4)`` probabilities."""
    return float(accuracy_score(np.asarray(labels), np.asarray(probs).argmax(axis=1)))


def sensitivity_specificity(positive: np.ndarray, called: np.ndarray) -> tuple[float, float]:
    """(TP / P, TN / N) of boolean truths and calls; NaN where a class is absent."""
    tn, fp, fn, tp = confusion_matrix(positive, called, labels=[False, True]).ravel()
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    return float(sensitivity), float(specificity)


def binary_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    setpoints: Sequence[float] = SETPOINTS,
    rule: str = "max",
) -> dict[str, float]:
    """Carcinoma vs non-carcinoma: ``acc`` (4-class argmax mapped to its group), ``auc`` (of the score),
    ``sensitivity@s`` and ``specificity@s`` (carcinoma when ``score >= s``) for each setpoint ``s``."""
    positive = is_carcinoma(labels)
    score = carcinoma_score(probs, rule)
    predicted = is_carcinoma(np.asarray(probs).argmax(axis=1))
    both = positive.any() and not positive.all()
    out = {
        "acc": float(accuracy_score(positive, predicted)),
        "auc": float(roc_auc_score(positive, score)) if both else float("nan"),
    }
    for setpoint in setpoints:
        sensitivity, specificity = sensitivity_specificity(positive, score >= setpoint)
        out[f"sensitivity@{setpoint:g}"] = sensitivity
        out[f"specificity@{setpoint:g}"] = specificity
    return out


def four_class_confusion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(4, 4)`` counts, rows = truth, columns = prediction (Fig. 4b, not normalised)."""
    return confusion_matrix(np.asarray(labels), np.asarray(probs).argmax(axis=1), labels=range(4))


def bach_metrics(
    labels: np.ndarray,
    fused: np.ndarray,
    per_model: Mapping[str, np.ndarray] | None = None,
    setpoints: Sequence[float] = SETPOINTS,
    rule: str = "max",
) -> dict[str, float]:
    """Every number of §3 for one set of predictions: ``acc4`` (fused), ``acc4/<model>`` per model,
    ``acc2``, ``auc2``, ``sensitivity2@s``, ``specificity2@s``."""
    out = {"acc4": four_class_accuracy(labels, fused)}
    for name, probs in (per_model or {}).items():
        out[f"acc4/{name}"] = four_class_accuracy(labels, probs)
    for key, value in binary_metrics(labels, fused, setpoints, rule).items():
        name, _, setpoint = key.partition("@")
        out[f"{name}2" + (f"@{setpoint}" if setpoint else "")] = value
    return out


__all__ = [
    "CARCINOMA_RULES",
    "SETPOINTS",
    "bach_metrics",
    "binary_metrics",
    "carcinoma_score",
    "four_class_accuracy",
    "four_class_confusion",
    "is_carcinoma",
    "sensitivity_specificity",
]
