"""Cross-validation summary of a finished (or running) sweep, laid out like the papers' tables.

``python -m histo_lightning.reporting.cv_summary <sweep dir>`` (or ``histo-cv-summary``) reads every job
folder of a Hydra multirun (:mod:`histo_lightning.reporting.sweep`) and writes ``cv_summary.json`` and
``cv_summary.md`` into the sweep folder. Jobs are grouped by their overrides other than ``fold`` (a margin
sweep over five folds gives one group per margin, like SMSE Table III); each group gets one row per fold
and mean ± standard deviation per test metric. The standard deviation is the population one (ddof=0) by
default, which reproduces the papers' tables (e.g. SMSE Table VI's RR 88.40 ± 4.17 from its five folds);
``--ddof 1`` gives the sample one. Detection tasks (TP/FP/FN per fold) also get the **AVE.** row of
CHS-Net Table 3: precision, recall and F1 of the counts summed over the folds. Failed jobs are listed with
their one-line error (``failed.json``), jobs with no result yet as missing (running or killed); neither is
averaged.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from histo_lightning.metrics.detection import detection_scores
from histo_lightning.reporting.papers import tables_for_experiments
from histo_lightning.reporting.sweep import Job, read_jobs, synthetic_data
from histo_lightning.reporting.tables import fmt_value, markdown_table
from histo_lightning.utils.io import write_json_atomic, write_text_atomic

_PREFERRED = ("rr", "acc", "f1", "precision", "recall", "auroc", "tp", "fp", "fn")
_ACRONYMS = {
    "rr": "RR",
    "acc": "ACC",
    "auroc": "AUROC",
    "f1": "F1",
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
}
#: the label of the pooled TP/FP/FN row: CHS-Net Table 3's AVE. (877/1014 = 0.8649 is pooled)
POOLED_ROW = "AVE. (Σ TP/FP/FN, pooled)"


def metric_order(names: list[str]) -> list[str]:
    """The papers' column order: RR, ACC, F1…, precision, recall, AUROC, TP/FP/FN, per-group RR, rest, loss."""

    def key(name: str) -> tuple[int, int, str]:
        short = name.split("/", 1)[-1]
        head, _, rest = short.partition("_")
        if head == "rr" and rest:  # per-group RR (rr_40x, rr_100x, ...) after the overall metrics
            digits = "".join(c for c in rest if c.isdigit())
            return (len(_PREFERRED), int(digits) if digits else 0, short)
        if head == "loss":
            return (len(_PREFERRED) + 2, 0, short)
        rank = _PREFERRED.index(head) if head in _PREFERRED else len(_PREFERRED) + 1
        return (rank, 0, short)

    return sorted(names, key=key)


def display_name(metric: str) -> str:
    """``test/f1_benign`` → ``F1 benign``; ``test/rr_40x`` → ``RR 40×``."""
    short = metric.split("/", 1)[-1]
    head, _, rest = short.partition("_")
    head = _ACRONYMS.get(head, head)
    rest = (
        rest.replace("x", "×")
        if rest[:-1].isdigit() and rest.endswith("x")
        else rest.replace("_", " ")
    )
    return f"{head} {rest}".strip()


def pooled_counts(values: dict[str, list[float]]) -> dict[str, float]:
    """Precision, recall and F1 from TP/FP/FN summed over folds (detection tasks, e.g. CHS-Net).

    For every ``<prefix>/tp``, ``<prefix>/fp``, ``<prefix>/fn`` triple: ``<prefix>/{tp,fp,fn}`` summed and
    ``<prefix>/{precision,recall,f1}`` of the sums. This is the papers' "AVE." row: CHS-Net Table 3's AVE.
    precision 0.8649 = 877 / 1014 and F1 0.6836 are those of its Total counts, not means of the folds
    (whose F1s average 0.6741).
    """
    out: dict[str, float] = {}
    for name in values:
        if not name.endswith("/tp"):
            continue
        prefix = name[: -len("tp")]
        counts = [values.get(prefix + k) for k in ("tp", "fp", "fn")]
        if not all(counts) or len({len(c) for c in counts}) != 1:
            continue
        tp, fp, fn = (float(np.sum(c)) for c in counts)
        scores = detection_scores(tp, fp, fn)
        out.update({prefix + "tp": tp, prefix + "fp": fp, prefix + "fn": fn})
        out.update({prefix + k: v for k, v in scores.items()})
    return out


def summarize(sweep_dir: str | Path, ddof: int = 0) -> dict[str, Any]:
    """The summary of every job under ``sweep_dir`` (see module docstring)."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    keys = {k for j in jobs for k in j.overrides}
    common = {
        k: v
        for k in sorted(keys)
        if len({j.overrides.get(k) for j in jobs}) == 1
        for v in [jobs[0].overrides.get(k)]
    }
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = defaultdict(list)
    for job in jobs:
        groups[tuple((k, v) for k, v in job.overrides.items() if k not in common)].append(job)
    names = metric_order(sorted({m for j in jobs if j.metrics for m in j.metrics}))
    out_groups = []
    for group, members in groups.items():
        done = sorted((j for j in members if j.metrics), key=lambda j: (j.fold is None, j.fold))
        values = {m: [j.metrics[m] for j in done if m in j.metrics] for m in names}
        unfinished = sorted(
            (j for j in members if not j.metrics), key=lambda j: (j.fold is None, j.fold)
        )
        out_groups.append(
            {
                "overrides": dict(group),
                "folds": [{"fold": j.fold, "dir": j.dir.name, "metrics": j.metrics} for j in done],
                "failed": [
                    {"fold": j.fold, "dir": j.dir.name, "error": j.error}
                    for j in unfinished
                    if j.status == "failed"
                ],
                "missing": [
                    {"fold": j.fold, "dir": j.dir.name} for j in unfinished if j.status == "missing"
                ],
                "n": len(done),
                "pooled": pooled_counts(values),
                "mean": {m: float(np.mean(v)) for m, v in values.items() if v},
                "std": {
                    m: float(np.std(v, ddof=ddof)) if len(v) > ddof else math.nan
                    for m, v in values.items()
                    if v
                },
            }
        )
    papers = tables_for_experiments({str(j.config.get("task_name")) for j in jobs})
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "synthetic_data": synthetic_data(jobs),
        "papers": sorted({t.paper.short for t in papers}),
        "common_overrides": common,
        "std_kind": f"{'population' if ddof == 0 else 'sample'} standard deviation (ddof={ddof})",
        "metrics": names,
        "n_failed": sum(len(g["failed"]) for g in out_groups),
        "groups": out_groups,
    }
    if len(out_groups) == 1:  # the common case: a plain k-fold run, its numbers at the top level
        keep = ("folds", "mean", "std", "n", "missing", "failed", "pooled")
        summary.update({k: out_groups[0][k] for k in keep})
    return summary


def _mean_std(group: dict, metric: str, digits: int) -> str:
    if metric not in group["mean"]:
        return "–"
    return f"{fmt_value(group['mean'][metric], digits=digits)} ± {fmt_value(group['std'][metric], digits=digits)}"


def to_markdown(summary: dict[str, Any], digits: int = 3) -> str:
    """One overview row per group (mean ± s.d.), then a per-fold table for each group."""
    names = summary["metrics"]
    columns = [display_name(m) for m in names]
    label = lambda g: ", ".join(f"{k}={v}" for k, v in g["overrides"].items()) or "all folds"  # noqa: E731
    common = " ".join(f"{k}={v}" for k, v in summary["common_overrides"].items())
    parts = [
        f"# Cross-validation summary\n\n`{summary['sweep_dir']}`\n\nShared overrides: `{common or '(none)'}`"
    ]
    if summary["synthetic_data"]:
        parts.append(
            "**Synthetic data** generated by histo-lightning: these numbers test the pipeline, not the method."
        )
    overview = [
        [label(g), str(g["n"]), *(_mean_std(g, m, digits) for m in names)]
        for g in summary["groups"]
    ]
    parts.append(markdown_table(["Setting", "Folds", *columns], overview))
    for group in summary["groups"]:
        rows = [
            [str(f["fold"]), *(fmt_value(f["metrics"].get(m), digits=digits) for m in names)]
            for f in group["folds"]
        ]
        rows.append(["**Mean ± s.d.**", *(_mean_std(group, m, digits) for m in names)])
        if group.get("pooled"):
            pooled = group["pooled"]
            rows.append(
                [
                    f"**{POOLED_ROW}**",
                    *(fmt_value(pooled.get(m, math.nan), digits=digits) for m in names),
                ]
            )
        parts.append(f"## {label(group)}\n\n" + markdown_table(["Fold", *columns], rows))
        if group["failed"]:
            failed = "\n".join(
                f"- fold {f['fold']} ({f['dir']}): {f['error']}" for f in group["failed"]
            )
            parts.append(f"Failed (not included):\n\n{failed}")
        if group["missing"]:
            missing = ", ".join(f"fold {m['fold']} ({m['dir']})" for m in group["missing"])
            parts.append(f"Missing (running or killed; not included): {missing}")
    parts.append(f"± is the {summary['std_kind']} over folds.")
    if summary.get("papers"):
        parts.append(
            "Against the papers (ours, the published value with its citation, the difference, inside "
            "or outside the paper's spread): `paper_vs_ours.md` and `paper_vs_ours.html` of this sweep "
            f"({', '.join(summary['papers'])})."
        )
    return "\n\n".join(parts) + "\n"


def write_summary(sweep_dir: str | Path, ddof: int = 0) -> tuple[Path, Path] | None:
    """Write ``cv_summary.json`` and ``cv_summary.md`` into ``sweep_dir``; None if it holds no job yet."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return None
    summary = summarize(sweep_dir, ddof)
    if not summary["groups"]:
        return None
    json_path = write_json_atomic(sweep_dir / "cv_summary.json", summary)
    md_path = write_text_atomic(sweep_dir / "cv_summary.md", to_markdown(summary))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder (logs/<task>/multiruns/<time>)"
    )
    parser.add_argument(
        "--ddof", type=int, default=0, help="0: population s.d. as in the papers; 1: sample s.d."
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"error: {args.sweep_dir} is not a directory\n")
    written = write_summary(args.sweep_dir, args.ddof)
    if written is None:
        parser.exit(2, f"error: {args.sweep_dir} holds no Hydra job folders (<n>_fold<k>/.hydra)\n")
    print(written[1].read_text())
    print(f"wrote {written[0]} and {written[1]}")


if __name__ == "__main__":
    main()
