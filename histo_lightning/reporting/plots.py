"""Figures people would rather look at than read: ROC curves and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from histo_lightning.utils.io import atomic_path


def roc_figure(
    targets: np.ndarray, probs: np.ndarray, class_names: Sequence[str], title: str = "ROC"
) -> Figure:
    """ROC curve(s): the positive class for two classes, one-vs-rest per class otherwise."""
    fig, ax = plt.subplots(figsize=(5, 5))
    classes = [1] if probs.shape[1] == 2 else list(range(probs.shape[1]))
    for c in classes:
        positives = targets == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives.astype(int), probs[:, c])
        ax.plot(fpr, tpr, lw=2, label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        xlabel="False positive rate",
        ylabel="True positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(
    matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts with row-normalised colour: rows are true classes, columns predicted."""
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2))
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if normalised[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n{normalised[i, j]:.0%}", ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def precision_recall_figure(
    thresholds: np.ndarray,
    precision: np.ndarray,
    recall: np.ndarray,
    f1: np.ndarray,
    operating_threshold: float | None = None,
    title: str = "Precision–recall over the detection threshold",
) -> Figure:
    """Left: precision against recall (one point per threshold); right: P, R and F1 against the threshold."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    left.plot(recall, precision, marker=".", lw=1.5)
    left.set(
        xlabel="Recall",
        ylabel="Precision",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title="Precision–recall",
    )
    for values, name in ((precision, "precision"), (recall, "recall"), (f1, "F1")):
        right.plot(thresholds, values, lw=1.5, label=name)
    if operating_threshold is not None:
        right.axvline(
            operating_threshold,
            ls="--",
            color="grey",
            lw=1,
            label=f"threshold {operating_threshold:g}",
        )
        at = int(np.argmin(np.abs(thresholds - operating_threshold)))
        left.plot(
            recall[at], precision[at], "o", color="crimson", label=f"p > {operating_threshold:g}"
        )
        left.legend(loc="lower left")
    best = int(np.argmax(f1)) if len(f1) else 0
    if len(f1):
        right.plot(
            thresholds[best], f1[best], "*", ms=10, color="black", label=f"best F1 {f1[best]:.3f}"
        )
    right.set(xlabel="Refined-network threshold", ylim=(0, 1.01), title=title)
    right.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def log_image(loggers: Sequence[Any], key: str, path: Path, step: int = 0) -> None:
    """Send a saved PNG to the image-capable loggers (W&B, TensorBoard); others are skipped."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            pixels = plt.imread(path)[..., :3]
            logger.experiment.add_image(key, pixels, global_step=step, dataformats="HWC")


def roc_setpoints_figure(
    positive: np.ndarray,
    scores: np.ndarray,
    setpoints: Sequence[float] = (),
    title: str = "ROC",
    positive_name: str = "positive",
) -> Figure:
    """One ROC curve of a binary score, with the operating points at ``setpoints`` marked (a sample is
    called positive when its score ``>= setpoint``) and their sensitivity/specificity in the legend."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 5))
    if positive.any() and not positive.all():
        fpr, tpr, _ = roc_curve(positive.astype(int), scores)
        ax.plot(fpr, tpr, lw=2, color="black", label=f"{positive_name} (AUC {auc(fpr, tpr):.3f})")
        colours = ["tab:green", "tab:blue", "tab:orange", "tab:red", "tab:purple"]
        for i, setpoint in enumerate(setpoints):
            called = scores >= setpoint
            sensitivity = (called & positive).sum() / positive.sum()
            specificity = (~called & ~positive).sum() / (~positive).sum()
            ax.plot(
                1 - specificity,
                sensitivity,
                "o",
                ms=9,
                color=colours[i % len(colours)],
                label=f"setpoint {setpoint:g}: sens {sensitivity:.1%}, spec {specificity:.1%}",
            )
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
