"""Offline hard-example mining (CHS-Net §3.1.1, §3.2, §4.2.2) as a Lightning callback on ``trainer.predict``.

After the screening network is trained, every training patch is predicted; the negatives with
p(mitosis) > ``threshold`` (0.2) are the false positives that the refined network is trained on (sampled
1 : 1 : 3 with negatives and positives). The same pass gives Table 2's report of the screening network on
the training set: FP, TP, FN at the threshold, recall of positives / of negatives, precision and F1.

Under DDP every process predicts a disjoint share (unrepeated sampler); the callback gathers all shares
(``all_gather_object``), so every process holds the complete, identical result and rank 0 writes:

* ``false_positives.csv``: patch-index row, HPF, case, centre and p(mitosis) of every mined negative;
* ``predictions.npz``: index rows, labels and probabilities of every training patch;
* ``report.json`` / ``report.md``: the Table 2 row (also logged as ``mining/*``).

The files name the patch index they refer to (its fingerprint), so stale mining results are never reused
with another index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from histo_lightning.metrics.detection import detection_scores
from histo_lightning.utils.distributed import gather_objects
from histo_lightning.utils.io import atomic_path, write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class MiningResult:
    """Rows of the mined false positives and the Table 2 report."""

    false_positives: np.ndarray
    report: dict[str, Any]


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
    note = (
        "\n_Synthetic data: these numbers say nothing about real performance._\n"
        if synthetic
        else ""
    )
    return (
        f"# Screening network on the training set (CHS-Net Table 2), p(mitosis) > {report['threshold']}\n\n"
        + header
        + row
        + note
    )


class HardExampleMining(pl.Callback):
    """Collects p(mitosis) of every predicted training patch and keeps the negatives above ``threshold``.

    Args:
        output_dir: where the mining files go (the screening stage's ``mining/``).
        threshold: p(mitosis) above which a negative is a false positive (§4.2.2: 0.2).
        index_fingerprint: fingerprint of the patch index, recorded in the files.
    """

    def __init__(
        self, output_dir: str | Path, threshold: float = 0.2, index_fingerprint: str = ""
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.index_fingerprint = index_fingerprint
        self.result: MiningResult | None = None
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts, self.result = [], None

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._parts.append(
            tuple(outputs[k].detach().cpu().numpy() for k in ("index", "label", "prob"))  # type: ignore[arg-type]
        )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = tuple(
            np.concatenate([p[i] for p in self._parts]) if self._parts else np.zeros(0)
            for i in range(3)
        )
        shares = [s for s in gather_objects(local) if len(s[0])]
        index = (
            np.concatenate([s[0] for s in shares]).astype(np.int64)
            if shares
            else np.zeros(0, np.int64)
        )
        labels = (
            np.concatenate([s[1] for s in shares]).astype(np.int64)
            if shares
            else np.zeros(0, np.int64)
        )
        probs = np.concatenate([s[2] for s in shares]).astype(np.float64) if shares else np.zeros(0)
        index, first = np.unique(index, return_index=True)  # sorted, each patch once
        labels, probs = labels[first], probs[first]
        hard = index[(labels == 0) & (probs > self.threshold)]
        report = mining_report(labels, probs, self.threshold)
        report["index_fingerprint"] = self.index_fingerprint
        self.result = MiningResult(hard, report)
        if trainer.is_global_zero:
            self._write(trainer, index, labels, probs, hard, report)
            for logger in trainer.loggers:
                logger.log_metrics(
                    {
                        f"mining/{k}": float(v)
                        for k, v in report.items()
                        if isinstance(v, (int, float))
                    },
                    step=trainer.global_step,
                )
        log.info(
            f"Hard-example mining: {report['fp']} false positives of {report['negatives']} negatives "
            f"(p > {self.threshold}); recall P/N {report['recall_pos']:.4f}/{report['recall_neg']:.4f}"
        )
        trainer.strategy.barrier("hard_example_mining")

    def _write(
        self,
        trainer: pl.Trainer,
        index: np.ndarray,
        labels: np.ndarray,
        probs: np.ndarray,
        hard: np.ndarray,
        report: dict[str, Any],
    ) -> None:
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        table = pd.DataFrame({"row": hard, "prob": probs[np.searchsorted(index, hard)]})
        if datamodule is not None and getattr(datamodule, "index", None) is not None:
            rows = datamodule.index.iloc[hard]
            table["hpf"] = rows["hpf"].to_numpy()
            table["case"] = datamodule.hpfs["case"].to_numpy()[table["hpf"]]
            table["name"] = datamodule.hpfs["name"].to_numpy()[table["hpf"]]
            table["cy"], table["cx"] = rows["cy"].to_numpy(), rows["cx"].to_numpy()
        with atomic_path(out / "false_positives.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(out / "predictions.npz") as tmp, tmp.open("wb") as handle:
            np.savez(handle, index=index, label=labels, prob=probs)
        synthetic = bool(getattr(datamodule, "is_synthetic", False))
        write_text_atomic(out / "report.md", report_markdown(report, synthetic))
        write_json_atomic(out / "report.json", {**report, "synthetic_data": synthetic})


def load_mining(output_dir: str | Path) -> MiningResult | None:
    """A finished mining result from ``output_dir``, or None (``report.json`` is written last)."""
    out = Path(output_dir)
    if not (out / "report.json").is_file() or not (out / "false_positives.csv").is_file():
        return None
    report = json.loads((out / "report.json").read_text())
    rows = pd.read_csv(out / "false_positives.csv")["row"].to_numpy(dtype=np.int64)
    return MiningResult(rows, report)


__all__ = ["HardExampleMining", "MiningResult", "load_mining", "mining_report", "report_markdown"]
