"""Li et al.'s Tables 1 and 2, registered as ``mil.table1`` (Colon) and ``mil.table2`` (UCSB).

One row per method, in the paper's order: MIL Model (``mil_ilse``), Our Model (``mil_aw``), +SB, +MB,
+FMB (``mil_hnm``) — the experiment ↔ paper-row map is the package data beside the published numbers
(``resources/papers/li_mil.yaml``). Jobs are grouped by experiment and by every override that differs
between the table's jobs (other than ``fold``, ``repeat`` and ``experiment``): two settings of one
experiment in one sweep (``model.net.aw_factor=2,0.5``) are two rows, labelled by those overrides.
"The average of five experiments with its corresponding standard error": for each row the test metrics
are averaged over the folds of each repetition (``repeat``), then reported as the mean ± standard error
over the repetitions (``SE = s / √R``, ``s`` the sample standard deviation, ddof 1; one repetition has no
SE: "–"). Columns: Accuracy, Precision, Recall, F-score, AUC, FPR (the paper's), then the
instance-level attention AUROC (ours; where instance labels exist). Jobs of either real or synthetic
Colon go into Table 1, of UCSB into Table 2 (the dataset's name heads the table).

Precision of a fold without a positive prediction. The per-fold numbers are torchmetrics' (the test
stage's ``BagMetrics``): precision = TP / (TP + FP) is 0/0 there and torchmetrics returns 0
(``zero_division=0``), so such a fold counts as precision 0 (and F-score 0) in the fold mean; the table
says how many folds that was. Li et al. do not say how they averaged. A second table pools the folds
instead: per repetition, every fold's test bags (``predictions.csv`` of the test stage) are scored at
once with the same ``BagMetrics``, then mean ± SE over the repetitions — no fold is left without positive
predictions, and each bag weighs the same.

Hard-negative mining (the rows of ``mil_hnm*``): a third table counts, per row, the folds (jobs) whose
mining found no false-positive bag — those folds generate no bag, so SB, MB and FMB equal "Our Model"
there — and the mean number of false-positive bags, hard negatives and generated bags per fold, the
folds where a generated bag was capped at the pool of hard negatives, and what was mined
(``method.hnm.mine_on``); from each job's ``run_info.json`` (the ``mine`` and ``generate`` stages).

Sweeps of several MIL experiments at once (``-m experiment=mil_ilse,mil_aw,...``) get ``mil_tables.md``
and ``.json`` after every job from :class:`MILTableCallback` (``conf/hydra/default.yaml``; a no-op for
other sweeps); or ``python -m histo_lightning.reporting.tables <sweep dir> --layout mil.table1``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from histo_lightning.metrics.mil import BagMetrics
from histo_lightning.reporting.hydra_callbacks import TableReportCallback
from histo_lightning.reporting.papers import table_for_layout
from histo_lightning.reporting.sweep import Job, read_jobs, sweep_folders
from histo_lightning.reporting.tables import (
    Setting,
    group_jobs,
    make_cell,
    markdown_table,
    register_table,
    table_result,
    value_entry,
    write_report,
)

#: the columns: metric key → header
COLUMNS = {
    "test/acc": "Accuracy",
    "test/precision": "Precision",
    "test/recall": "Recall",
    "test/f1": "F-score",
    "test/auroc": "AUC",
    "test/fpr": "FPR",
    "test/inst_auroc": "Instance AUROC",
}
#: the data module of each table's dataset (real or synthetic twin)
TABLE_DATASETS = {"table1": "ColonDataModule", "table2": "UcsbDataModule"}
TITLES = {"table1": "Table 1 (Colon cancer)", "table2": "Table 2 (UCSB breast)"}
LAYOUTS = [f"mil.{t}" for t in TABLE_DATASETS]
#: the bag-level columns, which pooling over folds recomputes
POOLED_COLUMNS = [m for m in COLUMNS if m != "test/inst_auroc"]
#: overrides that do not make a row: the fold and repetition are averaged, the experiment is the row
NOT_SETTINGS = ("fold", "repeat", "experiment")
NOTE = (
    "Per row: the mean over the folds of each repetition, then mean ± standard error over the "
    "repetitions (SE = s/√R, sample s.d.; '–' with one repetition), as Li et al.'s Tables 1 and 2. "
    "A fold without a positive prediction has precision 0 (and F-score 0) here, torchmetrics' "
    "zero_division=0; the count is in the last column. Pooled: every fold's test bags of a repetition "
    "scored at once, then mean ± SE over repetitions."
)


@cache
def methods() -> dict[str, str]:
    """Experiment (task name) → the paper's row name, in the paper's order (the package data)."""
    paper = table_for_layout("mil.table1")
    return {str(r.ours["experiment"]): r.name for r in paper.rows if r.ours is not None}


def is_mil(job: Job) -> bool:
    return job.config.get("task_name") in methods()


def data_module(job: Job) -> str:
    return str((job.config.get("dataset") or {}).get("_target_", "")).rsplit(".", 1)[-1]


def dataset_name(job: Job) -> str:
    return str(((job.info or {}).get("data") or {}).get("dataset") or data_module(job))


def repeat_summary(per_repeat: list[float]) -> dict[str, Any] | None:
    """Mean ± SE of the per-repetition means (None when there are none)."""
    if not per_repeat:
        return None
    se = (
        float(np.std(per_repeat, ddof=1) / math.sqrt(len(per_repeat)))
        if len(per_repeat) > 1
        else None
    )
    return {"mean": float(np.mean(per_repeat)), "se": se, "repeats": len(per_repeat)}


def _cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "–"
    se = "–" if summary["se"] is None else f"{summary['se']:.3f}"
    return f"{summary['mean']:.3f} ± {se}"


def differing_overrides(jobs: list[Job]) -> list[str]:
    """The override keys (other than :data:`NOT_SETTINGS`) whose value is not the same in every job."""
    keys = sorted({k for j in jobs for k in j.overrides if k not in NOT_SETTINGS})
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def fold_predictions(job: Job) -> pd.DataFrame | None:
    """The test stage's ``predictions.csv`` (bag, label, prob, ...) of a finished job, None without."""
    stage = ((job.info or {}).get("stages") or {}).get("test") or {}
    folder = stage.get("folder") if isinstance(stage, dict) else None
    path = job.dir / folder / "predictions.csv" if folder else None
    return pd.read_csv(path) if path is not None and path.is_file() else None


def pooled_metrics(setting: Setting) -> dict[str, float] | None:
    """The bag metrics of every finished fold's test bags scored at once (None when a fold's
    predictions are missing), with the test stage's own :class:`BagMetrics` (threshold 0.5)."""
    frames = [fold_predictions(job) for _, job in setting.finished()]
    if not frames or any(f is None for f in frames):
        return None
    bags = pd.concat(frames, ignore_index=True)
    metric = BagMetrics()
    metric.update(torch.tensor(bags["prob"].to_numpy(), dtype=torch.float32), torch.tensor(bags["label"].to_numpy()))  # fmt: skip
    return {f"test/{k}": float(v) for k, v in metric.compute().items()}


def folds_without_positive_call(setting: Setting) -> int | None:
    """How many finished folds predicted no bag positive (torchmetrics: precision 0); None if unknown."""
    frames = [fold_predictions(job) for _, job in setting.finished()]
    if any(f is None for f in frames):
        return None
    return sum(1 for f in frames if not (f["prob"] > 0.5).any())


def mining_counts(jobs: list[Job]) -> dict[str, Any] | None:
    """Mining and generation counts over the finished jobs that mined (None when none did)."""
    found = []
    for job in jobs:
        stages = (job.info or {}).get("stages") or {}
        mine, generate = stages.get("mine"), stages.get("generate")
        if not isinstance(mine, dict) or not isinstance(generate, dict):
            continue
        mined, made = mine.get("metrics") or {}, generate.get("metrics") or {}
        found.append(
            (
                int(mined.get("mining/false_positive_bags", 0)),
                int(mined.get("mining/hard_negatives", 0)),
                int(made.get("generate/bags", 0)),
                int(made.get("generate/capped_bags", 0)),
                str((_hnm_settings(job.config).get("mine_on")) or "train"),
            )
        )
    if not found:
        return None
    fp, hard, bags, capped, mine_on = zip(*found)
    return {
        "folds": len(found),
        "folds_without_false_positive_bag": sum(1 for n in fp if n == 0),
        "mean_false_positive_bags": float(np.mean(fp)),
        "mean_hard_negatives": float(np.mean(hard)),
        "mean_generated_bags": float(np.mean(bags)),
        "folds_with_capped_bags": sum(1 for n in capped if n > 0),
        "mine_on": ",".join(sorted(set(mine_on))),
    }


MINING_HEADER = [
    "Method",
    "mined on",
    "folds",
    "folds with no FP bag",
    "mean FP bags",
    "mean hard negatives",
    "mean generated bags",
    "folds with capped bags",
]


def _mining_row(name: str, counts: dict[str, Any]) -> list[str]:
    return [
        name,
        counts["mine_on"],
        str(counts["folds"]),
        str(counts["folds_without_false_positive_bag"]),
        f"{counts['mean_false_positive_bags']:.2f}",
        f"{counts['mean_hard_negatives']:.1f}",
        f"{counts['mean_generated_bags']:.2f}",
        str(counts["folds_with_capped_bags"]),
    ]


def _summaries(repeats: list[Setting], per_repeat) -> dict[str, dict[str, Any] | None]:
    values = [v for s in repeats if (v := per_repeat(s)) is not None]
    return {m: repeat_summary([v[m] for v in values if m in v and not math.isnan(v[m])]) for m in COLUMNS}  # fmt: skip


def _fold_means(setting: Setting) -> dict[str, float]:
    return {m: float(np.mean(v)) for m in COLUMNS if (v := setting.values(m))}


def _values(cells: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    return {
        m: value_entry(c["mean"], c["se"], c["repeats"], "SE over repetitions")
        for m, c in cells.items()
        if c
    }


def build(jobs: list[Job], table: str) -> dict[str, Any]:
    """The rows of ``table`` from the MIL jobs of its dataset (see the module docstring)."""
    chosen = [j for j in jobs if is_mil(j) and data_module(j) == TABLE_DATASETS[table]]
    differing = differing_overrides(chosen)
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in chosen:
        label = " ".join(f"{k}={job.overrides[k]}" for k in differing if k in job.overrides)
        groups[(str(job.config.get("task_name")), label)].append(job)
    order = list(methods())
    rows, pooled_rows, mining_rows, summaries, settings, cells = [], [], [], {}, [], []
    for (method, label), members in sorted(groups.items(), key=lambda g: (order.index(g[0][0]), g[0][1])):  # fmt: skip
        repeats = sorted(
            group_jobs(members, lambda c: (int(c.get("repeat", 1)),)), key=lambda s: s.key[0]
        )
        settings += repeats
        suffix = f" ({label})" if label else ""
        name, key = methods()[method] + suffix, method + suffix
        fold_cells = _summaries(repeats, _fold_means)
        pooled_cells = _summaries(repeats, pooled_metrics)
        no_positive = [folds_without_positive_call(s) for s in repeats]
        zero = None if None in no_positive else sum(no_positive)
        runs = f"{'/'.join(str(s.n) for s in repeats)} × {len(repeats)}"
        summaries[key] = {**fold_cells, "folds_without_positive_call": zero}
        rows.append([name, *(_cell(fold_cells[m]) for m in COLUMNS), runs, "?" if zero is None else str(zero)])  # fmt: skip
        row = {"experiment": method, "setting": label}
        cells.append(make_cell(f"{name}, mean over folds", {**row, "aggregate": "folds"}, _values(fold_cells), members))  # fmt: skip
        counts = mining_counts([job for s in repeats for _, job in s.finished()])
        if counts is not None:
            summaries[key]["mining"] = counts
            mining_rows.append(_mining_row(name, counts))
        if any(pooled_cells.values()):
            summaries[key]["pooled"] = pooled_cells
            pooled_rows.append([name, *(_cell(pooled_cells[m]) for m in POOLED_COLUMNS), runs])
            cells.append(make_cell(f"{name}, pooled over folds", {**row, "aggregate": "pooled"}, _values(pooled_cells), members))  # fmt: skip
    names = sorted({dataset_name(j) for j in chosen})
    header = ["Method", *COLUMNS.values(), "folds × repeats", "folds without a positive call"]
    sections = [("", markdown_table(header, rows) if rows else "no finished job")]
    if pooled_rows:
        pooled_header = ["Method", *(COLUMNS[m] for m in POOLED_COLUMNS), "folds × repeats"]
        sections.append(("Pooled over the folds of each repetition", markdown_table(pooled_header, pooled_rows)))  # fmt: skip
    if mining_rows:
        sections.append(("Hard-negative mining per fold (a fold with no FP bag generates no bag: there the row equals Our Model)", markdown_table(MINING_HEADER, mining_rows)))  # fmt: skip
    result = table_result(
        f"mil.{table}",
        f"{TITLES[table]}: {', '.join(names) or 'no jobs'}",
        sections,
        settings,
        list(COLUMNS),
        cells,
    )
    result["rows"] = summaries
    result["note"] = NOTE
    return result


@register_table("mil", "table1")
def table1(jobs: list[Job]) -> dict[str, Any]:
    """Li et al. Table 1: Colon cancer (``dataset=colon`` or ``colon_synthetic``)."""
    return build(jobs, "table1")


@register_table("mil", "table2")
def table2(jobs: list[Job]) -> dict[str, Any]:
    """Li et al. Table 2: UCSB breast (``dataset=ucsb`` or ``ucsb_synthetic``)."""
    return build(jobs, "table2")


def write_tables(sweep_dir: str | Path) -> list[tuple[Path, Path]]:
    """``mil_tables.{md,json}`` into the folder of the sweep's MIL jobs; [] when it has none."""
    folders = [f for f in sweep_folders(sweep_dir) if f.is_dir()]
    mil_jobs = [j for j in read_jobs(folders) if is_mil(j)]
    if not mil_jobs:
        return []
    tables = [
        t for t, module in TABLE_DATASETS.items() if any(data_module(j) == module for j in mil_jobs)
    ]
    if not tables:
        return []
    return write_report(folders, [f"mil.{t}" for t in tables], out_dir=mil_jobs[0].dir.parent)


def _hnm_settings(config: Any) -> dict:
    """A job's mining settings: ``method.hnm`` (before the move to the ``method:`` node: ``hnm``)."""
    method = config.get("method") or {}
    return dict((method.get("hnm") if hasattr(method, "get") else None) or config.get("hnm") or {})


class MILTableCallback(TableReportCallback):
    """Keeps ``mil_tables.{md,json}`` of a sweep up to date (a no-op for sweeps without MIL jobs).

    Listed in ``conf/hydra/default.yaml``, not in the experiments: a sweep over experiments
    (``-m experiment=mil_ilse,mil_aw,...``) takes its callbacks from the config without them.
    """

    def __init__(self) -> None:
        super().__init__(LAYOUTS)

    def _write(self, config: DictConfig) -> list:
        return write_tables(config.hydra.sweep.dir)


__all__ = [
    "COLUMNS",
    "LAYOUTS",
    "MILTableCallback",
    "build",
    "differing_overrides",
    "methods",
    "mining_counts",
    "pooled_metrics",
    "sweep_folders",
    "table1",
    "table2",
    "write_tables",
]
