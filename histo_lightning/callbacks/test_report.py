"""Writes what a researcher looks at after testing: predictions, per-patient scores, ROC, confusion matrix.

Per-sample probabilities are gathered from every process (each rank tested a disjoint share of the test
set), so the files are complete under DDP. Files in the run directory:

* ``predictions.csv``: one row per test image (path, patient, group, label, predicted class, probabilities)
* ``patient_scores.csv`` / ``.md``: per patient N^p, N^rec and PS (SMSE Table VIII)
* ``confusion_matrix.csv`` and ``plots/confusion_matrix.png``, ``plots/roc.png`` (also sent to W&B/TensorBoard)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from sklearn.metrics import confusion_matrix

from histo_lightning.callbacks.collect import TestOutputCollector
from histo_lightning.reporting.plots import confusion_figure, roc_figure, save_figure
from histo_lightning.utils.io import atomic_path, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


def log_image(trainer: pl.Trainer, key: str, path: Path) -> None:
    """Send a saved PNG to the trainer's image-capable loggers (W&B, TensorBoard)."""
    log_image_to(trainer.loggers, key, path, trainer.global_step)


def log_image_to(loggers: list, key: str, path: Path, step: int = 0) -> None:
    """Send a saved PNG to the image-capable ones of ``loggers`` (W&B, TensorBoard), e.g. a stage's."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image as mpimg

            pixels = mpimg.imread(path)[..., :3]
            logger.experiment.add_image(key, pixels, global_step=step, dataformats="HWC")


class TestReport(TestOutputCollector):
    """Collects test predictions and writes the per-run report files into ``output_dir``.

    ``output_dir=None`` (the default config): the trainer's folder, i.e. the test stage's own folder.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__()
        self.output_dir = Path(output_dir) if output_dir else None

    def record(self, outputs: Any) -> tuple[np.ndarray, np.ndarray] | None:
        if not (isinstance(outputs, dict) and "probs" in outputs):
            return None
        return outputs["index"].detach().cpu().numpy(), outputs[
            "probs"
        ].detach().float().cpu().numpy()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.gathered()
        if not trainer.is_global_zero or not records:
            return
        index = np.concatenate([r[0] for r in records])
        probs = np.concatenate([r[1] for r in records])
        datamodule = trainer.datamodule
        self.write(
            datamodule.table, index, probs, datamodule.class_names, trainer, datamodule.is_synthetic
        )

    def write(
        self,
        table: pd.DataFrame,
        index: np.ndarray,
        probs: np.ndarray,
        class_names: list[str],
        trainer: pl.Trainer | None = None,
        synthetic: bool = False,
    ) -> None:
        order = np.argsort(index, kind="stable")
        index, probs = index[order], probs[order]
        rows = table.iloc[index]
        predictions = pd.DataFrame(
            {
                "path": rows["path"].to_numpy(),
                "patient": rows["patient"].astype(str).to_numpy(),
                "group": rows["group"].to_numpy(),
                "label": rows["label"].to_numpy(),
                "pred": probs.argmax(axis=1),
            }
        )
        for c, name in enumerate(class_names):
            predictions[f"prob_{name}"] = probs[:, c]
        predictions["correct"] = predictions["label"] == predictions["pred"]
        out = self.output_dir or Path(trainer.default_root_dir if trainer is not None else ".")
        with atomic_path(out / "predictions.csv") as tmp:
            predictions.to_csv(tmp, index=False)

        scores = patient_score_table(predictions, class_names)
        with atomic_path(out / "patient_scores.csv") as tmp:
            scores.to_csv(tmp, index=False)
        note = (
            "\n\n_Synthetic data: these numbers say nothing about real performance._\n"
            if synthetic
            else "\n"
        )
        write_text_atomic(
            out / "patient_scores.md", scores.to_markdown(index=False, floatfmt=".3f") + note
        )

        labels = list(range(len(class_names)))
        matrix = confusion_matrix(predictions["label"], predictions["pred"], labels=labels)
        with atomic_path(out / "confusion_matrix.csv") as tmp:
            pd.DataFrame(
                matrix,
                index=[f"true_{c}" for c in class_names],
                columns=[f"pred_{c}" for c in class_names],
            ).to_csv(tmp)
        suffix = " (synthetic data)" if synthetic else ""
        figures = {
            "confusion_matrix": confusion_figure(
                matrix, class_names, title=f"Confusion matrix{suffix}"
            ),
            "roc": roc_figure(
                predictions["label"].to_numpy(), probs, class_names, title=f"ROC{suffix}"
            ),
        }
        for name, fig in figures.items():
            path = save_figure(fig, out / "plots" / f"{name}.png")
            if trainer is not None:
                log_image(trainer, f"test/{name}", path)
        log.info(f"Test report written to {out} (predictions.csv, patient_scores.csv, plots/)")


def patient_score_table(predictions: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Per patient: class, N^p (images), N^rec (correct) and PS = N^rec / N^p (SMSE Table VIII)."""
    grouped = predictions.groupby("patient")
    table = pd.DataFrame(
        {
            "class": grouped["label"].agg(lambda s: class_names[int(s.mode().iloc[0])]),
            "n_images": grouped.size(),
            "n_correct": grouped["correct"].sum().astype(int),
        }
    )
    table["score"] = table["n_correct"] / table["n_images"]
    return table.reset_index()
