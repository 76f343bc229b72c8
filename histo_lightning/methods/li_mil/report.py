"""What a researcher looks at after testing an attention MIL model: per-bag predictions, per-instance
attention, and attention heatmaps of the test bags.

Gathered from every process (each rank tested a disjoint share of the bags), written by rank 0 into the
test stage's folder:

* ``predictions.csv``: one row per test bag: ``bag`` (name), ``origin``, ``label``, ``prob``, ``pred``;
* ``instances.csv``: one row per instance of every test bag: ``bag, x, y, attention, label`` (the
  instance label: 1 key, 0 ordinary, -1 unknown) and ``relative_attention`` (``w · n``: 1 = uniform);
* ``heatmaps/<bag>.png``: each instance's weight drawn at its position over the image (nucleus markers
  for Colon, the patch grid for UCSB, a mosaic for digit bags), ground-truth key instances outlined
  (:func:`~histo_lightning.methods.li_mil.plots.heatmap_figure`); the first ``log_heatmaps`` also go to
  W&B/TensorBoard as ``test/heatmap/<bag>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from histo_lightning.callbacks.collect import TestOutputCollector
from histo_lightning.methods.li_mil.plots import heatmap_figure
from histo_lightning.reporting.plots import log_image, save_figure
from histo_lightning.stores.image_store import read_rgb
from histo_lightning.utils.io import atomic_path
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


class MILTestReport(TestOutputCollector):
    """Writes the MIL test report (see the module docstring).

    Args:
        max_heatmaps: heatmaps drawn (test bags in manifest order; 0: none, -1: all).
        log_heatmaps: of those, how many are sent to the image loggers.
        threshold: a bag is predicted positive from this probability on.
    """

    def __init__(
        self, max_heatmaps: int = -1, log_heatmaps: int = 8, threshold: float = 0.5
    ) -> None:
        super().__init__()
        self.max_heatmaps = int(max_heatmaps)
        self.log_heatmaps = int(log_heatmaps)
        self.threshold = float(threshold)

    def record(self, outputs: Any) -> list[tuple[int, float, np.ndarray]] | None:
        if not (isinstance(outputs, dict) and "attention" in outputs and "mask" in outputs):
            return None
        index = outputs["index"].cpu().numpy()
        probs = outputs["prob"].float().cpu().numpy()
        attention = outputs["attention"].float().cpu().numpy()
        mask = outputs["mask"].cpu().numpy()
        return [(int(i), float(p), a[m]) for i, p, a, m in zip(index, probs, attention, mask)]

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = [bag for batch in self.gathered() for bag in batch]
        if not trainer.is_global_zero or not records:
            return
        records.sort(key=lambda r: r[0])
        self.write(trainer.datamodule, records, Path(trainer.default_root_dir), trainer)

    def write(
        self,
        datamodule: Any,
        records: list[tuple[int, float, np.ndarray]],
        out: Path,
        trainer: pl.Trainer | None = None,
    ) -> None:
        manifest = datamodule.sample_manifest("test")
        bags = datamodule.bags
        predictions, instances = [], []
        for index, prob, weights in records:
            row = manifest.iloc[index]
            members = np.arange(row["first_instance"], row["first_instance"] + row["n_instances"])
            if len(weights) != len(members):
                raise RuntimeError(
                    f"test bag {row['patient']}: {len(weights)} attention weights for "
                    f"{len(members)} instances"
                )
            predictions.append(
                {
                    "bag": row["patient"],
                    "origin": row["origin"],
                    "label": int(row["label"]),
                    "prob": prob,
                    "pred": int(prob >= self.threshold),
                }
            )
            instances.append(
                pd.DataFrame(
                    {
                        "bag": row["patient"],
                        "x": bags.coords[members, 0],
                        "y": bags.coords[members, 1],
                        "attention": weights,
                        "relative_attention": weights * len(weights),
                        "label": bags.instance_labels[members].astype(int),
                    }
                )
            )
        with atomic_path(out / "predictions.csv") as tmp:
            pd.DataFrame(predictions).to_csv(tmp, index=False)
        with atomic_path(out / "instances.csv") as tmp:
            pd.concat(instances, ignore_index=True).to_csv(tmp, index=False)
        limit = len(records) if self.max_heatmaps < 0 else min(self.max_heatmaps, len(records))
        synthetic = " [SYNTHETIC]" if datamodule.is_synthetic else ""
        for n, ((index, prob, weights), table) in enumerate(zip(records[:limit], instances)):
            row = manifest.iloc[index]
            bag = int(row["bag"])
            image_path = datamodule.image_path(bag)
            image = read_rgb(image_path) if image_path is not None else None
            members = np.arange(row["first_instance"], row["first_instance"] + row["n_instances"])
            fig = heatmap_figure(
                datamodule.heatmap_style,
                weights,
                table[["x", "y"]].to_numpy(),
                table["label"].to_numpy(),
                datamodule.patch_size(),
                image=image,
                instances=np.asarray(bags.instances[members]) if image is None else None,
                title=f"{row['patient']}: label {int(row['label'])}, p = {prob:.3f}, "
                f"{len(weights)} instances{synthetic}",
            )
            path = save_figure(fig, out / "heatmaps" / f"{row['patient']}.png")
            if trainer is not None and n < self.log_heatmaps:
                log_image(
                    trainer.loggers, f"test/heatmap/{row['patient']}", path, trainer.global_step
                )
        log.info(
            f"MIL test report: {len(records)} bags in {out / 'predictions.csv'}, "
            f"{limit} heatmaps in {out / 'heatmaps'}"
        )


__all__ = ["MILTestReport"]
