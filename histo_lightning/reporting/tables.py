"""Sweep results laid out like the papers' tables: one registry of table layouts, one way to render them.

``python -m histo_lightning.reporting.tables SWEEP_DIR [SWEEP_DIR ...] --layout smse.table3 [--layout ...]``
reads every job of one or more Hydra multiruns (:mod:`histo_lightning.reporting.sweep`), describes each job
by the settings the layout compares (read from the job's composed config, so jobs of different experiments
and sweeps can be combined), averages each setting over its folds and writes ``<method>_tables.md`` and
``<method>_tables.json`` (into the first sweep folder, or ``--out``). Experiments write them after every
job of a sweep through :class:`~histo_lightning.reporting.hydra_callbacks.TableReportCallback`.

Each method registers its layouts (:func:`register_table`) in its package's ``tables`` module
(``histo_lightning/methods/<name>/tables.py``, found by :func:`table_modules`); a layout is named
``<method>.<table>``:

* :mod:`histo_lightning.methods.smse.tables`: ``smse.table3`` … ``smse.table7``, ``smse.table10``
  (Sun et al., SMSE Tables III–VII and X);
* :mod:`histo_lightning.methods.chsnet.tables`: ``chsnet.table2`` … ``chsnet.table4`` (Ma et al.,
  CHS-Net Tables 2–4);
* :mod:`histo_lightning.methods.li_mil.tables`: ``mil.table1``, ``mil.table2`` (Li et al., Tables 1–2).
* :mod:`histo_lightning.methods.rakhlin.tables`: ``rakhlin.table1``, ``rakhlin.fig4`` (Rakhlin et al.,
  Table 1 and the pooled 2-class numbers of §3 / Fig. 4).

A new method adds ``methods/<name>/tables.py`` with its ``@register_table("<method>", "<table>")``
builders (each takes the list of :class:`~histo_lightning.reporting.sweep.Job` and returns
:func:`table_result`); nothing else lists it. A builder also returns its rows as ``cells`` (:func:`make_cell`: our settings
in the paper's terms, our values by key), which :mod:`histo_lightning.reporting.compare` puts beside the
paper's published numbers (package data, :mod:`histo_lightning.reporting.papers`); every
``<method>_tables.md`` shows that comparison under each table. Failed jobs (``failed.json``) and missing ones (running or killed) are listed
under each table, never averaged. ± is the population standard deviation over folds (ddof = 0), which
reproduces the papers' tables.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histo_lightning.reporting.sweep import FINISHED, Job, read_jobs, synthetic_data
from histo_lightning.utils.io import write_json_atomic, write_text_atomic


def table_modules() -> list[str]:
    """The modules whose import registers each method's layouts: every ``methods/<name>/tables.py``."""
    from histo_lightning.methods import method_modules

    return method_modules("tables")


TableBuilder = Callable[[list[Job]], dict[str, Any]]


@dataclass(frozen=True)
class TableLayout:
    """A registered table: its method (``smse``), name (``smse.table3``) and builder."""

    method: str
    name: str
    build: TableBuilder


_REGISTRY: dict[str, TableLayout] = {}


def register_table(method: str, table: str) -> Callable[[TableBuilder], TableBuilder]:
    """Decorator registering ``build(jobs)`` as layout ``<method>.<table>``."""

    def register(build: TableBuilder) -> TableBuilder:
        name = f"{method}.{table}"
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"table layout {name} is registered twice")
        _REGISTRY[name] = TableLayout(method, name, build)
        return build

    return register


def layouts() -> dict[str, TableLayout]:
    """Every registered layout by name (importing the method modules registers them)."""
    for module in table_modules():
        importlib.import_module(module)
    return dict(_REGISTRY)


def check_layouts(names: Sequence[str]) -> list[TableLayout]:
    """The layouts named, or a ``ValueError`` naming the unknown ones and the choices."""
    known = layouts()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown table layout(s) {unknown}; choose from {', '.join(sorted(known))}"
        )
    return [known[n] for n in names]


# ---- grouping and averaging --------------------------------------------------------------------------------
def _fold_order(item: tuple[int | None, Job]) -> tuple[bool, int]:
    return item[0] is None, item[0] or 0


@dataclass
class Setting:
    """The folds of one setting (one table row)."""

    key: tuple
    folds: dict[int | None, Job]

    def finished(self) -> list[tuple[int | None, Job]]:
        """``(fold, job)`` of the finished folds, in fold order."""
        return sorted(((f, j) for f, j in self.folds.items() if j.metrics), key=_fold_order)

    def values(self, metric: str) -> list[float]:
        return [float(j.metrics[metric]) for _, j in self.finished() if metric in j.metrics]

    def mean_std(self, metric: str) -> tuple[float, float]:
        v = self.values(metric)
        if not v:
            return math.nan, math.nan
        return float(np.mean(v)), float(np.std(v))

    @property
    def n(self) -> int:
        return len(self.finished())

    @property
    def unfinished(self) -> list[Job]:
        return [j for j in self.folds.values() if j.status != FINISHED]


def group_jobs(jobs: list[Job], describe: Callable[[dict], tuple]) -> list[Setting]:
    """Jobs grouped by ``describe(config)``; a fold run twice keeps the newest finished job."""
    groups: dict[tuple, dict[int | None, Job]] = defaultdict(dict)
    for job in jobs:
        key = describe(job.config)
        current = groups[key].get(job.fold)
        newer = current is None or (
            (job.metrics is not None, job.dir.stat().st_mtime)
            > (current.metrics is not None, current.dir.stat().st_mtime)
        )
        if newer:
            groups[key][job.fold] = job
    return [Setting(k, v) for k, v in groups.items()]


def sort_key(value: Any) -> tuple:
    """Sorts numbers numerically, then anything else by its text; None last."""
    return (value is None, value if isinstance(value, (int, float)) else str(value))


# ---- rendering ---------------------------------------------------------------------------------------------
def fmt_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f}±{std * scale:.{digits}f}"


def fmt_value(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value) * scale:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def unfinished_json(jobs: list[Job]) -> dict[str, list]:
    """The failed jobs with their one-line errors and the missing ones (running or killed)."""
    return {
        "failed": [{"dir": str(j.dir), "error": j.error} for j in jobs if j.status == "failed"],
        "missing": [str(j.dir) for j in jobs if j.status == "missing"],
    }


def settings_json(settings: list[Setting], metrics: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "setting": [
                v if isinstance(v, (int, float, str)) or v is None else str(v) for v in s.key
            ],
            "n_folds": s.n,
            "folds": {str(f): str(j.dir) for f, j in s.finished()},
            **unfinished_json(s.unfinished),
            "mean": {m: s.mean_std(m)[0] for m in metrics},
            "std": {m: s.mean_std(m)[1] for m in metrics},
        }
        for s in settings
    ]


def value_entry(
    value: float | None,
    spread: float | None = None,
    n: int | None = None,
    spread_kind: str | None = None,
) -> dict[str, Any]:
    """One of our numbers in a cell: value, its spread (what it is over) and how many runs it is of."""

    def plain(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    return {"value": plain(value), "spread": plain(spread), "n": n, "spread_kind": spread_kind}


def fold_values(setting: Setting, metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{metric: mean ± population s.d. over the setting's finished folds}``."""
    return {
        m: value_entry(
            *setting.mean_std(m), n=len(setting.values(m)), spread_kind="s.d. over folds"
        )
        for m in metrics
        if setting.values(m)
    }


def make_cell(
    setting: str, row: dict[str, Any], values: dict[str, dict[str, Any]], jobs: Iterable[Job]
) -> dict[str, Any]:
    """One row of ours for the paper comparison: ``setting`` (how the table labels it), ``row`` (its
    settings, matched against the paper rows' ``ours`` in the package data), ``values`` (key →
    :func:`value_entry`), whether its jobs ran on synthetic data, and the jobs."""
    jobs = list(jobs)
    return {
        "setting": setting,
        "row": {
            k: v if isinstance(v, (int, float, str)) or v is None else str(v)
            for k, v in row.items()
        },
        "values": values,
        "synthetic": synthetic_data(jobs),
        "jobs": [str(j.dir) for j in jobs],
    }


def table_result(
    layout: str,
    title: str,
    sections: list[tuple[str, str]],
    settings: list[Setting],
    metrics: list[str],
    cells: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a builder returns: the layout, a title, ``(label, markdown)`` sections, the settings' JSON and
    the rows as ``cells`` (:func:`make_cell`) for the paper comparison.

    A builder may add ``note`` (shown under its table, in place of the footer on ± for layouts whose ± is
    not the standard deviation over folds, e.g. the MIL tables' standard error over repetitions).
    """
    return {
        "layout": layout,
        "title": title,
        "sections": sections,
        "settings": settings_json(settings, metrics),
        "cells": cells or [],
    }


# ---- the report ----------------------------------------------------------------------------------------------
def build_report(sweep_dirs: Sequence[str | Path], names: Sequence[str]) -> dict[str, Any]:
    """The tables ``names`` for the jobs of ``sweep_dirs`` (see the module docstring)."""
    from histo_lightning.reporting.compare import compare_result

    chosen = check_layouts(names)
    jobs = read_jobs(sweep_dirs)
    tables = [layout.build(jobs) for layout in chosen]
    for table in tables:
        table["paper"] = compare_result(table)
    return {
        "sweep_dirs": [str(d) for d in sweep_dirs],
        "n_jobs": len(jobs),
        "n_finished": sum(1 for j in jobs if j.status == FINISHED),
        "n_failed": sum(1 for j in jobs if j.status == "failed"),
        "synthetic_data": synthetic_data(jobs),
        "tables": tables,
    }


def to_markdown(report: dict[str, Any], heading: str = "Paper tables") -> str:
    parts = [f"# {heading}\n\n" + "\n".join(f"`{d}`" for d in report["sweep_dirs"])]
    if report["synthetic_data"]:
        parts.append(
            "**Synthetic data** generated by histo-lightning: these numbers test the pipeline, not the method."
        )
    parts.append(
        f"{report['n_finished']} of {report['n_jobs']} jobs finished, {report['n_failed']} failed."
    )
    for table in report["tables"]:
        parts.append(f"## {table['title']}")
        for label, body in table["sections"]:
            parts.append(f"**{label}**\n\n{body}" if label else body)
        failed = [f for s in table["settings"] for f in s["failed"]]
        missing = [m for s in table["settings"] for m in s["missing"]]
        if failed:
            parts.append(
                "Failed (not included):\n\n"
                + "\n".join(f"- {f['dir']}: {f['error']}" for f in failed)
            )
        if missing:
            parts.append("Missing (running or killed; not included): " + ", ".join(missing))
        if table.get("note"):
            parts.append(table["note"])
        if table.get("paper"):
            from histo_lightning.reporting.compare import comparison_markdown

            parts.append(comparison_markdown(table["paper"], level="###"))
    if any(not table.get("note") for table in report["tables"]):
        parts.append(
            "± is the population standard deviation over folds (ddof = 0), as in the papers."
        )
    return "\n\n".join(parts) + "\n"


def write_report(
    sweep_dirs: Sequence[str | Path], names: Sequence[str], out_dir: str | Path | None = None
) -> list[tuple[Path, Path]]:
    """Write ``<method>_tables.{md,json}`` per method into ``out_dir`` (default: the first sweep folder).

    Returns the ``(json, md)`` paths written; none when the sweeps hold no job yet.
    """
    by_method: dict[str, list[str]] = defaultdict(list)
    for layout in check_layouts(names):
        by_method[layout.method].append(layout.name)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dirs[0])
    written = []
    for method, method_names in by_method.items():
        report = build_report(sweep_dirs, method_names)
        if not report["n_jobs"]:
            return []
        serialisable = {
            **report,
            "tables": [
                {
                    **t,
                    "sections": [
                        {"label": label, "markdown": body} for label, body in t["sections"]
                    ],
                }
                for t in report["tables"]
            ],
        }
        json_path = write_json_atomic(out / f"{method}_tables.json", serialisable)
        markdown = to_markdown(report, f"{method} tables")
        written.append((json_path, write_text_atomic(out / f"{method}_tables.md", markdown)))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun folders to combine")
    parser.add_argument(
        "--layout",
        action="append",
        choices=sorted(layouts()),
        required=True,
        help="a table to lay out (repeat for several)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for <method>_tables.{md,json}"
    )
    args = parser.parse_args(argv)
    for d in args.sweep_dirs:
        if not d.is_dir():
            parser.exit(2, f"error: {d} is not a directory\n")
    written = write_report(args.sweep_dirs, args.layout, args.out)
    if not written:
        parser.exit(2, "error: no Hydra job folders (<n>_fold<k>/.hydra) in the given sweeps\n")
    for json_path, md_path in written:
        print(md_path.read_text())
        print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    # run the imported module's main: the method modules register into that module's registry
    from histo_lightning.reporting.tables import main as _main

    _main()


__all__ = [
    "Setting",
    "TableLayout",
    "build_report",
    "check_layouts",
    "fmt_mean_std",
    "fmt_value",
    "fold_values",
    "group_jobs",
    "layouts",
    "make_cell",
    "markdown_table",
    "register_table",
    "settings_json",
    "sort_key",
    "table_modules",
    "table_result",
    "to_markdown",
    "value_entry",
    "write_report",
]
