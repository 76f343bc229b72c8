"""Offline hard-example mining (CHS-Net §3.1.1, §3.2, §4.2.2) as a callback of the mining predict stage.

After the screening network is trained, the ``mining`` stage predicts p(mitosis) of every training patch
into its feature cache (each process writes its own share under DDP). This callback then reads the
complete cache (:meth:`HardExampleMining.on_features_ready`): the negatives with p(mitosis) >
``threshold`` (0.2) are the false positives the refined network is trained on (sampled 1 : 1 : 3 with
negatives and positives). The same pass gives Table 2's report of the screening network on the training
set: FP, TP, FN at the threshold, recall of positives / of negatives, precision and F1. In the stage
folder (rank 0 writes):

* ``false_positives.csv``: patch-index row, HPF, case, centre and p(mitosis) of every mined negative;
* ``report.json`` / ``report.md``: the Table 2 row (also logged as ``mining/*``).

Mining that finds no false positive says so in the report and the log: the refined network then trains on
negatives and positives alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl

from histo_lightning.metrics.detection import detection_scores
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.choices import PROBABILITY, declare_choices
from histo_lightning.utils.io import atomic_path, write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

if TYPE_CHECKING:
    from histo_lightning.pipelines.runner import StageContext

log = get_logger(__name__)

NO_FALSE_POSITIVES = (
    "no false positives: every training negative has p(mitosis) <= {threshold}; the refined network "
    "trains on negatives and positives only"
)


def mining_report(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Table 2's row: the screening network on the training patches at ``threshold``."""
    predicted = probs > threshold
    positives = labels == 1
    tp = int((predicted & positives).sum())
    fp = int((predicted & ~positives).sum())
    fn = int((~predicted & positives).sum())
    tn = int((~predicted & ~positives).sum())
    scores = detection_scores(tp, fp, fn)
    return {
        "threshold": threshold,
        "patches": len(labels),
        "positives": int(positives.sum()),
        "negatives": int((~positives).sum()),
        "fp": fp,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "recall_pos": scores["recall"],
        "recall_neg": tn / (tn + fp) if tn + fp else 0.0,
        "precision": scores["precision"],
        "f1": scores["f1"],
    }


def report_markdown(report: dict[str, Any], synthetic: bool = False) -> str:
    """The report as a Table 2 row (markdown)."""
    header = "| FP | TP | FN | Recall(P/N) | Precision | F1 score |\n|---|---|---|---|---|---|\n"
    row = (
        f"| {report['fp']} | {report['tp']} | {report['fn']} | "
        f"{report['recall_pos']:.4f}/{report['recall_neg']:.4f} | {report['precision']:.4f} | {report['f1']:.4f} |\n"
    )
    notes = [f"\n**{report['note']}**\n"] if report.get("note") else []
    if synthetic:
        notes.append("\n_Synthetic data: these numbers say nothing about real performance._\n")
    return (
        f"# Screening network on the training set (CHS-Net Table 2), p(mitosis) > {report['threshold']}\n\n"
        + header
        + row
        + "".join(notes)
    )


@declare_choices(threshold=PROBABILITY)
class HardExampleMining(pl.Callback):
    """Keeps the training negatives whose p(mitosis) exceeds ``threshold`` (see the module docstring).

    Args:
        threshold: p(mitosis) above which a negative is a false positive (§4.2.2: 0.2).
    """

    def __init__(self, threshold: float = 0.2) -> None:
        self.threshold = float(threshold)

    def on_features_ready(self, cache: FeatureCache, ctx: StageContext) -> dict[str, Any]:
        # every training patch (or the patches a limited run predicted, in the stage's own store)
        manifest = cache.manifest
        probs = np.asarray(cache.features(), dtype=np.float64).reshape(-1)
        labels = manifest["label"].to_numpy(dtype=np.int64)
        report = mining_report(labels, probs, self.threshold)
        hard = (labels == 0) & (probs > self.threshold)
        if report["fp"] == 0:
            report["note"] = NO_FALSE_POSITIVES.format(threshold=self.threshold)
            log.warning(f"Hard-example mining: {report['note']}")
        log.info(
            f"Hard-example mining: {report['fp']} false positives of {report['negatives']} negatives "
            f"(p > {self.threshold}); recall P/N {report['recall_pos']:.4f}/{report['recall_neg']:.4f}"
        )
        if ctx.is_global_zero:
            table = manifest.loc[hard, ["patch_row", "hpf", "patient", "cy", "cx"]].rename(
                columns={"patient": "case"}
            )
            table.insert(1, "prob", probs[hard])
            with atomic_path(ctx.dir / "false_positives.csv") as tmp:
                table.to_csv(tmp, index=False)
            synthetic = bool(getattr(ctx.datamodule, "is_synthetic", False))
            write_text_atomic(ctx.dir / "report.md", report_markdown(report, synthetic))
            write_json_atomic(ctx.dir / "report.json", {**report, "synthetic_data": synthetic})
        metrics = {k: float(v) for k, v in report.items() if isinstance(v, (int, float))}
        return {
            "metrics": metrics,
            "outputs": {"false_positives": "false_positives.csv", "report": "report.json"},
        }


__all__ = ["HardExampleMining", "mining_report", "report_markdown"]
