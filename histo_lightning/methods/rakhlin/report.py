"""BACH reports of one fold (Rakhlin et al. §3): Fig. 4a (ROC with setpoints), Fig. 4b (confusion
matrix), the per-image predictions and probabilities, and the submission CSV of the unlabelled test
images. Every file is written atomically. A sweep's Table 1 and pooled Fig. 4 are the registered layouts
``rakhlin.table1`` and ``rakhlin.fig4`` (:mod:`histo_lightning.methods.rakhlin.tables`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histo_lightning.data.datasets.bach import CLASS_NAMES
from histo_lightning.methods.rakhlin.metrics import (
    SETPOINTS,
    bach_metrics,
    carcinoma_score,
    four_class_confusion,
    is_carcinoma,
)
from histo_lightning.reporting.plots import confusion_figure, roc_setpoints_figure, save_figure
from histo_lightning.utils.io import atomic_path

ROC_FILE, CONFUSION_FILE, PREDICTIONS_FILE = "roc.png", "confusion.png", "predictions.csv"


def _to_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_submission(
    path: str | Path,
    images: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """``image,label`` (a header, then e.g. ``test0.tif,Benign``) in the order of ``images``."""
    predicted = np.asarray(probs).argmax(axis=1)
    frame = pd.DataFrame({"image": list(images), "label": [class_names[i] for i in predicted]})
    return _to_csv(frame, path)


def probabilities_table(
    images: Sequence[str],
    fused: np.ndarray,
    per_model: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per image: the fused class probabilities ``p_<class>`` and each model's
    ``p_<class>/<model>`` (the unlabelled images' predictions of one fold's models)."""
    frame = pd.DataFrame({"image": list(images)})
    for c, name in enumerate(CLASS_NAMES):
        frame[f"p_{name}"] = np.asarray(fused)[:, c]
    for model, probs in (per_model or {}).items():
        for c, name in enumerate(CLASS_NAMES):
            frame[f"p_{name}/{model}"] = np.asarray(probs)[:, c]
    return frame


def write_probabilities(
    path: str | Path,
    images: Sequence[str],
    fused: np.ndarray,
    per_model: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """:func:`probabilities_table` as a CSV, atomically."""
    return _to_csv(probabilities_table(images, fused, per_model), path)


def predictions_table(
    images: Sequence[str],
    labels: np.ndarray,
    fused: np.ndarray,
    per_model: Mapping[str, np.ndarray] | None = None,
    rule: str = "max",
) -> pd.DataFrame:
    """One row per image: truth, fused prediction, fused probabilities, carcinoma score, per-model calls."""
    fused = np.asarray(fused)
    frame = pd.DataFrame(
        {
            "image": list(images),
            "label": [CLASS_NAMES[i] for i in labels],
            "predicted": [CLASS_NAMES[i] for i in fused.argmax(axis=1)],
        }
    )
    for c, name in enumerate(CLASS_NAMES):
        frame[f"p_{name}"] = fused[:, c].round(6)
    frame["carcinoma_score"] = carcinoma_score(fused, rule).round(6)
    for model, probs in (per_model or {}).items():
        frame[f"predicted/{model}"] = [CLASS_NAMES[i] for i in np.asarray(probs).argmax(axis=1)]
    return frame


def write_report(
    out_dir: str | Path,
    images: Sequence[str],
    labels: np.ndarray,
    fused: np.ndarray,
    per_model: Mapping[str, np.ndarray] | None = None,
    setpoints: Sequence[float] = SETPOINTS,
    rule: str = "max",
    title: str = "",
) -> dict[str, float]:
    """The metrics of :func:`~histo_lightning.methods.rakhlin.metrics.bach_metrics`, and in ``out_dir``:
    ``roc.png`` (carcinoma vs non-carcinoma, setpoints marked), ``confusion.png`` (4 classes, counts),
    ``predictions.csv``."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels)
    metrics = bach_metrics(labels, fused, per_model, setpoints, rule)
    suffix = f" — {title}" if title else ""
    save_figure(
        roc_setpoints_figure(
            is_carcinoma(labels),
            carcinoma_score(fused, rule),
            setpoints,
            title=f"Carcinoma vs non-carcinoma{suffix}",
            positive_name="carcinoma",
        ),
        out_dir / ROC_FILE,
    )
    save_figure(
        confusion_figure(
            four_class_confusion(labels, fused), CLASS_NAMES, title=f"4 classes{suffix}"
        ),
        out_dir / CONFUSION_FILE,
    )
    _to_csv(predictions_table(images, labels, fused, per_model, rule), out_dir / PREDICTIONS_FILE)
    return metrics


__all__ = [
    "CONFUSION_FILE",
    "PREDICTIONS_FILE",
    "ROC_FILE",
    "predictions_table",
    "probabilities_table",
    "write_probabilities",
    "write_report",
    "write_submission",
]
