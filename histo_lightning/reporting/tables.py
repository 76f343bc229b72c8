"""Sweep results laid out like the SMSE paper's tables (Sun et al., Tables III–VII and X).

``python -m histo_lightning.reporting.tables SWEEP_DIR [SWEEP_DIR ...] --layout table3 [--layout ...]``
reads every job of one or more Hydra multiruns (``<n>_fold<k>/`` with ``.hydra/config.yaml`` and
``metrics.json``), describes each job by the settings the layout compares (read from the job's composed
config, so jobs of different experiments and sweeps can be combined), averages each setting over its folds
and writes ``smse_tables.md`` and ``smse_tables.json`` (into the first sweep folder, or ``--out``).

Layouts:

* ``table3``: margin m of the pair loss (No. 1) and of the triplet loss (No. 2): RR, ACC, F1 benign,
  F1 malignant, mean ± s.d. over folds.
* ``table4``: (λ, γ) of the reinforced focal loss: the same columns.
* ``table5``: with or without the embedding ε: Triplet, Pair, "-" rows (combine the sweeps of
  ``smse_breakhis``, ``smse_breakhis_pair`` and ``smse_breakhis_ce``).
* ``table6``: one row per fold and Mean ± st.d., in %, for each setting.
* ``table7``: RR per magnification (40×, 100×, 200×, 400×) and their average, in %. As in the paper, the
  average's mean is the mean of the four magnification means and its ± the mean of their four s.d.s
  (Table VII row 9: 88.64 ± 3.51 from 87.51 ± 4.07, 89.12 ± 2.86, 90.83 ± 3.31, 87.10 ± 3.80).
* ``table10``: network × loss (L_cls, L_cls + L_p, L_cls + L_t): ACC and F1 of every class, in %.

± is the population standard deviation over folds (ddof = 0), which reproduces the paper's tables.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from histo_lightning.utils.io import write_json_atomic, write_text_atomic

LAYOUTS = ("table3", "table4", "table5", "table6", "table7", "table10")
MAGNIFICATIONS = ("40x", "100x", "200x", "400x")
REPORT_NAME = "smse_tables"


@dataclass
class Job:
    """One finished or unfinished job of a sweep."""

    dir: Path
    fold: int | None
    config: dict[str, Any]
    metrics: dict[str, float] | None
    synthetic: bool | None


def read_jobs(sweep_dirs: Sequence[str | Path]) -> list[Job]:
    """Every Hydra job folder (``.hydra/config.yaml``) directly under the given sweep folders."""
    jobs = []
    for sweep in sweep_dirs:
        for job_dir in sorted(p for p in Path(sweep).iterdir() if p.is_dir()):
            config_file = job_dir / ".hydra" / "config.yaml"
            if not config_file.is_file():
                continue
            config = yaml.safe_load(config_file.read_text()) or {}
            metrics_file, info_file = job_dir / "metrics.json", job_dir / "run_info.json"
            jobs.append(
                Job(
                    dir=job_dir,
                    fold=config.get("fold"),
                    config=config,
                    metrics=json.loads(metrics_file.read_text())
                    if metrics_file.is_file()
                    else None,
                    synthetic=json.loads(info_file.read_text()).get("synthetic_data")
                    if info_file.is_file()
                    else None,
                )
            )
    return jobs


# ---- what a job is, in the paper's words -----------------------------------------------------------------
def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if isinstance(node, dict) else ""


def embedding_kind(config: dict) -> str:
    """``Triplet``, ``Pair`` or ``-`` (no embedding loss, "w/o ε")."""
    target = _target(config.get("embedding_loss"))
    if target.endswith("TripletLoss"):
        return "Triplet"
    if target.endswith("ContrastiveLoss"):
        return "Pair"
    return "-" if not target else target.rsplit(".", 1)[-1]


def margin(config: dict) -> float | None:
    node = config.get("embedding_loss")
    return float(node["margin"]) if isinstance(node, dict) and "margin" in node else None


def rfl_parameters(config: dict) -> tuple[float, float] | None:
    node = config.get("loss")
    if _target(node).endswith("ReinforcedFocalLoss"):
        return float(node.get("lam", 2.0)), float(node.get("gamma", 1.5))
    return None


def cls_loss_name(config: dict) -> str:
    params = rfl_parameters(config)
    if params is not None:
        return f"RFL (λ={params[0]:g}, γ={params[1]:g})"
    return _target(config.get("loss")).rsplit(".", 1)[-1] or "?"


def network(config: dict) -> str:
    """``PNN1``, ``PNN2``, or the backbone of a timm/torchvision net (GoogLeNet, ResNet, ...)."""
    net = (config.get("model") or {}).get("net") or {}
    target = _target(net)
    if target.endswith((".pnn1", ".pnn2")):
        return target.rsplit(".", 1)[-1].upper()
    backbone = str(net.get("backbone", target.rsplit(".", 1)[-1]))
    names = {"tv:googlenet": "GoogleNet", "inception_v3": "GoogleNet (Inception v3)"}
    if backbone in names:
        return names[backbone]
    if backbone.removeprefix("tv:").startswith("resnet"):
        return f"ResNet ({backbone.removeprefix('tv:')})"
    return backbone


def experiment_name(config: dict) -> str:
    return str(config.get("task_name", "?"))


# ---- grouping and averaging --------------------------------------------------------------------------------
@dataclass
class Setting:
    """The folds of one setting (one table row)."""

    key: tuple
    folds: dict[int | None, Job]

    def values(self, metric: str) -> list[float]:
        return [
            float(j.metrics[metric])
            for _, j in sorted(self.folds.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            if j.metrics and metric in j.metrics
        ]

    def mean_std(self, metric: str) -> tuple[float, float]:
        v = self.values(metric)
        if not v:
            return math.nan, math.nan
        return float(np.mean(v)), float(np.std(v))

    @property
    def n(self) -> int:
        return sum(1 for j in self.folds.values() if j.metrics)

    @property
    def missing(self) -> list[Job]:
        return [j for j in self.folds.values() if not j.metrics]


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


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else str(value))


# ---- rendering ---------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, scale: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f}±{std * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _class_f1_metrics(settings: list[Setting]) -> list[str]:
    names = sorted(
        {
            m
            for s in settings
            for j in s.folds.values()
            if j.metrics
            for m in j.metrics
            if m.startswith("test/f1_")
        }
    )
    # paper order: benign before malignant, normal before tumour
    preferred = ["test/f1_benign", "test/f1_malignant", "test/f1_normal", "test/f1_tumour"]
    return [m for m in preferred if m in names] + [m for m in names if m not in preferred]


def _f1_header(metric: str) -> str:
    return "F1 " + metric.removeprefix("test/f1_")


def _summary_rows(
    settings: list[Setting], label: Callable[[tuple], list[str]], metrics: list[str], digits: int
) -> list[list[str]]:
    return [
        [*label(s.key), str(s.n), *(_fmt(*s.mean_std(m), 1.0, digits) for m in metrics)]
        for s in settings
    ]


def table3(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: (embedding_kind(c), margin(c)))
    settings.sort(key=lambda s: ({"Pair": 1, "Triplet": 2}.get(s.key[0], 3), _sort_key(s.key[1])))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    number = {"Pair": "1 (L_p)", "Triplet": "2 (L_t)"}
    header = ["No.", "m", "Folds", "RR", "ACC", *(_f1_header(m) for m in metrics[2:])]
    rows = _summary_rows(
        settings,
        lambda k: [number.get(k[0], k[0]), "–" if k[1] is None else f"{k[1]:g}"],
        metrics,
        3,
    )
    title = "Table III: margin m of the pair loss (No. 1) and the triplet loss (No. 2)"
    return _result("table3", title, header, rows, settings, metrics)


def table4(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: rfl_parameters(c) or (cls_loss_name(c),))
    settings.sort(key=lambda s: tuple(_sort_key(v) for v in s.key))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["(λ, γ)", "Folds", "RR", "ACC", *(_f1_header(m) for m in metrics[2:])]

    def label(key: tuple) -> list[str]:
        return [f"({key[0]:g}, {key[1]:g})"] if len(key) == 2 else [str(key[0])]

    rows = _summary_rows(settings, label, metrics, 3)
    title = "Table IV: (λ, γ) of the reinforced focal loss"
    return _result("table4", title, header, rows, settings, metrics)


def table5(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: (embedding_kind(c), cls_loss_name(c)))
    settings.sort(key=lambda s: ({"Triplet": 0, "Pair": 1, "-": 2}.get(s.key[0], 3), s.key[1]))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["w/o ε", "L_cls", "Folds", "RR", "ACC", *(_f1_header(m) for m in metrics[2:])]
    rows = _summary_rows(settings, lambda k: [k[0], k[1]], metrics, 3)
    title = "Table V: models trained with or without embeddings ε"
    return _result("table5", title, header, rows, settings, metrics)


def table6(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(
        jobs,
        lambda c: (experiment_name(c), embedding_kind(c), margin(c), cls_loss_name(c), network(c)),
    )
    settings.sort(key=lambda s: tuple(_sort_key(v) for v in s.key))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["Fold", "RR (%)", "ACC (%)", *(f"{_f1_header(m)} (%)" for m in metrics[2:])]
    sections = []
    for s in settings:
        rows = [
            [str(fold), *(_fmt_pct(job.metrics.get(m)) for m in metrics)]
            for fold, job in sorted(s.folds.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            if job.metrics
        ]
        rows.append(["*Mean ± st.d.*", *(_fmt(*s.mean_std(m), 100.0, 2) for m in metrics)])
        label = f"{s.key[0]}: {s.key[1]} embedding, m={s.key[2]}, {s.key[3]}, {s.key[4]}"
        sections.append((label, _table(header, rows)))
    title = "Table VI: cross-validated performance per fold"
    return {
        "layout": "table6",
        "title": title,
        "sections": sections,
        "settings": _settings_json(settings, metrics),
    }


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * float(value):.2f}"


def table7(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(
        jobs, lambda c: (experiment_name(c), embedding_kind(c), cls_loss_name(c), network(c))
    )
    settings.sort(key=lambda s: tuple(_sort_key(v) for v in s.key))
    metrics = [f"test/rr_{m}" for m in MAGNIFICATIONS]
    header = ["Method", "Folds", *(f"RR {m[:-1]}× (%)" for m in MAGNIFICATIONS), "Average (%)"]
    rows = []
    for s in settings:
        stats = [s.mean_std(m) for m in metrics]
        valid = [st for st in stats if not math.isnan(st[0])]
        average = (
            (float(np.mean([m for m, _ in valid])), float(np.mean([sd for _, sd in valid])))
            if valid
            else (math.nan, math.nan)
        )
        rows.append(
            [
                f"{s.key[0]} ({s.key[1]}, {s.key[2]}, {s.key[3]})",
                str(s.n),
                *(_fmt(m, sd, 100.0, 2) for m, sd in stats),
                _fmt(*average, 100.0, 2),
            ]
        )
    title = "Table VII: recognition rate per magnification"
    return _result("table7", title, header, rows, settings, metrics)


def table10(jobs: list[Job]) -> dict[str, Any]:
    loss_order = {"-": 0, "Pair": 1, "Triplet": 2}
    settings = group_jobs(jobs, lambda c: (network(c), embedding_kind(c)))
    settings.sort(key=lambda s: (str(s.key[0]), loss_order.get(s.key[1], 3)))
    metrics = ["test/acc", *_class_f1_metrics(settings)]
    loss_name = {"-": "L_cls", "Pair": "L_cls + L_p", "Triplet": "L_cls + L_t"}
    header = ["Network", "Loss", "Folds", "ACC (%)", *(f"{_f1_header(m)} (%)" for m in metrics[1:])]
    rows = [
        [
            str(s.key[0]),
            loss_name.get(s.key[1], s.key[1]),
            str(s.n),
            *(
                _fmt(*s.mean_std(m), 100.0, 1) if s.n > 1 else _fmt_pct(_first(s, m))
                for m in metrics
            ),
        ]
        for s in settings
    ]
    title = "Table X: network × loss on PAIP 2019 patches"
    return _result("table10", title, header, rows, settings, metrics)


def _first(setting: Setting, metric: str) -> float | None:
    values = setting.values(metric)
    return values[0] if values else None


def _settings_json(settings: list[Setting], metrics: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "setting": [
                v if isinstance(v, (int, float, str)) or v is None else str(v) for v in s.key
            ],
            "n_folds": s.n,
            "folds": {str(f): str(j.dir) for f, j in s.folds.items() if j.metrics},
            "missing": [str(j.dir) for j in s.missing],
            "mean": {m: s.mean_std(m)[0] for m in metrics},
            "std": {m: s.mean_std(m)[1] for m in metrics},
        }
        for s in settings
    ]


def _result(
    layout: str,
    title: str,
    header: list[str],
    rows: list[list[str]],
    settings: list[Setting],
    metrics: list[str],
) -> dict[str, Any]:
    return {
        "layout": layout,
        "title": title,
        "sections": [("", _table(header, rows))],
        "settings": _settings_json(settings, metrics),
    }


BUILDERS: dict[str, Callable[[list[Job]], dict[str, Any]]] = {
    "table3": table3,
    "table4": table4,
    "table5": table5,
    "table6": table6,
    "table7": table7,
    "table10": table10,
}


def build_report(sweep_dirs: Sequence[str | Path], layouts: Sequence[str]) -> dict[str, Any]:
    """The tables of ``layouts`` for the jobs of ``sweep_dirs`` (see module docstring)."""
    unknown = [layout for layout in layouts if layout not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown layout(s) {unknown}; choose from {', '.join(LAYOUTS)}")
    jobs = read_jobs(sweep_dirs)
    synthetic = {j.synthetic for j in jobs if j.synthetic is not None}
    return {
        "sweep_dirs": [str(d) for d in sweep_dirs],
        "n_jobs": len(jobs),
        "n_finished": sum(1 for j in jobs if j.metrics),
        "synthetic_data": synthetic.pop()
        if len(synthetic) == 1
        else ("mixed" if synthetic else None),
        "tables": [BUILDERS[layout](jobs) for layout in layouts],
    }


def to_markdown(report: dict[str, Any]) -> str:
    parts = ["# SMSE tables\n\n" + "\n".join(f"`{d}`" for d in report["sweep_dirs"])]
    if report["synthetic_data"]:
        parts.append(
            "**Synthetic data** generated by histo-lightning: these numbers test the pipeline, not the method."
        )
    parts.append(f"{report['n_finished']} of {report['n_jobs']} jobs finished.")
    for table in report["tables"]:
        parts.append(f"## {table['title']}")
        for label, body in table["sections"]:
            parts.append(f"**{label}**\n\n{body}" if label else body)
        missing = [m for s in table["settings"] for m in s["missing"]]
        if missing:
            parts.append(
                "Not included (no metrics.json: failed or still running): " + ", ".join(missing)
            )
    parts.append("± is the population standard deviation over folds (ddof = 0), as in the paper.")
    return "\n\n".join(parts) + "\n"


def write_report(
    sweep_dirs: Sequence[str | Path], layouts: Sequence[str], out_dir: str | Path | None = None
) -> tuple[Path, Path] | None:
    """Write ``smse_tables.{md,json}`` into ``out_dir`` (default: the first sweep folder)."""
    report = build_report(sweep_dirs, layouts)
    if not report["n_jobs"]:
        return None
    out = Path(out_dir) if out_dir is not None else Path(sweep_dirs[0])
    serialisable = {
        **report,
        "tables": [
            {**t, "sections": [{"label": label, "markdown": body} for label, body in t["sections"]]}
            for t in report["tables"]
        ],
    }
    json_path = write_json_atomic(out / f"{REPORT_NAME}.json", serialisable)
    md_path = write_text_atomic(out / f"{REPORT_NAME}.md", to_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun folders to combine")
    parser.add_argument(
        "--layout",
        action="append",
        choices=LAYOUTS,
        required=True,
        help="a table to lay out (repeat for several)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for smse_tables.{md,json}")
    args = parser.parse_args(argv)
    for d in args.sweep_dirs:
        if not d.is_dir():
            parser.exit(2, f"error: {d} is not a directory\n")
    written = write_report(args.sweep_dirs, args.layout, args.out)
    if written is None:
        parser.exit(2, "error: no Hydra job folders (<n>_fold<k>/.hydra) in the given sweeps\n")
    print(written[1].read_text())
    print(f"wrote {written[0]} and {written[1]}")


if __name__ == "__main__":
    main()
