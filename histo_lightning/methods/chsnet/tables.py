"""CHS-Net (Ma et al. 2019) paper tables, registered as ``chsnet.table2``, ``chsnet.table3``, ``chsnet.table4``.

* ``chsnet.table2`` (§4.2.2, Table 2): the screening network on the training set at p(mitosis) > 0.2
  (hard-example mining), one row per fold: FP, TP, FN, Recall(P/N), Precision, F1 score, read from the
  job's mining report (``run_info.json`` → ``stages.mining``). The paper's AVE. row averages only the
  recalls over the folds (0.9942/0.8716 is the mean of its five P/N recalls); so does this one.
* ``chsnet.table3`` (§4.3, Table 3): detection on the held-out folds, one row per fold from
  ``metrics.json`` (``test/fp, tp, fn, recall, precision, f1``), then **Total** (Σ FP, TP, FN) and
  **AVE.**: precision, recall and F1 of the pooled counts. The paper's AVE. is pooled, not a mean of the
  folds: its precision 0.8649 = 877 / (877 + 137) and recall 0.5651 = 877 / (877 + 675) come from the
  Total row, its F1 0.6836 = 2·877 / (2·877 + 137 + 675), while the mean of its five fold F1s is 0.6741.
* ``chsnet.table4`` (§4.4.2, Table 4): the ablations, one row per method (CHS-NET(CN+HEM+SFL), CN+HEM+FL,
  CN+HEM+SM, HEM+SFL, SFL; from ``method.cascade``, ``method.hard_example_mining`` and the loss) with
  Recall(P/N), Precision and F1 of the counts pooled over the folds run (the paper: one fold). Combine the
  sweeps of ``chsnet``, ``chsnet_fl``, ``chsnet_ce``, ``chsnet_single_hem`` and ``chsnet_single``.

Detection counts points, not windows, so it has no true negatives: the N of Recall(P/N) in Tables 3 and 4
is shown only where a job logged ``test/recall_neg``, "–" otherwise.

For the paper comparison each row is a cell with settings ``method`` (the names above) and ``fold`` (a
fold number, ``Total`` or ``AVE.``) and values ``fp``, ``tp``, ``fn``, ``recall`` (Table 2:
``recall_pos``), ``recall_neg``, ``precision``, ``f1`` (``resources/papers/chsnet.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from histo_lightning.metrics.detection import detection_scores
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

LOSS_NAMES = {"SemiFocalLoss": "SFL", "FocalLoss": "FL", "CrossEntropyLoss": "SM"}
METHOD_ORDER = ("CHS-NET(CN+HEM+SFL)", "CN+HEM+FL", "CN+HEM+SM", "HEM+SFL", "SFL")
COUNT_COLUMNS = ["Fold", "FP", "TP", "FN", "Recall(P/N)", "Precision", "F1 score"]


def is_chsnet(config: dict) -> bool:
    """Whether a job ran the CHS-Net pipeline (its model has a screening network)."""
    return isinstance(config.get("model"), dict) and "screening" in config["model"]


def method_label(config: dict) -> str:
    """Table 4's name of a job's method: CN (cascade) + HEM (hard-example mining) + the loss."""
    # the method: node; sweeps run before the one-method:-node convention kept these under model:
    method = config.get("method") if isinstance(config.get("method"), dict) else None
    switches = method or config.get("model") or {}
    target = str((config.get("loss") or {}).get("_target_", "?"))
    loss = target.rsplit(".", 1)[-1]
    parts = [
        *(["CN"] if switches.get("cascade") else []),
        *(["HEM"] if switches.get("hard_example_mining") else []),
        LOSS_NAMES.get(loss, loss),
    ]
    label = "+".join(parts)
    return f"CHS-NET({label})" if label == "CN+HEM+SFL" else label


def _settings(jobs: list[Job]) -> list[Setting]:
    settings = group_jobs([j for j in jobs if is_chsnet(j.config)], lambda c: (method_label(c),))
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(settings, key=lambda s: (order.get(s.key[0], len(order)), s.key[0]))


def mining_report(job: Job) -> dict[str, Any] | None:
    """The job's hard-example-mining counts, or None.

    Read from the mining stage's record in run_info.json (``stages.mining.metrics``, the stage-prefixed
    ``mining/fp``, ``mining/tp``, ... that the stage logged), prefix removed.
    """
    stage = ((job.info or {}).get("stages") or {}).get("mining") or {}
    metrics = stage.get("metrics") if isinstance(stage, dict) else None
    if not isinstance(metrics, dict):
        return None
    report = {k.split("/", 1)[1]: v for k, v in metrics.items() if "/" in k}
    return report if "fp" in report else None


def _count(value: float | None) -> str:
    return "–" if value is None else str(round(float(value)))


def _recall_pn(positive: float | None, negative: float | None) -> str:
    return f"{fmt_value(positive, digits=4)}/{fmt_value(negative, digits=4)}"


def _count_row(label: str, counts: dict[str, Any], negative: float | None) -> list[str]:
    return [
        label,
        *(_count(counts.get(k)) for k in ("fp", "tp", "fn")),
        _recall_pn(counts.get("recall"), negative),
        fmt_value(counts.get("precision"), digits=4),
        fmt_value(counts.get("f1"), digits=4),
    ]


def pooled(counts: list[dict[str, Any]]) -> dict[str, float]:
    """Σ TP, FP, FN and the precision, recall, F1 of the sums (CHS-Net Eqs. 1–3)."""
    tp, fp, fn = (float(sum(c[k] for c in counts)) for k in ("tp", "fp", "fn"))
    return {"tp": tp, "fp": fp, "fn": fn, **detection_scores(tp, fp, fn)}


def _mean(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _std(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.std(present)) if present else None


def _test_counts(job: Job) -> dict[str, Any] | None:
    metrics = job.metrics or {}
    if not all(f"test/{k}" in metrics for k in ("tp", "fp", "fn")):
        return None
    return {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")}


COUNT_KEYS = ("fp", "tp", "fn", "recall", "recall_pos", "recall_neg", "precision", "f1")


def _values(counts: dict[str, Any], n: int = 1) -> dict[str, dict[str, Any]]:
    return {k: value_entry(counts[k], n=n) for k in COUNT_KEYS if counts.get(k) is not None}


def _jobs(setting: Setting, folds: list) -> list[Job]:
    return [setting.folds[f] for f, _ in folds]


def _per_setting(
    settings: list[Setting], counts_of: Callable[[Job], dict[str, Any] | None]
) -> Iterator[tuple[str, Setting, list[tuple[int | None, dict[str, Any]]]]]:
    """``(method, setting, [(fold, counts), ...])`` of every setting with counts in a finished fold."""
    for setting in settings:
        folds = [(f, c) for f, job in setting.finished() if (c := counts_of(job)) is not None]
        if folds:
            yield setting.key[0], setting, folds


@register_table("chsnet", "table2")
def table2(jobs: list[Job]) -> dict[str, Any]:
    settings, sections, rows_json, cells = _settings(jobs), [], [], []
    for method, setting, reports in _per_setting(settings, mining_report):
        rows = [
            _count_row(str(fold), {**r, "recall": r.get("recall_pos")}, r.get("recall_neg"))
            for fold, r in reports
        ]
        average = {k: _mean([r.get(k) for _, r in reports]) for k in ("recall_pos", "recall_neg")}
        rows.append(["AVE.", "-", "-", "-", _recall_pn(*average.values()), "", ""])
        sections.append((method, markdown_table(COUNT_COLUMNS, rows)))
        rows_json.append({"setting": method, "folds": {str(f): r for f, r in reports}})
        for fold, report in reports:
            row = {"method": method, "fold": fold}
            cells.append(make_cell(f"{method}, fold {fold}", row, _values(report), [setting.folds[fold]]))  # fmt: skip
        spread = {k: _std([r.get(k) for _, r in reports]) for k in average}
        values = {
            k: value_entry(v, spread[k], len(reports), "s.d. over folds")
            for k, v in average.items()
            if v is not None
        }
        row = {"method": method, "fold": "AVE."}
        cells.append(make_cell(f"{method}, AVE.", row, values, _jobs(setting, reports)))
    title = "Table 2: the screening network on the training set (hard-example mining)"
    result = table_result("chsnet.table2", title, sections, settings, [], cells)
    return {**result, "rows": rows_json}


@register_table("chsnet", "table3")
def table3(jobs: list[Job]) -> dict[str, Any]:
    settings, sections, rows_json, cells = _settings(jobs), [], [], []
    for method, setting, folds in _per_setting(settings, _test_counts):
        rows = [_count_row(str(fold), c, c.get("recall_neg")) for fold, c in folds]
        total = pooled([c for _, c in folds])
        negative = _mean([c.get("recall_neg") for _, c in folds])
        rows.append(["Total", *(_count(total[k]) for k in ("fp", "tp", "fn")), "-/-", "-", "-"])
        rows.append(["AVE.", "-", "-", "-", *_count_row("", total, negative)[4:]])
        sections.append((method, markdown_table(COUNT_COLUMNS, rows)))
        rows_json.append({"setting": method, "folds": dict(folds), "ave_pooled": total})
        for fold, counts in folds:
            row = {"method": method, "fold": fold}
            cells.append(make_cell(f"{method}, fold {fold}", row, _values(counts), [setting.folds[fold]]))  # fmt: skip
        n, jobs_of = len(folds), _jobs(setting, folds)
        sums = {k: total[k] for k in ("fp", "tp", "fn")}
        cells.append(make_cell(f"{method}, Total", {"method": method, "fold": "Total"}, _values(sums, n), jobs_of))  # fmt: skip
        ave = {k: total[k] for k in ("recall", "precision", "f1")} | {"recall_neg": negative}
        cells.append(make_cell(f"{method}, AVE. (pooled)", {"method": method, "fold": "AVE."}, _values(ave, n), jobs_of))  # fmt: skip
    title = (
        "Table 3: detection per held-out fold (AVE. = precision, recall, F1 of the Total counts)"
    )
    metrics = ["test/f1", "test/precision", "test/recall", "test/tp", "test/fp", "test/fn"]
    result = table_result("chsnet.table3", title, sections, settings, metrics, cells)
    return {**result, "rows": rows_json}


@register_table("chsnet", "table4")
def table4(jobs: list[Job]) -> dict[str, Any]:
    settings, rows, rows_json, cells = _settings(jobs), [], [], []
    for method, setting, folds in _per_setting(settings, _test_counts):
        total = pooled([c for _, c in folds])
        negative = _mean([c.get("recall_neg") for _, c in folds])
        rows.append([method, str(len(folds)), *_count_row("", total, negative)[4:]])
        rows_json.append({"setting": method, "n_folds": len(folds), "pooled": total})
        ave = {k: total[k] for k in ("recall", "precision", "f1")} | {"recall_neg": negative}
        label = f"{method}, pooled over {len(folds)} fold(s)"
        cells.append(make_cell(label, {"method": method}, _values(ave, len(folds)), _jobs(setting, folds)))  # fmt: skip
    header = ["Method", "Folds", "Recall(P/N)", "Precision", "F1 score"]
    title = "Table 4: ablations (CN cascade, HEM hard-example mining, SFL/FL/SM loss), pooled over folds"
    section = [("", markdown_table(header, rows))]
    metrics = ["test/f1", "test/precision", "test/recall"]
    result = table_result("chsnet.table4", title, section, settings, metrics, cells)
    return {**result, "rows": rows_json}


__all__ = ["is_chsnet", "method_label", "mining_report", "pooled"]
