"""Writes what a pathologist looks at after mitosis detection: predictions, overlays, a PR curve.

Attached to the detection ``trainer.test`` of the CHS-Net pipeline. Per-HPF detections are gathered from
every process (each tested a disjoint share of the HPFs), so the files are complete under DDP. In
``output_dir``:

* ``predictions/<case>/<NN>.csv``: ``row,col,confidence`` per detection (the TUPAC16 submission format);
* ``geojson/<case>/<NN>.geojson``: the same points for QuPath (File → Import objects);
* ``detections.csv`` (every detection, with whether it is a true positive) and ``per_hpf.csv`` (ground
  truth, detections, TP/FP/FN per HPF);
* ``pr_curve.csv`` and ``plots/pr_curve.png``: precision, recall, F1 over the refined threshold;
* ``overlays/<case>_<NN>.png``: the normalised HPF with ground truth (white found, blue missed) and
  detections (green true, red false) within the match radius; the first few, and the PR curve, are sent
  to W&B / TensorBoard.

For the unlabelled test set only the predictions (CSV, GeoJSON) are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl

from histo_lightning.callbacks.collect import TestOutputCollector
from histo_lightning.methods.chsnet.detector import CURVE_THRESHOLDS
from histo_lightning.methods.chsnet.outputs import write_challenge_csv, write_geojson
from histo_lightning.methods.chsnet.overlays import detection_overlay
from histo_lightning.metrics.detection import detection_scores, match_assignments
from histo_lightning.reporting.plots import log_image, precision_recall_figure, save_figure
from histo_lightning.utils.io import atomic_path
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


class DetectionReport(TestOutputCollector):
    """Collects the detections of ``trainer.test`` and writes the report files (see the module docstring).

    The match radius, the matching rule and the operating threshold are the detector's
    (:class:`~histo_lightning.methods.chsnet.detector.ChsnetCascadeDetector`), read when the test ends.

    Args:
        output_dir: where the files go; None (default): the test stage's own folder.
        overlays: write overlay PNGs. overlay_max_side: their longest side in pixels.
        max_logged_overlays: how many overlays go to W&B / TensorBoard.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        overlays: bool = True,
        overlay_max_side: int = 1024,
        max_logged_overlays: int = 8,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.match_radius_px, self.match_rule, self.refined_threshold = 30.0, "amida13", 0.85
        self.overlays, self.overlay_max_side = overlays, int(overlay_max_side)
        self.max_logged_overlays = int(max_logged_overlays)
        super().__init__()

    def record(self, outputs: Any) -> dict[str, Any]:
        return {
            "hpf": int(outputs["hpf"]),
            "labelled": bool(outputs["labelled"]),
            "points": outputs["points"].numpy(),
            "scores": outputs["scores"].numpy(),
            "gt": outputs["gt"].numpy() if "gt" in outputs else None,
        }

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        items = sorted(self.gathered(), key=lambda i: i["hpf"])
        if not trainer.is_global_zero or not items:
            return
        datamodule = trainer.datamodule
        labelled = items[0]["labelled"]
        self.match_radius_px = float(pl_module.match_radius_px)
        self.match_rule = str(pl_module.match_rule)
        self.refined_threshold = float(pl_module.refined_threshold)
        out = self.output_dir or Path(trainer.default_root_dir)
        rows, per_hpf = [], []
        for item in items:
            case, name = datamodule.hpf_name(item["hpf"], unlabelled=not labelled)
            write_challenge_csv(
                out / "predictions" / case / f"{name}.csv", item["points"], item["scores"]
            )
            write_geojson(
                out / "geojson" / case / f"{name}.geojson", item["points"], item["scores"]
            )
            if not labelled:
                continue
            is_tp, found = match_assignments(
                item["points"], item["gt"], self.match_radius_px, self.match_rule
            )
            item.update(is_tp=is_tp, found=found, case=case, name=name)
            rows += [
                {
                    "case": case,
                    "hpf": name,
                    "row": r,
                    "col": c,
                    "confidence": s,
                    "true_positive": bool(t),
                }
                for (r, c), s, t in zip(item["points"], item["scores"], is_tp)
            ]
            per_hpf.append(
                {
                    "case": case,
                    "hpf": name,
                    "mitoses": len(item["gt"]),
                    "detections": len(item["points"]),
                    "tp": int(found.sum()),
                    "fp": int((~is_tp).sum()),
                    "fn": int((~found).sum()),
                }
            )
        if labelled:
            self._write_tables(out, rows, per_hpf)
            self._write_curve(trainer, pl_module, out, datamodule.is_synthetic)
            if self.overlays:
                self._write_overlays(trainer, out, items, datamodule)
        log.info(f"Detection report written to {out} ({len(items)} HPFs)")

    def _write_tables(self, out: Path, rows: list[dict], per_hpf: list[dict]) -> None:
        columns = ["case", "hpf", "row", "col", "confidence", "true_positive"]
        with atomic_path(out / "detections.csv") as tmp:
            pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
        with atomic_path(out / "per_hpf.csv") as tmp:
            pd.DataFrame(per_hpf).to_csv(tmp, index=False)

    def _write_curve(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: Path, synthetic: bool
    ) -> None:
        curve = getattr(pl_module, "curve", None)
        if curve is None:
            return
        scores = [detection_scores(*row) for row in curve]
        table = pd.DataFrame(
            {
                "threshold": CURVE_THRESHOLDS,
                "tp": curve[:, 0],
                "fp": curve[:, 1],
                "fn": curve[:, 2],
                **{k: [s[k] for s in scores] for k in ("precision", "recall", "f1")},
            }
        )
        with atomic_path(out / "pr_curve.csv") as tmp:
            table.to_csv(tmp, index=False)
        suffix = " (synthetic data)" if synthetic else ""
        figure = precision_recall_figure(
            table["threshold"].to_numpy(),
            table["precision"].to_numpy(),
            table["recall"].to_numpy(),
            table["f1"].to_numpy(),
            self.refined_threshold,
            title=f"P, R, F1 over the refined threshold{suffix}",
        )
        path = save_figure(figure, out / "plots" / "pr_curve.png")
        log_image(trainer.loggers, "test/pr_curve", path, trainer.global_step)

    def _write_overlays(
        self, trainer: pl.Trainer, out: Path, items: list[dict], datamodule: Any
    ) -> None:
        # the HPFs with the most errors first, so the logged ones are the instructive ones
        ranked = sorted(items, key=lambda i: -int((~i["is_tp"]).sum() + (~i["found"]).sum()))
        for rank, item in enumerate(ranked):
            title = f"case {item['case']} HPF {item['name']}: TP {int(item['found'].sum())} " + (
                f"FP {int((~item['is_tp']).sum())} FN {int((~item['found']).sum())}"
            )
            overlay = detection_overlay(
                np.asarray(datamodule.images[item["hpf"]]),
                item["points"],
                item["is_tp"],
                item["gt"],
                item["found"],
                self.match_radius_px,
                self.overlay_max_side,
                title,
            )
            path = out / "overlays" / f"{item['case']}_{item['name']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(cv2.imencode(".png", overlay[..., ::-1])[1].tobytes())
            if rank < self.max_logged_overlays:
                log_image(
                    trainer.loggers,
                    f"test/overlay_{item['case']}_{item['name']}",
                    path,
                    trainer.global_step,
                )


__all__ = ["DetectionReport"]
