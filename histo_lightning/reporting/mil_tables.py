"""Li et al.'s Tables 1 and 2 from a sweep of the MIL experiments: one row per method.

Table layout (Tables 1 and 2: "the average of five experiments with its corresponding standard error"):
for each method, the test metrics are averaged over the folds of each repetition (``repeat``), then
reported as the mean ± standard error over the repetitions (``SE = s / √R``, ``s`` the sample standard
deviation, ddof 1; one repetition gives no SE: "–"). Columns: Accuracy, Precision, Recall, F-score, AUC,
FPR (the paper's), then the instance-level attention AUROC (ours; where instance labels exist). Methods in
the paper's order: MIL Model (``mil_ilse``), Our Model (``mil_aw``), +SB, +MB, +FMB (``mil_hnm``).

``python -m histo_lightning.reporting.mil_tables <sweep dir> [...]`` writes ``mil_table.md`` and
``mil_table.json`` into the (first) sweep folder holding MIL jobs (``logs/mil/multiruns/<time>``); :class:`MILTableCallback` (``conf/hydra/default.yaml``)
does so after every job of a sweep that holds MIL jobs and prints it when the sweep ends. Jobs are found
by their ``.hydra/config.yaml`` (``task_name``, ``fold``, ``repeat``, the dataset's name) and
``metrics.json``; jobs without metrics are listed as missing (running, killed or failed: ``failed.json``).

Awaits the shared table-layout registry (issue 8): until it lands, the layout is this module's function
:func:`mil_table` over the sweep's jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from histo_lightning.utils.io import write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

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
TABLE_NAMES = {"colon": "Table 1 (Colon cancer)", "ucsb": "Table 2 (UCSB breast)"}


def read_jobs(sweep_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Every MIL job (``task_name`` in :data:`METHODS`) under the sweep folders."""
    jobs = []
    for sweep in sweep_dirs:
        for job_dir in sorted(Path(sweep).iterdir()):
            config_file = job_dir / ".hydra" / "config.yaml"
            if not config_file.is_file():
                continue
            config = yaml.safe_load(config_file.read_text()) or {}
            method = config.get("task_name")
            if method not in METHODS:
                continue
            metrics_file = job_dir / "metrics.json"
            info_file = job_dir / "run_info.json"
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            failed = job_dir / "failed.json"
            jobs.append(
                {
                    "dir": str(job_dir),
                    "method": method,
                    "dataset": (info.get("data") or {}).get("dataset")
                    or str((config.get("dataset") or {}).get("_target_", "?")).rsplit(".", 1)[-1],
                    "fold": config.get("fold"),
                    "repeat": config.get("repeat", 1),
                    "metrics": json.loads(metrics_file.read_text())
                    if metrics_file.is_file()
                    else None,
                    "failed": json.loads(failed.read_text()).get("error")
                    if failed.is_file()
                    else None,
                    "synthetic": info.get("synthetic_data"),
                }
            )
    return jobs


def _dataset_family(name: str) -> str:
    return name.split("_synthetic", 1)[0].split("-", 1)[0]


def mil_table(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset, one row per method: per-repetition means over folds, then mean ± SE over them."""
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        by_dataset[job["dataset"]].append(job)
    tables = []
    for dataset, members in sorted(by_dataset.items()):
        rows = []
        for method, label in METHODS.items():
            runs = [j for j in members if j["method"] == method]
            if not runs:
                continue
            done = [j for j in runs if j["metrics"]]
            per_repeat: dict[int, list[dict]] = defaultdict(list)
            for job in done:
                per_repeat[int(job["repeat"])].append(job["metrics"])
            cells, repeat_means = {}, {}
            for key in COLUMNS:
                means = []
                for repeat, folds in sorted(per_repeat.items()):
                    values = [m[key] for m in folds if key in m and not math.isnan(m[key])]
                    if values:
                        means.append(float(np.mean(values)))
                        repeat_means.setdefault(repeat, {})[key] = means[-1]
                if means:
                    se = (
                        float(np.std(means, ddof=1) / math.sqrt(len(means)))
                        if len(means) > 1
                        else None
                    )
                    cells[key] = {"mean": float(np.mean(means)), "se": se, "repeats": len(means)}
            rows.append(
                {
                    "method": method,
                    "label": label,
                    "cells": cells,
                    "folds_per_repeat": {r: len(f) for r, f in sorted(per_repeat.items())},
                    "repeat_means": repeat_means,
                    "missing": [
                        {
                            "dir": j["dir"],
                            "fold": j["fold"],
                            "repeat": j["repeat"],
                            "error": j["failed"],
                        }
                        for j in runs
                        if not j["metrics"]
                    ],
                }
            )
        synthetic = {j["synthetic"] for j in members if j["synthetic"] is not None}
        tables.append(
            {
                "dataset": dataset,
                "title": TABLE_NAMES.get(_dataset_family(dataset), f"MIL table ({dataset})"),
                "synthetic": True in synthetic,
                "rows": rows,
            }
        )
    return {"columns": COLUMNS, "tables": tables}


def _cell(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    se = "–" if cell["se"] is None else f"{cell['se']:.3f}"
    return f"{cell['mean']:.3f} ± {se}"


def to_markdown(table: dict[str, Any]) -> str:
    parts = []
    for t in table["tables"]:
        header = ["Method", *table["columns"].values(), "folds × repeats"]
        lines = [
            f"## {t['title']}: {t['dataset']}",
            "",
            "Mean over folds per repetition, then mean ± standard error over repetitions.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        for row in t["rows"]:
            counts = row["folds_per_repeat"]
            shape = (
                "/".join(str(n) for n in counts.values()) + f" × {len(counts)}" if counts else "0"
            )
            lines.append(
                "| "
                + " | ".join(
                    [row["label"], *(_cell(row["cells"].get(k)) for k in table["columns"]), shape]
                )
                + " |"
            )
        missing = [m for row in t["rows"] for m in row["missing"]]
        if missing:
            lines += ["", f"{len(missing)} job(s) without metrics (running, killed or failed):"]
            lines += [
                f"- {Path(m['dir']).name}" + (f": {m['error']}" if m["error"] else "")
                for m in missing
            ]
        if t["synthetic"]:
            lines += ["", "_Synthetic data: these numbers say nothing about real performance._"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def sweep_folders(sweep_dir: str | Path) -> list[Path]:
    """``sweep_dir`` and the folders of the same sweep under other task names.

    Hydra names a sweep folder ``<log_dir>/<task_name>/multiruns/<time>`` with the task name of the config
    it is composed from: the sweep's own (``train``, without the swept ``experiment``) and, for each job,
    the job's. The MIL experiments share one (``<log_dir>/mil/multiruns/<time>``); older sweeps spread
    their jobs over ``mil_ilse/``, ``mil_aw/``, ... with the same ``<time>``.
    """
    sweep_dir = Path(sweep_dir)
    root = sweep_dir.parent.parent.parent
    siblings = sorted(root.glob(f"*/multiruns/{sweep_dir.name}"))
    return [sweep_dir, *(s for s in siblings if s.resolve() != sweep_dir.resolve())]


def write_table(sweep_dirs: list[str | Path]) -> tuple[Path, Path] | None:
    """Write ``mil_table.{json,md}`` into the first folder holding MIL jobs; None when none does."""
    jobs = read_jobs(sweep_dirs)
    if not jobs:
        return None
    table = mil_table(jobs)
    out = Path(jobs[0]["dir"]).parent
    return (
        write_json_atomic(out / "mil_table.json", table),
        write_text_atomic(out / "mil_table.md", to_markdown(table)),
    )


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


class MILTableCallback(Callback):
    """Keeps ``mil_table.{md,json}`` of a sweep up to date (a no-op for sweeps without MIL jobs)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        try:
            write_table(sweep_folders(config.hydra.sweep.dir))
        except Exception as err:  # a report must never fail the job it reports on
            log.warning(f"could not update the MIL table: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_table(sweep_folders(config.hydra.sweep.dir))
        if written is not None:
            log.info(f"MIL table (Li et al. layout): {written[1]}\n{written[1].read_text()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", help="Hydra multirun folder(s)")
    args = parser.parse_args(argv)
    folders = list(dict.fromkeys(f for d in args.sweep_dirs for f in sweep_folders(d)))
    written = write_table(folders)
    if written is None:
        raise SystemExit(f"no MIL job ({', '.join(METHODS)}) under {args.sweep_dirs}")
    print(written[1].read_text())


if __name__ == "__main__":
    main()


__all__ = [
    "COLUMNS",
    "METHODS",
    "MILTableCallback",
    "mil_table",
    "read_jobs",
    "sweep_folders",
    "write_table",
]
