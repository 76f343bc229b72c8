"""SMSE (Sun et al.) paper tables, registered as ``smse.table3`` … ``smse.table7`` and ``smse.table10``.

* ``smse.table3``: margin m of the pair loss (No. 1) and of the triplet loss (No. 2): RR, ACC, F1 benign,
  F1 malignant, mean ± s.d. over folds.
* ``smse.table4``: (λ, γ) of the reinforced focal loss: the same columns.
* ``smse.table5``: with or without the embedding ε: Triplet, Pair, "-" rows (combine the sweeps of
  ``smse_breakhis``, ``smse_breakhis_pair`` and ``smse_breakhis_ce``).
* ``smse.table6``: one row per fold and Mean ± st.d., in %, for each setting.
* ``smse.table7``: RR per magnification (40×, 100×, 200×, 400×) and their average, in %. As in the paper,
  the average's mean is the mean of the four magnification means and its ± the mean of their four s.d.s
  (Table VII row 9: 88.64 ± 3.51 from 87.51 ± 4.07, 89.12 ± 2.86, 90.83 ± 3.31, 87.10 ± 3.80).
* ``smse.table10``: network × loss (L_cls, L_cls + L_p, L_cls + L_t): ACC and F1 of every class, in %.

Each job is described by the settings a table compares, read from its composed config; see
:mod:`histo_lightning.reporting.tables` for the command and the rendering. Each table's rows also go to
the paper comparison as cells whose settings are :func:`settings_of`'s (``embedding``, ``margin``,
``loss``, ``lam``, ``gamma``, ``network``, ``experiment``; Table VI adds ``fold``), the names the paper
rows' ``ours`` use in ``resources/papers/smse.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from histo_lightning.reporting.sweep import Job
from histo_lightning.reporting.tables import (
    Setting,
    fmt_mean_std,
    fmt_value,
    fold_values,
    group_jobs,
    make_cell,
    markdown_table,
    register_table,
    sort_key,
    table_result,
    value_entry,
)

MAGNIFICATIONS = ("40x", "100x", "200x", "400x")


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


def settings_of(config: dict) -> dict[str, Any]:
    """A job's settings in the words of the paper comparison (``resources/papers/smse.yaml``): embedding
    (Triplet, Pair, -), margin, loss (RFL with lam and gamma, or the loss class), network family (PNN1,
    PNN2, GoogleNet, ResNet), experiment."""
    rfl = rfl_parameters(config)
    loss = _target(config.get("loss")).rsplit(".", 1)[-1] or "?"
    return {
        "experiment": experiment_name(config),
        "embedding": embedding_kind(config),
        "margin": margin(config),
        "loss": "RFL" if rfl else loss,
        "lam": rfl[0] if rfl else None,
        "gamma": rfl[1] if rfl else None,
        "network": network(config).split(" (", 1)[0],
    }


def _cells(
    settings: list[Setting],
    keys: tuple[str, ...],
    label: Callable[[tuple], str],
    metrics: list[str],
) -> list[dict[str, Any]]:
    """One cell per setting: its ``keys`` of :func:`settings_of`, mean ± s.d. over its folds."""
    cells = []
    for s in settings:
        jobs = list(s.folds.values())
        own = settings_of(jobs[0].config)
        row = {k: own[k] for k in keys}
        cells.append(make_cell(label(s.key), row, fold_values(s, metrics), jobs))
    return cells


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
        [*label(s.key), str(s.n), *(fmt_mean_std(*s.mean_std(m), 1.0, digits) for m in metrics)]
        for s in settings
    ]


@register_table("smse", "table3")
def table3(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: (embedding_kind(c), margin(c)))
    settings.sort(key=lambda s: ({"Pair": 1, "Triplet": 2}.get(s.key[0], 3), sort_key(s.key[1])))
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
    cells = _cells(settings, ("embedding", "margin"), lambda k: f"{k[0]}, m={k[1]}", metrics)
    return _result("smse.table3", title, header, rows, settings, metrics, cells)


@register_table("smse", "table4")
def table4(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: rfl_parameters(c) or (cls_loss_name(c),))
    settings.sort(key=lambda s: tuple(sort_key(v) for v in s.key))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["(λ, γ)", "Folds", "RR", "ACC", *(_f1_header(m) for m in metrics[2:])]

    def label(key: tuple) -> list[str]:
        return [f"({key[0]:g}, {key[1]:g})"] if len(key) == 2 else [str(key[0])]

    rows = _summary_rows(settings, label, metrics, 3)
    title = "Table IV: (λ, γ) of the reinforced focal loss"
    cells = _cells(settings, ("loss", "lam", "gamma"), lambda k: label(k)[0], metrics)
    return _result("smse.table4", title, header, rows, settings, metrics, cells)


@register_table("smse", "table5")
def table5(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(jobs, lambda c: (embedding_kind(c), cls_loss_name(c)))
    settings.sort(key=lambda s: ({"Triplet": 0, "Pair": 1, "-": 2}.get(s.key[0], 3), s.key[1]))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["w/o ε", "L_cls", "Folds", "RR", "ACC", *(_f1_header(m) for m in metrics[2:])]
    rows = _summary_rows(settings, lambda k: [k[0], k[1]], metrics, 3)
    title = "Table V: models trained with or without embeddings ε"
    keys = ("embedding", "loss", "lam", "gamma")
    cells = _cells(settings, keys, lambda k: f"{k[0]} embedding, {k[1]}", metrics)
    return _result("smse.table5", title, header, rows, settings, metrics, cells)


@register_table("smse", "table6")
def table6(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(
        jobs,
        lambda c: (experiment_name(c), embedding_kind(c), margin(c), cls_loss_name(c), network(c)),
    )
    settings.sort(key=lambda s: tuple(sort_key(v) for v in s.key))
    metrics = ["test/rr", "test/acc", *_class_f1_metrics(settings)]
    header = ["Fold", "RR (%)", "ACC (%)", *(f"{_f1_header(m)} (%)" for m in metrics[2:])]
    sections, cells = [], []
    for s in settings:
        rows = [
            [str(fold), *(_pct(job.metrics.get(m)) for m in metrics)] for fold, job in s.finished()
        ]
        rows.append(["*Mean ± st.d.*", *(fmt_mean_std(*s.mean_std(m), 100.0, 2) for m in metrics)])
        label = f"{s.key[0]}: {s.key[1]} embedding, m={s.key[2]}, {s.key[3]}, {s.key[4]}"
        sections.append((label, markdown_table(header, rows)))
        own = settings_of(next(iter(s.folds.values())).config)
        for fold, job in s.finished():
            values = {m: value_entry(job.metrics[m], n=1) for m in metrics if m in job.metrics}
            cells.append(make_cell(f"{label}, fold {fold}", {**own, "fold": fold}, values, [job]))
        jobs = list(s.folds.values())
        cells.append(make_cell(f"{label}, mean", {**own, "fold": "mean"}, fold_values(s, metrics), jobs))  # fmt: skip
    title = "Table VI: cross-validated performance per fold"
    return table_result("smse.table6", title, sections, settings, metrics, cells)


def _pct(value: float | None) -> str:
    return fmt_value(value, 100.0, 2)


@register_table("smse", "table7")
def table7(jobs: list[Job]) -> dict[str, Any]:
    settings = group_jobs(
        jobs, lambda c: (experiment_name(c), embedding_kind(c), cls_loss_name(c), network(c))
    )
    settings.sort(key=lambda s: tuple(sort_key(v) for v in s.key))
    metrics = [f"test/rr_{m}" for m in MAGNIFICATIONS]
    header = ["Method", "Folds", *(f"RR {m[:-1]}× (%)" for m in MAGNIFICATIONS), "Average (%)"]
    rows, cells = [], []
    for s in settings:
        stats = [s.mean_std(m) for m in metrics]
        valid = [st for st in stats if not math.isnan(st[0])]
        average = (
            (float(np.mean([m for m, _ in valid])), float(np.mean([sd for _, sd in valid])))
            if valid
            else (math.nan, math.nan)
        )
        label = f"{s.key[0]} ({s.key[1]}, {s.key[2]}, {s.key[3]})"
        rows.append(
            [
                label,
                str(s.n),
                *(fmt_mean_std(m, sd, 100.0, 2) for m, sd in stats),
                fmt_mean_std(*average, 100.0, 2),
            ]
        )
        jobs = list(s.folds.values())
        own = settings_of(jobs[0].config)
        row = {k: own[k] for k in ("experiment", "embedding", "loss", "lam", "gamma", "network")}
        kind = "mean of the magnifications' s.d.s over folds"
        values = {
            **fold_values(s, metrics),
            "average": value_entry(*average, n=s.n, spread_kind=kind),
        }
        cells.append(make_cell(label, row, values, jobs))
    title = "Table VII: recognition rate per magnification"
    return _result("smse.table7", title, header, rows, settings, metrics, cells)


@register_table("smse", "table10")
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
                fmt_mean_std(*s.mean_std(m), 100.0, 1) if s.n > 1 else _pct(_first(s, m))
                for m in metrics
            ),
        ]
        for s in settings
    ]
    title = "Table X: network × loss on PAIP 2019 patches"
    cells = []
    for s in settings:
        jobs = list(s.folds.values())
        row = {"network": str(s.key[0]).split(" (", 1)[0], "embedding": s.key[1]}
        label = f"{s.key[0]}, {loss_name.get(s.key[1], s.key[1])}"
        cells.append(make_cell(label, row, fold_values(s, metrics), jobs))
    return _result("smse.table10", title, header, rows, settings, metrics, cells)


def _first(setting: Setting, metric: str) -> float | None:
    values = setting.values(metric)
    return values[0] if values else None


def _result(
    layout: str,
    title: str,
    header: list[str],
    rows: list[list[str]],
    settings: list[Setting],
    metrics: list[str],
    cells: list[dict[str, Any]],
) -> dict[str, Any]:
    section = [("", markdown_table(header, rows))]
    return table_result(layout, title, section, settings, metrics, cells)


__all__ = [
    "cls_loss_name",
    "embedding_kind",
    "experiment_name",
    "margin",
    "network",
    "rfl_parameters",
    "settings_of",
]
