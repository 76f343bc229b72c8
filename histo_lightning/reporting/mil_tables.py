"""Li et al.'s Tables 1 and 2, registered as ``mil.table1`` (Colon) and ``mil.table2`` (UCSB).

One row per method, in the paper's order: MIL Model (``mil_ilse``), Our Model (``mil_aw``), +SB, +MB,
+FMB (``mil_hnm``). "The average of five experiments with its corresponding standard error": for each
method the test metrics are averaged over the folds of each repetition (``repeat``), then reported as the
mean ± standard error over the repetitions (``SE = s / √R``, ``s`` the sample standard deviation, ddof 1;
one repetition has no SE: "–"). Columns: Accuracy, Precision, Recall, F-score, AUC, FPR (the paper's),
then the instance-level attention AUROC (ours; where instance labels exist). Jobs of either real or
synthetic Colon go into Table 1, of UCSB into Table 2 (the dataset's name heads the table).

Sweeps of several MIL experiments at once (``-m experiment=mil_ilse,mil_aw,...``) get ``mil_tables.md``
and ``.json`` after every job from :class:`MILTableCallback` (``conf/hydra/default.yaml``; a no-op for
other sweeps); or ``python -m histo_lightning.reporting.tables <sweep dir> --layout mil.table1``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from histo_lightning.reporting.hydra_callbacks import TableReportCallback
from histo_lightning.reporting.sweep import Job, read_jobs
from histo_lightning.reporting.tables import (
    group_jobs,
    markdown_table,
    register_table,
    table_result,
    write_report,
)

#: the rows of Tables 1 and 2 (task_name → the paper's name), in the paper's order
METHODS = {
    "mil_ilse": "MIL Model [Ilse et al.]",
    "mil_aw": "Our Model (softsign + AW)",
    "mil_hnm_sb": "Our Model + SB",
    "mil_hnm_mb": "Our Model + MB",
    "mil_hnm": "Our Model + FMB",
}
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
NOTE = (
    "Per method: the mean over the folds of each repetition, then mean ± standard error over the "
    "repetitions (SE = s/√R, sample s.d.; '–' with one repetition), as Li et al.'s Tables 1 and 2."
)


def is_mil(job: Job) -> bool:
    return job.config.get("task_name") in METHODS


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


def build(jobs: list[Job], table: str) -> dict[str, Any]:
    """The rows of ``table`` from the MIL jobs of its dataset (see the module docstring)."""
    chosen = [j for j in jobs if is_mil(j) and data_module(j) == TABLE_DATASETS[table]]
    settings = group_jobs(chosen, lambda c: (c.get("task_name"), int(c.get("repeat", 1))))
    by_method: dict[str, list] = defaultdict(list)
    for setting in settings:
        by_method[setting.key[0]].append(setting)
    rows, summaries = [], {}
    for method, label in METHODS.items():
        repeats = sorted(by_method.get(method, []), key=lambda s: s.key[1])
        if not repeats:
            continue
        cells = {}
        for metric in COLUMNS:
            means = [float(np.mean(v)) for s in repeats if (v := s.values(metric))]
            cells[metric] = repeat_summary(means)
        folds = "/".join(str(s.n) for s in repeats)
        summaries[method] = cells
        rows.append([label, *(_cell(cells[m]) for m in COLUMNS), f"{folds} × {len(repeats)}"])
    names = sorted({dataset_name(j) for j in chosen})
    header = ["Method", *COLUMNS.values(), "folds × repeats"]
    result = table_result(
        f"mil.{table}",
        f"{TITLES[table]}: {', '.join(names) or 'no jobs'}",
        [("", markdown_table(header, rows) if rows else "no finished job")],
        settings,
        list(COLUMNS),
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


def sweep_folders(sweep_dir: str | Path) -> list[Path]:
    """``sweep_dir`` and the folders of the same sweep under other task names.

    Hydra names a sweep folder ``<log_dir>/<task_name>/multiruns/<time>`` with the task name of the config
    it is composed from: the sweep's own (``train``, without the swept ``experiment``) and, for each job,
    the job's. The MIL experiments share one (``<log_dir>/mil/multiruns/<time>``); other sweeps may spread
    their jobs over ``mil_ilse/``, ``mil_aw/``, ... with the same ``<time>``.
    """
    sweep_dir = Path(sweep_dir)
    siblings = sorted(sweep_dir.parent.parent.parent.glob(f"*/multiruns/{sweep_dir.name}"))
    return [sweep_dir, *(s for s in siblings if s.resolve() != sweep_dir.resolve())]


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
    "METHODS",
    "MILTableCallback",
    "build",
    "sweep_folders",
    "table1",
    "table2",
    "write_tables",
]
