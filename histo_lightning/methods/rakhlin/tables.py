"""Rakhlin et al. (2018) sweep layouts, registered as ``rakhlin.table1`` and ``rakhlin.fig4``.

* ``rakhlin.table1`` (Table 1): 4-class accuracy (%) per (encoder, crop) model and fold, one row per
  model (ResNet-400 … Inception-650), the row ``std`` (per fold, the standard deviation over the models'
  cells; its mean column the mean of those) and **Model fusion** (``test/acc``); columns f1…f10, mean,
  std, and "mean, seed-avg p". A model's cells are what the paper computed: per fold the mean over the
  LightGBM seeds of each seed's accuracy (``test/acc_<model>@seed<k>`` in ``metrics.json``), its std the
  population s.d. over all seed × fold values (the authors' logs reproduce the printed ResNet-400 row
  this way, 4.2; the s.d. of its ten printed fold cells is 3.9) — the paper's "all our results in the
  Table 1 are slightly improved by averaging across 5 seeded models" says the cells are not of the
  seed-averaged model. The accuracy of the probabilities averaged over the seeds (``test/acc_<model>``,
  how the fusion predicts) is the extra column "mean, seed-avg p" (its mean over the folds). Runs from
  before per-seed accuracies were logged fall back to those, with the std over folds, and say so. The
  fusion row is the fused seed- and view-averaged probabilities' accuracy per fold, its std over the
  folds: the paper's 87.2 ± 2.6 is its ten printed folds' mean and population s.d. (the sample s.d. is
  2.75). Below it, the fusion against the best single model (the paper: +3.0 points over ResNet-400,
  and a fusion std of 2.6 against the models' mean std of 4.7).
* ``rakhlin.fig4`` (§3, Fig. 4): carcinoma vs non-carcinoma over the POOLED cross-validation predictions
  of all folds (each job's ``predictions.csv``), as the paper's 93.8% accuracy, AUC 0.973 and
  96.5/88.0 and 93.0/94.5 sensitivity/specificity at the setpoints 0.33 and 0.5 are over its 400 CV
  predictions — not means of per-fold AUCs; also the per-fold accuracy mean ± std (the paper's 93.8 ±
  2.3) and each model's pooled 4-class accuracy. It writes, into the sweep folder, ``roc_pooled.png``
  (Fig. 4a), ``confusion_pooled.png`` (Fig. 4b), ``predictions_pooled.csv`` and, when every fold of the
  split finished, ``submission.csv``: the unlabelled images' probabilities averaged over all folds'
  models (the authors' test-set protocol; one fold's ``submission.csv`` uses its own models only).

Jobs are grouped by everything but the fold (experiment, ``rakhlin`` settings, split, dataset, pipeline);
with several settings the files get a ``_<k>`` suffix. For the paper comparison each row is a cell with
settings ``model`` (``resnet50_400`` …, ``std``, ``fusion``) and ``split`` (the split scheme; the per-fold
columns compare only with the authors' folds, ``split=official``). ``python -m histo_lightning.reporting.tables
SWEEP_DIR --layout rakhlin.table1 --layout rakhlin.fig4`` rewrites them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histo_lightning.data.datasets.bach import CLASS_NAMES
from histo_lightning.methods.rakhlin.metrics import (
    SETPOINTS,
    binary_metrics,
    carcinoma_score,
    four_class_accuracy,
    four_class_confusion,
    is_carcinoma,
)
from histo_lightning.methods.rakhlin.report import PREDICTIONS_FILE, write_submission
from histo_lightning.reporting.plots import confusion_figure, roc_setpoints_figure, save_figure
from histo_lightning.reporting.sweep import Job
from histo_lightning.reporting.tables import (
    Setting,
    fmt_value,
    group_jobs,
    make_cell,
    markdown_table,
    register_table,
    table_result,
    value_entry,
)
from histo_lightning.utils.io import atomic_path

FUSION_ROW, STD_ROW = "Model fusion", "std"
ENCODER_LABELS = {"resnet50": "ResNet", "vgg16": "VGG", "inception": "Inception"}
UNLABELLED_FILE = "unlabelled_probabilities.csv"
PROBABILITY_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]


def model_label(model: str) -> str:
    """``resnet50_400`` → ``ResNet-400`` (Table 1's row names); other models ``<name>-<crop>``."""
    head, _, crop = model.rpartition("_")
    if not head or not crop.isdigit():
        return model
    return f"{ENCODER_LABELS.get(head, head)}-{crop}"


@dataclass
class FoldResult:
    """One finished fold: its metrics, per-image predictions and unlabelled-image probabilities."""

    fold: int
    dir: Path
    metrics: dict[str, float]
    predictions: pd.DataFrame
    unlabelled: pd.DataFrame | None


def fold_result(job: Job) -> FoldResult | None:
    """The :class:`FoldResult` of a finished job, None without a report stage's predictions."""
    report = ((job.info or {}).get("stages") or {}).get("report") or {}
    if not job.metrics or not report.get("folder"):
        return None
    folder = job.dir / report["folder"]
    if not (folder / PREDICTIONS_FILE).is_file():
        return None
    unlabelled = folder / UNLABELLED_FILE
    return FoldResult(
        fold=int(job.fold),
        dir=job.dir,
        metrics=job.metrics,
        predictions=pd.read_csv(folder / PREDICTIONS_FILE),
        unlabelled=pd.read_csv(unlabelled) if unlabelled.is_file() else None,
    )


SEED_MARK = "@seed"
SEED_AVERAGED = "mean, seed-avg p"


def models_of(folds: Sequence[FoldResult]) -> list[str]:
    """The models of the folds' ``test/acc_<model>`` metrics, in pipeline order."""
    models: list[str] = []
    for result in folds:
        for key in result.metrics:
            name = key.removeprefix("test/acc_")
            if key.startswith("test/acc_") and SEED_MARK not in key and name not in models:
                models.append(name)
    return models


def seed_accuracies(result: FoldResult, model: str) -> list[float]:
    """Each LightGBM seed's test accuracy of ``model`` in this fold (``test/acc_<model>@seed<k>``)."""
    prefix = f"test/acc_{model}{SEED_MARK}"
    seeds = sorted((int(k.removeprefix(prefix)), v) for k, v in result.metrics.items() if k.startswith(prefix))  # fmt: skip
    return [float(v) for _, v in seeds]


def model_row(folds: Sequence[FoldResult], model: str) -> dict[str, Any]:
    """One model's Table 1 row in %: per fold the mean over seeds of each seed's accuracy, ``mean`` their
    mean, ``std`` the population s.d. over all seed × fold accuracies, and ``mean, seed-avg p`` (the
    accuracy of the seed-averaged probabilities, mean over folds); without per-seed accuracies the
    seed-averaged ones with their s.d. over folds (``per_seed`` False)."""
    per_seed = [seed_accuracies(r, model) for r in folds]
    averaged = [100 * r.metrics.get(f"test/acc_{model}", math.nan) for r in folds]
    columns = [f"f{r.fold}" for r in folds]
    if all(per_seed):
        cells = [100 * float(np.mean(v)) for v in per_seed]
        spread = 100 * float(np.std([a for v in per_seed for a in v]))
        n = sum(len(v) for v in per_seed)
    else:
        cells, spread, n = averaged, float(np.std(averaged)), len(averaged)
    return {
        **dict(zip(columns, cells)),
        "mean": float(np.mean(cells)),
        "std": spread,
        SEED_AVERAGED: float(np.mean(averaged)),
        "per_seed": all(per_seed),
        "n_values": n,
    }


def table1(folds: Sequence[FoldResult]) -> dict[str, Any]:
    """Table 1's rows: ``{label: {f1…fK, mean, std, mean seed-avg p}}`` in % (see the module docstring)."""
    folds = sorted(folds, key=lambda r: r.fold)
    models = models_of(folds)
    columns = [f"f{r.fold}" for r in folds]
    rows = {model_label(m): model_row(folds, m) for m in models}
    singles = list(rows.values())
    if len(models) > 1:
        spread = [float(np.std([row[c] for row in singles])) for c in columns]
        rows[STD_ROW] = {
            **dict(zip(columns, spread)),
            "mean": float(np.mean(spread)),
            "std": math.nan,
            SEED_AVERAGED: math.nan,
        }
    fusion = [100 * r.metrics["test/acc"] for r in folds]
    rows[FUSION_ROW] = {
        **dict(zip(columns, fusion)),
        "mean": float(np.mean(fusion)),
        "std": float(np.std(fusion)),
        SEED_AVERAGED: float(np.mean(fusion)),
        "n_values": len(fusion),
    }
    return {
        "columns": [*columns, "mean", "std", SEED_AVERAGED],
        "rows": rows,
        "models": models,
        "per_seed": bool(singles) and all(row["per_seed"] for row in singles),
    }


def table1_markdown(table: dict[str, Any]) -> str:
    rows = [
        [f"**{name}**" if name == FUSION_ROW else name]
        + [fmt_value(values.get(c, math.nan), digits=1) for c in table["columns"]]
        for name, values in table["rows"].items()
    ]
    how = (
        "Model rows: per fold the mean over seeds of each seed's accuracy; std over all seed × fold "
        "accuracies (as the paper). "
        if table["per_seed"]
        else "Model rows: these runs logged no per-seed accuracies: the seed-averaged model's "
        "accuracy, std over folds (not the paper's reading). "
    )
    note = (
        how + f"'{SEED_AVERAGED}': the accuracy of the probabilities averaged over the seeds, mean "
        "over folds. Fusion: the fused seed-averaged probabilities, std over folds."
    )
    return markdown_table(["", *table["columns"]], rows) + "\n\n" + note


def fusion_comparison(table: dict[str, Any]) -> str:
    """One line: the fusion against the best single model, and the stds (§3's claims)."""
    rows = table["rows"]
    fusion = rows[FUSION_ROW]
    singles = {k: v for k, v in rows.items() if k not in (FUSION_ROW, STD_ROW)}
    if not singles:
        return ""
    best = max(singles, key=lambda k: singles[k]["mean"])
    mean_std = float(np.mean([v["std"] for v in singles.values()]))
    return (
        f"Fusion {fusion['mean']:.1f} ± {fusion['std']:.1f} vs the best single model {best} "
        f"{singles[best]['mean']:.1f} ± {singles[best]['std']:.1f} "
        f"({fusion['mean'] - singles[best]['mean']:+.1f} points; the paper: +3.0 over ResNet-400); "
        f"fusion std {fusion['std']:.1f} vs the models' mean std {mean_std:.1f} (the paper: 2.6 vs 4.7)."
    )


def pooled_frame(folds: Sequence[FoldResult]) -> pd.DataFrame:
    """Every fold's per-image predictions, with a ``fold`` column, in fold order."""
    ordered = sorted(folds, key=lambda r: r.fold)
    return pd.concat([r.predictions.assign(fold=r.fold) for r in ordered], ignore_index=True)


def _labels_and_probs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    labels = frame["label"].map({n: i for i, n in enumerate(CLASS_NAMES)}).to_numpy()
    return labels, frame[PROBABILITY_COLUMNS].to_numpy()


def pooled_metrics(
    folds: Sequence[FoldResult], setpoints: Sequence[float] = SETPOINTS, rule: str = "max"
) -> dict[str, Any]:
    """The 2-class numbers over the pooled predictions (``pooled/acc``, ``pooled/auc``,
    ``pooled/sensitivity@s`` ...), the pooled 4-class accuracy fused and per model, and the per-fold
    2-class accuracy mean ± std."""
    frame = pooled_frame(folds)
    labels, fused = _labels_and_probs(frame)
    out: dict[str, Any] = {"n_images": len(frame), "n_folds": len(folds)}
    out.update(
        {f"pooled/{k}": v for k, v in binary_metrics(labels, fused, setpoints, rule).items()}
    )
    out["pooled/acc4"] = four_class_accuracy(labels, fused)
    for model in models_of(folds):
        column = f"predicted/{model}"
        if column in frame:
            out[f"pooled/acc4_{model}"] = float((frame[column] == frame["label"]).mean())
    per_fold = [r.metrics.get("test/acc2", math.nan) for r in folds]
    out["folds/acc2_mean"], out["folds/acc2_std"] = (
        float(np.mean(per_fold)),
        float(np.std(per_fold)),
    )
    return out


def pooled_markdown(pooled: dict[str, Any], setpoints: Sequence[float]) -> str:
    operating = " · ".join(
        f"@{s:g}: sensitivity {100 * pooled[f'pooled/sensitivity@{s:g}']:.1f}%, "
        f"specificity {100 * pooled[f'pooled/specificity@{s:g}']:.1f}%"
        for s in setpoints
    )
    models = ", ".join(
        f"{model_label(k.removeprefix('pooled/acc4_'))} {100 * v:.1f}%"
        for k, v in pooled.items()
        if k.startswith("pooled/acc4_")
    )
    return (
        f"Carcinoma vs non-carcinoma over the {pooled['n_images']} pooled cross-validation predictions "
        f"of {pooled['n_folds']} folds: accuracy {100 * pooled['pooled/acc']:.1f}%, AUC "
        f"{pooled['pooled/auc']:.3f}; {operating}. Per-fold accuracy "
        f"{100 * pooled['folds/acc2_mean']:.1f} ± {100 * pooled['folds/acc2_std']:.1f}%. "
        f"(The paper: 93.8 ± 2.3%, AUC 0.973, 96.5/88.0 at 0.33, 93.0/94.5 at 0.5.)\n\n"
        f"4 classes, pooled: fusion {100 * pooled['pooled/acc4']:.1f}%"
        + (f"; {models}" if models else "")
    )


def averaged_submission(folds: Sequence[FoldResult]) -> pd.DataFrame | None:
    """The unlabelled images' fused probabilities averaged over every fold's models, or None when a
    fold predicted no unlabelled image."""
    frames = [r.unlabelled for r in folds if r.unlabelled is not None]
    if not frames or len(frames) != len(folds):
        return None
    images = frames[0]["image"].tolist()
    if any(f["image"].tolist() != images for f in frames):
        raise ValueError("the folds predicted different unlabelled images")
    mean = np.mean([f[PROBABILITY_COLUMNS].to_numpy() for f in frames], axis=0)
    return pd.DataFrame({"image": images, **dict(zip(PROBABILITY_COLUMNS, mean.T))})


# ---- the registered layouts ------------------------------------------------------------------------------
def method_settings(config: dict) -> dict | None:
    """A job's Rakhlin settings: ``method:`` (``name: rakhlin``), or the top-level ``rakhlin:`` of sweeps
    run before the one-``method:``-node convention."""
    method = config.get("method")
    if isinstance(method, dict) and method.get("name") == "rakhlin":
        return method
    old = config.get("rakhlin")
    return old if isinstance(old, dict) else None


def is_rakhlin(config: dict) -> bool:
    return method_settings(config) is not None


def _setting_key(config: dict) -> tuple:
    """Everything but the fold: experiment, the method's settings, split, dataset, pipeline."""
    keys = ("task_name", "method", "rakhlin", "split", "dataset", "pipeline")
    return tuple(json.dumps(config.get(k), sort_keys=True, default=str) for k in keys)


def _settings(jobs: list[Job]) -> list[tuple[str, Setting, list[FoldResult]]]:
    """``(label, setting, finished folds)`` per setting; labels name the overrides that differ."""
    settings = group_jobs([j for j in jobs if is_rakhlin(j.config)], _setting_key)
    overrides = [next(iter(s.folds.values())).overrides for s in settings]
    common = {k: v for k, v in (overrides[0] if overrides else {}).items() if all(o.get(k) == v for o in overrides)}  # fmt: skip
    out = []
    for k, (setting, own) in enumerate(zip(settings, overrides)):
        folds = [r for _, j in setting.finished() if (r := fold_result(j)) is not None]
        if not folds:
            continue
        task = next(iter(setting.folds.values())).config.get("task_name", "rakhlin")
        differing = " ".join(f"{key}={v}" for key, v in own.items() if key not in common)
        suffix = f" (setting {k + 1})" if len(settings) > 1 else ""
        out.append((f"{task}{suffix}" + (f": {differing}" if differing else ""), setting, folds))
    return out


def _split_scheme(setting: Setting) -> str | None:
    split = next(iter(setting.folds.values())).config.get("split") or {}
    return split.get("scheme")


def table1_cells(label: str, setting: Setting, table: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 1's rows as paper-comparison cells (fractions; the paper's % is its data's scale)."""
    keys = {name: model for model in table["models"] if (name := model_label(model))}
    keys |= {STD_ROW: "std", FUSION_ROW: "fusion"}
    jobs = [setting.folds[r] for r in setting.folds if setting.folds[r].metrics]
    cells = []
    for name, values in table["rows"].items():
        n = values.get("n_values")
        entries = {c: value_entry(values[c] / 100) for c in table["columns"] if c.startswith("f")}
        kind = "s.d. over seed × fold accuracies" if values.get("per_seed") else "s.d. over folds"
        entries["mean"] = value_entry(values["mean"] / 100, values["std"] / 100, n, kind)
        entries["std"] = value_entry(values["std"] / 100)
        entries["seed_averaged"] = value_entry(values[SEED_AVERAGED] / 100)
        row = {"model": keys[name], "split": _split_scheme(setting)}
        cells.append(make_cell(f"{label}: {name}", row, entries, jobs))
    return cells


@register_table("rakhlin", "table1")
def layout_table1(jobs: list[Job]) -> dict[str, Any]:
    sections, rows_json, settings, cells = [], [], [], []
    for label, setting, folds in _settings(jobs):
        table = table1(folds)
        sections.append((label, table1_markdown(table) + "\n\n" + fusion_comparison(table)))
        rows_json.append({"setting": label, **table})
        settings.append(setting)
        cells += table1_cells(label, setting, table)
    title = "Table 1: 4-class accuracy (%) per model and fold, and the fusion"
    metrics = ["test/acc", "test/acc2", "test/auc2"]
    result = table_result("rakhlin.table1", title, sections, settings, metrics, cells)
    return {**result, "rows": rows_json}


@register_table("rakhlin", "fig4")
def layout_fig4(jobs: list[Job]) -> dict[str, Any]:
    found = _settings(jobs)
    sections, rows_json, settings, cells = [], [], [], []
    for k, (label, setting, folds) in enumerate(found):
        config = next(iter(setting.folds.values())).config
        own = method_settings(config) or {}
        setpoints = [float(s) for s in own.get("setpoints", SETPOINTS)]
        rule = str(own.get("carcinoma_rule", "max"))
        pooled = pooled_metrics(folds, setpoints, rule)
        files = write_pooled_files(
            jobs[0].dir.parent,
            folds,
            setpoints,
            rule,
            suffix="" if len(found) == 1 else f"_{k + 1}",
            n_folds=int((config.get("split") or {}).get("n_folds", 0)),
            synthetic=any(j.synthetic for j in setting.folds.values()),
        )
        listed = ", ".join(f"`{f}`" for f in files)
        sections.append((label, pooled_markdown(pooled, setpoints) + f"\n\nWritten: {listed}"))
        rows_json.append({"setting": label, "pooled": pooled, "files": files})
        settings.append(setting)
        values = {
            k: value_entry(v, n=len(folds)) for k, v in pooled.items() if k.startswith("pooled/")
        }
        values["folds/acc2"] = value_entry(
            pooled["folds/acc2_mean"], pooled["folds/acc2_std"], len(folds), "s.d. over folds"
        )
        row = {"model": "fusion", "split": _split_scheme(setting)}
        jobs_of = [j for j in setting.folds.values() if j.metrics]
        cells.append(make_cell(label, row, values, jobs_of))
    title = "Fig. 4 and §3: carcinoma vs non-carcinoma, pooled over the folds"
    metrics = ["test/acc2", "test/auc2"]
    result = table_result("rakhlin.fig4", title, sections, settings, metrics, cells)
    return {**result, "rows": rows_json}


def write_pooled_files(
    out_dir: Path,
    folds: Sequence[FoldResult],
    setpoints: Sequence[float],
    rule: str,
    suffix: str = "",
    n_folds: int = 0,
    synthetic: bool = False,
) -> list[str]:
    """Fig. 4a/4b of the pooled predictions, the pooled predictions, and the averaged submission."""
    frame = pooled_frame(folds)
    labels, fused = _labels_and_probs(frame)
    title = f"{len(folds)} folds pooled" + (", SYNTHETIC data" if synthetic else "")
    roc = roc_setpoints_figure(
        is_carcinoma(labels),
        carcinoma_score(fused, rule),
        setpoints,
        title=f"Carcinoma vs non-carcinoma — {title}",
        positive_name="carcinoma",
    )
    names = [f"roc_pooled{suffix}.png", f"confusion_pooled{suffix}.png"]
    save_figure(roc, out_dir / names[0])
    confusion = four_class_confusion(labels, fused)
    save_figure(
        confusion_figure(confusion, CLASS_NAMES, f"4 classes — {title}"), out_dir / names[1]
    )
    names.append(f"predictions_pooled{suffix}.csv")
    with atomic_path(out_dir / names[-1]) as tmp:
        frame.to_csv(tmp, index=False)
    complete = sorted(r.fold for r in folds) == list(range(1, n_folds + 1))
    submission = averaged_submission(folds) if complete else None
    if submission is not None:
        names.append(f"submission{suffix}.csv")
        probs = submission[PROBABILITY_COLUMNS].to_numpy()
        write_submission(out_dir / names[-1], submission["image"].tolist(), probs)
    return names


__all__ = [
    "SEED_AVERAGED",
    "FoldResult",
    "averaged_submission",
    "fold_result",
    "model_label",
    "model_row",
    "pooled_metrics",
    "seed_accuracies",
    "table1",
    "write_pooled_files",
]
