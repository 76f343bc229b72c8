"""BACH reports (Rakhlin et al. §3): Fig. 4a (ROC with setpoints), Fig. 4b (confusion matrix), the
per-image predictions, and the submission CSV of the unlabelled test images; and the summary of a
cross-validation sweep: Table 1's layout (4-class accuracy per model and fold, the fusion), the 2-class
numbers and Fig. 4 over the POOLED predictions of all folds (as the paper's), and a submission averaged
over every fold's models. Every file is written atomically.

``python -m histo_lightning.reporting.bach <sweep dir>`` (re)writes a sweep's summary; the ``rakhlin``
experiments register :class:`RakhlinSummaryCallback` so a multirun writes it after every job.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from histo_lightning.data.bach import CLASS_NAMES
from histo_lightning.metrics.bach import (
    SETPOINTS,
    bach_metrics,
    binary_metrics,
    carcinoma_score,
    four_class_accuracy,
    four_class_confusion,
    is_carcinoma,
)
from histo_lightning.reporting.plots import confusion_figure, roc_setpoints_figure, save_figure
from histo_lightning.utils.io import atomic_path, write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

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
    """The metrics of :func:`~histo_lightning.metrics.bach.bach_metrics`, and in ``out_dir``:
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
    "TABLE1_NAME",
    "FoldResult",
    "RakhlinSummaryCallback",
    "averaged_submission",
    "fold_result",
    "model_label",
    "pooled_metrics",
    "predictions_table",
    "probabilities_table",
    "table1",
    "write_probabilities",
    "write_report",
    "write_submission",
    "write_sweep_summary",
]


# ---- the cross-validation summary of a sweep (Table 1, pooled Fig. 4) -------------------------------------
#
# Table 1's layout is a function over a sweep's jobs here; it moves into the shared registry of paper-table
# layouts (issue 8) once that lands.

TABLE1_NAME = "rakhlin_table1"
FUSION_ROW, STD_ROW = "Model fusion", "std"
ENCODER_LABELS = {"resnet50": "ResNet", "vgg16": "VGG", "inception": "Inception"}


def model_label(model: str) -> str:
    """``resnet50_400`` → ``ResNet-400`` (Table 1's row names); other models ``<name>-<crop>``."""
    head, _, crop = model.rpartition("_")
    if not head or not crop.isdigit():
        return model
    return f"{ENCODER_LABELS.get(head, head)}-{crop}"


@dataclass
class FoldResult:
    """One finished fold of a sweep: its metrics and its per-image predictions."""

    fold: int
    dir: Path
    metrics: dict[str, float]
    predictions: pd.DataFrame
    unlabelled: pd.DataFrame | None


def _report_folder(job_dir: Path) -> Path | None:
    info_file = job_dir / "run_info.json"
    if not info_file.is_file():
        return None
    stages = json.loads(info_file.read_text()).get("stages") or {}
    report = stages.get("report")
    return job_dir / report["folder"] if report and report.get("folder") else None


def fold_result(job: Any) -> FoldResult | None:
    """The :class:`FoldResult` of a finished job (``tables.Job``), None if it has no report yet."""
    folder = _report_folder(job.dir)
    if not job.metrics or folder is None or not (folder / PREDICTIONS_FILE).is_file():
        return None
    unlabelled = folder / "unlabelled_probabilities.csv"
    return FoldResult(
        fold=int(job.fold),
        dir=job.dir,
        metrics=job.metrics,
        predictions=pd.read_csv(folder / PREDICTIONS_FILE),
        unlabelled=pd.read_csv(unlabelled) if unlabelled.is_file() else None,
    )


def _models(folds: Sequence[FoldResult]) -> list[str]:
    models: list[str] = []
    for result in folds:
        for key in result.metrics:
            if key.startswith("test/acc_") and key[len("test/acc_") :] not in models:
                models.append(key[len("test/acc_") :])
    return models


def table1(folds: Sequence[FoldResult]) -> dict[str, Any]:
    """Table 1's layout: 4-class accuracy (%) per model and fold, the per-fold std over the models, the
    fusion; mean and (population) std over folds per row, as the paper's table (its fusion row: 87.2 ±
    2.6 from its ten folds)."""
    folds = sorted(folds, key=lambda r: r.fold)
    models = _models(folds)
    columns = [f"f{r.fold}" for r in folds]

    def row(values: list[float]) -> dict[str, float]:
        out = dict(zip(columns, values))
        out["mean"] = float(np.mean(values)) if values else math.nan
        out["std"] = float(np.std(values)) if values else math.nan
        return out

    rows: dict[str, dict[str, float]] = {}
    for model in models:
        rows[model_label(model)] = row(
            [100 * r.metrics.get(f"test/acc_{model}", math.nan) for r in folds]
        )
    if len(models) > 1:
        per_fold_std = [
            float(np.std([100 * r.metrics[f"test/acc_{m}"] for m in models])) for r in folds
        ]
        rows[STD_ROW] = {
            **dict(zip(columns, per_fold_std)),
            "mean": float(np.mean(per_fold_std)),
            "std": math.nan,
        }
    rows[FUSION_ROW] = row([100 * r.metrics["test/acc"] for r in folds])
    return {"columns": [*columns, "mean", "std"], "rows": rows, "models": models}


def pooled_metrics(
    folds: Sequence[FoldResult], setpoints: Sequence[float] = SETPOINTS, rule: str = "max"
) -> dict[str, Any]:
    """§3's 2-class numbers over the POOLED cross-validation predictions of all folds (the paper's
    accuracy 93.8, AUC 0.973, sensitivity/specificity at 0.33 and 0.5 are over its 400 predictions), the
    pooled 4-class accuracy per model and fused, and the per-fold 2-class accuracy mean ± std."""
    frame = pd.concat([r.predictions for r in folds], ignore_index=True)
    labels = frame["label"].map({n: i for i, n in enumerate(CLASS_NAMES)}).to_numpy()
    fused = frame[[f"p_{n}" for n in CLASS_NAMES]].to_numpy()
    out: dict[str, Any] = {"n_images": len(frame), "n_folds": len(folds)}
    out.update(
        {f"pooled/{k}": v for k, v in binary_metrics(labels, fused, setpoints, rule).items()}
    )
    out["pooled/acc4"] = four_class_accuracy(labels, fused)
    for model in _models(folds):
        column = f"predicted/{model}"
        if column in frame:
            out[f"pooled/acc4_{model}"] = float((frame[column] == frame["label"]).mean())
    per_fold = [r.metrics.get("test/acc2", math.nan) for r in folds]
    out["folds/acc2_mean"] = float(np.mean(per_fold))
    out["folds/acc2_std"] = float(np.std(per_fold))
    return out


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table1_markdown(table: dict[str, Any]) -> str:
    header = ["", *table["columns"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, values in table["rows"].items():
        cells = [_fmt(values.get(c, math.nan)) for c in table["columns"]]
        label = f"**{name}**" if name == FUSION_ROW else name
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def summary_markdown(
    table: dict[str, Any], pooled: dict[str, Any], setpoints: Sequence[float], title: str
) -> str:
    rows = table["rows"]
    fusion = rows[FUSION_ROW]
    singles = {k: v for k, v in rows.items() if k not in (FUSION_ROW, STD_ROW)}
    parts = [f"## {title}", "4-class accuracy (%) per fold (Table 1's layout; std = population):"]
    parts.append(table1_markdown(table))
    if singles:
        best = max(singles, key=lambda k: singles[k]["mean"])
        mean_std = float(np.mean([v["std"] for v in singles.values()]))
        parts.append(
            f"Fusion {fusion['mean']:.1f} ± {fusion['std']:.1f} vs the best single model {best} "
            f"{singles[best]['mean']:.1f} ± {singles[best]['std']:.1f} "
            f"({fusion['mean'] - singles[best]['mean']:+.1f} points; the paper: +3.0 over ResNet-400); "
            f"fusion std {fusion['std']:.1f} vs the models' mean std {mean_std:.1f} (paper 2.6 vs 4.7)."
        )
    sp = " · ".join(
        f"@{s:g}: sensitivity {100 * pooled[f'pooled/sensitivity@{s:g}']:.1f}%, "
        f"specificity {100 * pooled[f'pooled/specificity@{s:g}']:.1f}%"
        for s in setpoints
    )
    parts.append(
        f"2-class (carcinoma vs non-carcinoma), pooled over the {pooled['n_images']} cross-validation "
        f"predictions of {pooled['n_folds']} folds: accuracy {100 * pooled['pooled/acc']:.1f}%, "
        f"AUC {pooled['pooled/auc']:.3f}; {sp}. Per-fold accuracy "
        f"{100 * pooled['folds/acc2_mean']:.1f} ± {100 * pooled['folds/acc2_std']:.1f}% "
        "(the paper: 93.8 ± 2.3%, AUC 0.973, 96.5/88.0 at 0.33, 93.0/94.5 at 0.5)."
    )
    return "\n\n".join(parts)


def averaged_submission(folds: Sequence[FoldResult]) -> pd.DataFrame | None:
    """The unlabelled images' fused probabilities averaged over every fold's models (the authors'
    submission used all their CV models), or None when the folds predicted no unlabelled image."""
    frames = [r.unlabelled for r in folds if r.unlabelled is not None]
    if len(frames) != len(folds) or not frames:
        return None
    columns = [f"p_{n}" for n in CLASS_NAMES]
    images = frames[0]["image"].tolist()
    if any(f["image"].tolist() != images for f in frames):
        raise ValueError("the folds predicted different unlabelled images")
    mean = np.mean([f[columns].to_numpy() for f in frames], axis=0)
    return pd.DataFrame({"image": images, **{c: mean[:, i] for i, c in enumerate(columns)}})


def _setting_key(config: dict) -> tuple:
    """What makes two jobs of a sweep the same setting (everything but the fold)."""
    keys = ("task_name", "rakhlin", "split", "dataset", "pipeline")
    return tuple(json.dumps(config.get(k), sort_keys=True, default=str) for k in keys)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in (yaml.safe_load(path.read_text()) or []) if not str(o).startswith("fold=")]


def write_sweep_summary(sweep_dir: str | Path) -> Path | None:
    """Write ``rakhlin_table1.{md,json}`` into ``sweep_dir`` and, per setting, the pooled ROC
    (``roc_pooled*.png``), confusion (``confusion_pooled*.png``), ``predictions_pooled*.csv`` and, when the
    setting's folds are complete, ``submission*.csv`` averaged over all folds' models. None if no job of
    the sweep has finished its report."""
    from histo_lightning.reporting.tables import group_jobs, read_jobs

    sweep_dir = Path(sweep_dir)
    jobs = [j for j in read_jobs([sweep_dir]) if j.config.get("rakhlin")]
    settings = group_jobs(jobs, _setting_key)
    overrides_of = [_overrides(next(iter(s.folds.values())).dir) for s in settings]
    common = [
        o for o in (overrides_of[0] if overrides_of else []) if all(o in x for x in overrides_of)
    ]
    parts, records = [], []
    for k, setting in enumerate(settings):
        folds = [r for j in setting.folds.values() if (r := fold_result(j)) is not None]
        if not folds:
            continue
        config = next(iter(setting.folds.values())).config
        rakhlin = config["rakhlin"]
        setpoints = [float(s) for s in rakhlin.get("setpoints", SETPOINTS)]
        rule = str(rakhlin.get("carcinoma_rule", "max"))
        suffix = "" if len(settings) == 1 else f"_{k + 1}"
        overrides = " ".join(o for o in overrides_of[k] if o not in common)
        synthetic = any(j.synthetic for j in setting.folds.values())
        title = f"{config.get('task_name')}{suffix}" + (f": {overrides}" if overrides else "")
        title += " — SYNTHETIC data" if synthetic else ""
        table = table1(folds)
        pooled = pooled_metrics(folds, setpoints, rule)
        frame = pd.concat(
            [r.predictions.assign(fold=r.fold) for r in sorted(folds, key=lambda r: r.fold)],
            ignore_index=True,
        )
        labels = frame["label"].map({n: i for i, n in enumerate(CLASS_NAMES)}).to_numpy()
        fused = frame[[f"p_{n}" for n in CLASS_NAMES]].to_numpy()
        pooled_title = f"{len(folds)} folds pooled" + (", SYNTHETIC" if synthetic else "")
        save_figure(
            roc_setpoints_figure(
                is_carcinoma(labels),
                carcinoma_score(fused, rule),
                setpoints,
                title=f"Carcinoma vs non-carcinoma — {pooled_title}",
                positive_name="carcinoma",
            ),
            sweep_dir / f"roc_pooled{suffix}.png",
        )
        save_figure(
            confusion_figure(
                four_class_confusion(labels, fused),
                CLASS_NAMES,
                title=f"4 classes — {pooled_title}",
            ),
            sweep_dir / f"confusion_pooled{suffix}.png",
        )
        _to_csv(frame, sweep_dir / f"predictions_pooled{suffix}.csv")
        n_folds = int((config.get("split") or {}).get("n_folds", 0))
        complete = sorted(r.fold for r in folds) == list(range(1, n_folds + 1))
        submission = averaged_submission(folds) if complete else None
        if submission is not None:
            write_submission(
                sweep_dir / f"submission{suffix}.csv",
                submission["image"].tolist(),
                submission[[f"p_{n}" for n in CLASS_NAMES]].to_numpy(),
            )
        missing = [j.dir.name for j in setting.folds.values() if fold_result(j) is None]
        text = summary_markdown(table, pooled, setpoints, title)
        if missing:
            text += f"\n\nNot included (no report: failed or still running): {', '.join(missing)}"
        parts.append(text)
        records.append(
            {
                "title": title,
                "overrides": overrides,
                "synthetic": synthetic,
                "folds": sorted(r.fold for r in folds),
                "missing": missing,
                "table1": table,
                "pooled": pooled,
                "submission_averaged_over_folds": submission is not None,
            }
        )
    if not records:
        return None
    header = f"# Rakhlin et al. (2018), cross-validation summary\n\n`{sweep_dir}`"
    header += f"\n\nShared overrides: `{' '.join(common) or '(none)'}`"
    if any(r["synthetic"] for r in records):
        header += (
            "\n\n**Synthetic data** generated by histo-lightning (and, in the demo, random encoder "
            "weights): these numbers check the pipeline, not the method."
        )
    write_json_atomic(
        sweep_dir / f"{TABLE1_NAME}.json", {"sweep_dir": str(sweep_dir), "settings": records}
    )
    return write_text_atomic(sweep_dir / f"{TABLE1_NAME}.md", "\n\n".join([header, *parts]) + "\n")


class RakhlinSummaryCallback(Callback):
    """Hydra callback: keep the sweep's Table 1 / pooled Fig. 4 summary up to date (after each job and
    at the end, when it is also logged)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            write_sweep_summary(config.hydra.sweep.dir)
        except Exception as err:  # a report must never fail the job it reports on
            log.warning(f"could not update the Rakhlin summary: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_sweep_summary(config.hydra.sweep.dir)
        if written is not None:
            log.info(f"Rakhlin et al. summary: {written}\n{written.read_text()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Table 1 and pooled Fig. 4 of a rakhlin sweep")
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder (logs/rakhlin*/multiruns/<time>)"
    )
    args = parser.parse_args(argv)
    written = write_sweep_summary(args.sweep_dir) if args.sweep_dir.is_dir() else None
    if written is None:
        parser.exit(2, f"error: {args.sweep_dir} holds no finished rakhlin job (<n>_fold<k>/)\n")
    print(written.read_text())


if __name__ == "__main__":
    main()
