"""Our sweeps beside the papers: ``paper_vs_ours.md`` and a self-contained ``paper_vs_ours.html``.

``python -m histo_lightning.reporting.compare SWEEP_DIR [SWEEP_DIR ...] [--layout smse.table3 ...] [--out DIR]``

reads the jobs of one or several Hydra sweeps with the one sweep reader (:mod:`~histo_lightning.reporting.
sweep`; the sibling folders of a sweep whose jobs went under other task names are included), lays them out
with the registered table layouts (:mod:`~histo_lightning.reporting.tables`) and puts each layout's rows
beside the published numbers shipped with the package (:mod:`~histo_lightning.reporting.papers`). A paper
table applies to a sweep when the sweep holds jobs of one of its experiments and its layout gives at least
one row for them (Li et al.'s Table 2 does not apply to Colon jobs). For every paper row that one of our
rows maps to (the map is in the package data, next to the numbers), and every column:

* **Ours** (in the paper's unit, with our own spread and how many folds / repetitions it is over),
* **Paper** (as printed, with its ± where the paper gives one) and its citation (paper, table, row,
  column),
* **Δ** = ours − paper, and whether ours lies **within the paper's spread** (``|Δ| ≤ spread``, ±1 of
  what the paper's ± is: s.d. over folds, standard error over repetitions, ...; "no spread published"
  where the paper prints none; a spread derived from the paper's per-fold values says so),
* whether our row ran on **synthetic** data (``run_info.json``, else the job's ``dataset.synthetic``).

Below each table: the paper rows the sweeps lack (missing), the paper's rows of methods this project does
not implement, our rows without a paper row, and columns compared only under a condition (Rakhlin's
per-fold accuracies need the authors' folds, ``split=official``). The HTML holds the same tables, the
layouts' own tables and the sweeps' plots (PNG, base64 data URIs): one file, no external assets.

Every sweep writes it when it ends (and after each job) through
:class:`~histo_lightning.reporting.hydra_callbacks.PaperComparisonCallback` (``conf/hydra/default.yaml``),
next to ``cv_summary.md``; each ``<method>_tables.md`` also carries the comparison of its layouts.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histo_lightning.reporting.papers import (
    PaperTable,
    PaperValue,
    paper_tables,
    table_for_layout,
)
from histo_lightning.reporting.sweep import FINISHED, Job, read_jobs, sweep_folders, synthetic_data
from histo_lightning.utils.io import write_text_atomic

OUT_NAME = "paper_vs_ours"
#: the most plot bytes embedded in the HTML, and per job
PLOT_BUDGET_BYTES = 24 * 2**20
PLOTS_PER_JOB = 4
HEADER = [
    "Source",
    "Paper row",
    "Column",
    "Paper",
    "Ours",
    "Δ ours − paper",
    "Within the paper's spread",
    "Data",
    "Our setting",
]


# ---- one table ---------------------------------------------------------------------------------------------
def data_label(synthetic: bool | str | None) -> str:
    """``synthetic``, ``real``, ``mixed`` (some of each) or ``unknown``."""
    if synthetic is True:
        return "synthetic"
    if synthetic is False:
        return "real"
    return "mixed" if synthetic == "mixed" else "unknown"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _line(paper: PaperValue, scale: float, cell: dict[str, Any], ours: dict | None) -> dict:
    value = _number((ours or {}).get("value"))
    spread = _number((ours or {}).get("spread"))
    ours_value = None if value is None else value * scale
    difference = None if ours_value is None else ours_value - paper.value
    within = None
    if difference is not None and paper.spread is not None:
        within = abs(difference) <= paper.spread + 1e-9
    return {
        "citation": paper.citation(),
        "row": paper.row,
        "column": paper.column,
        "paper": paper.value,
        "paper_shown": paper.shown(),
        "paper_spread": paper.spread,
        "spread_kind": paper.spread_kind,
        "spread_derived": paper.spread_derived,
        "digits": paper.digits,
        "ours": ours_value,
        "ours_spread": None if spread is None else spread * scale,
        "ours_n": (ours or {}).get("n"),
        "ours_spread_kind": (ours or {}).get("spread_kind"),
        "difference": difference,
        "within": within,
        "data": data_label(cell.get("synthetic")),
        "setting": cell.get("setting", ""),
    }


def compare_table(paper: PaperTable, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Our rows (a layout's ``cells``) beside ``paper``'s: the comparison lines and what is missing."""
    lines, matched_rows, matched_cells, conditional = [], set(), set(), {}
    for row in paper.rows:
        for k, cell in enumerate(cells):
            if not row.matches(cell.get("row") or {}):
                continue
            matched_rows.add(row.name)
            matched_cells.add(k)
            for column in paper.columns:
                value = row.values.get(column.name)
                if value is None:
                    continue
                if not column.applies(cell.get("row") or {}):
                    conditional[column.name] = column.when
                    continue
                ours = (cell.get("values") or {}).get(column.ours)
                lines.append(_line(value, column.scale, cell, ours))
    return {
        "layout": paper.layout,
        "paper": paper.paper.short,
        "citation": paper.paper.citation,
        "table": paper.name,
        "title": paper.title,
        "spread": paper.spread,
        "lines": lines,
        "missing": [
            r.name for r in paper.rows if r.ours is not None and r.name not in matched_rows
        ],
        "not_implemented": [r.name for r in paper.rows if r.ours is None],
        "unmatched": sorted(
            {str(c.get("setting", "")) for k, c in enumerate(cells) if k not in matched_cells}
        ),
        "conditional_columns": {name: dict(when) for name, when in conditional.items()},
        "paper_notes": {r.name: r.note for r in paper.rows if r.note and r.name in matched_rows},
        "synthetic": _synthetic_of(cells),
    }


def _synthetic_of(cells: list[dict[str, Any]]) -> bool | str | None:
    flags = {c.get("synthetic") for c in cells if c.get("synthetic") is not None}
    if len(flags) == 1:
        return flags.pop()
    return "mixed" if flags else None


def compare_result(result: dict[str, Any]) -> dict[str, Any] | None:
    """The comparison of one layout's builder result (None when no paper table sits beside the layout)."""
    paper = table_for_layout(result.get("layout", ""))
    if paper is None:
        return None
    return compare_table(paper, result.get("cells") or [])


# ---- markdown ----------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def ours_text(line: dict[str, Any]) -> str:
    """``0.870 ± 0.025 (n=5)`` in the paper's digits."""
    if line["ours"] is None:
        return "– (not logged)"
    text = _fmt(line["ours"], line["digits"])
    if line["ours_spread"] is not None:
        text += f" ± {_fmt(line['ours_spread'], line['digits'])}"
    if line["ours_n"] is not None:
        text += f" (n={line['ours_n']})"
    return text


def within_text(line: dict[str, Any]) -> str:
    if line["paper_spread"] is None:
        return "no spread published"
    if line["within"] is None:
        return "–"
    verdict = "yes" if line["within"] else "no"
    return verdict + (" (derived spread)" if line["spread_derived"] else "")


def line_cells(line: dict[str, Any]) -> list[str]:
    citation = line["citation"]
    return [
        f"{citation['paper']}, {citation['table']}",
        line["row"],
        line["column"],
        line["paper_shown"],
        ours_text(line),
        _fmt(line["difference"], line["digits"], sign=True),
        within_text(line),
        line["data"],
        line["setting"],
    ]


def notes(comparison: dict[str, Any]) -> list[str]:
    """The lines under a comparison table: spread, missing rows, other methods, unmatched rows."""
    out = [f"Source: {comparison['citation']}. The paper's ±: {comparison['spread']}."]
    if comparison["missing"]:
        out.append("**Missing** (the paper has them, these sweeps do not): " + ", ".join(comparison["missing"]))  # fmt: skip
    if comparison["not_implemented"]:
        out.append("Other methods in the paper's table (not implemented here): " + ", ".join(comparison["not_implemented"]))  # fmt: skip
    if comparison["unmatched"]:
        out.append("Our rows without a paper row: " + "; ".join(comparison["unmatched"]))
    for row, note in comparison.get("paper_notes", {}).items():
        out.append(f"On the paper's row {row}: {note}.")
    by_need: dict[str, list[str]] = {}
    for name, when in comparison["conditional_columns"].items():
        by_need.setdefault(" ".join(f"{k}={v}" for k, v in when.items()), []).append(name)
    for need, names in by_need.items():
        out.append(f"Not compared (they need {need}, the paper's own folds): {', '.join(names)}.")
    return out


def comparison_markdown(comparison: dict[str, Any], level: str = "##") -> str:
    from histo_lightning.reporting.tables import markdown_table

    head = f"{level} {comparison['title']} beside `{comparison['layout']}`"
    if comparison["synthetic"]:
        head += (
            " — SYNTHETIC data" if comparison["synthetic"] is True else " — partly SYNTHETIC data"
        )
    body = (
        markdown_table(HEADER, [line_cells(line) for line in comparison["lines"]])
        if comparison["lines"]
        else "No row of these sweeps maps to a row of this table."
    )
    return "\n\n".join([head, body, *notes(comparison)])


# ---- the report over sweeps --------------------------------------------------------------------------------
def applicable(
    jobs: list[Job], names: Sequence[str] | None = None
) -> list[tuple[PaperTable, list[Job]]]:
    """``(paper table, its jobs)`` for every paper table (or those of the layouts ``names``) whose
    experiments ran in ``jobs``."""
    chosen = []
    for paper in paper_tables():
        if names is not None and paper.layout not in names:
            continue
        own = [j for j in jobs if paper.applies_to(j.config.get("task_name"))]
        if own:
            chosen.append((paper, own))
    return chosen


def compare_sweeps(sweep_dirs: Sequence[str | Path], names: Sequence[str] | None = None) -> dict:
    """Every applicable comparison over the jobs of ``sweep_dirs`` (and their sibling folders)."""
    from histo_lightning.reporting.tables import check_layouts, layouts

    if names is not None:
        check_layouts(list(names))
    folders = folders_of(sweep_dirs)
    jobs = read_jobs(folders)
    registry = layouts()
    comparisons, results = [], []
    for paper, own in applicable(jobs, names):
        result = registry[paper.layout].build(own)
        if not result.get("cells"):
            continue
        comparisons.append(compare_table(paper, result["cells"]))
        results.append(result)
    holding = {j.dir.parent.resolve() for j in jobs}
    return {
        "sweep_dirs": [str(d) for d in sweep_dirs],
        "folders": [str(f) for f in folders if f.resolve() in holding],
        "n_jobs": len(jobs),
        "n_finished": sum(1 for j in jobs if j.status == FINISHED),
        "n_failed": sum(1 for j in jobs if j.status == "failed"),
        "experiments": sorted({str(j.config.get("task_name")) for j in jobs}),
        "synthetic_data": synthetic_data(jobs),
        "comparisons": comparisons,
        "tables": results,
        "jobs": jobs,
    }


def folders_of(sweep_dirs: Sequence[str | Path]) -> list[Path]:
    """The sweep folders and their siblings under other task names that exist, each once."""
    seen, out = set(), []
    for sweep in sweep_dirs:
        for folder in sweep_folders(sweep):
            key = folder.resolve()
            if folder.is_dir() and key not in seen:
                seen.add(key)
                out.append(folder)
    return out


def _summary_lines(report: dict[str, Any]) -> list[str]:
    parts = [f"{report['n_finished']} of {report['n_jobs']} jobs finished, {report['n_failed']} failed; experiments: {', '.join(report['experiments'])}."]  # fmt: skip
    if report["synthetic_data"]:
        parts.append(
            "**SYNTHETIC data** generated by histo-lightning in some or all rows (the Data column says "
            "which): such numbers test the pipeline; they say nothing about the paper's claims."
        )
    if not report["comparisons"]:
        parts.append(
            "No paper table applies to these jobs (none of their experiments is summarised by a "
            "transcribed table, or no job finished with the numbers a table needs)."
        )
    return parts


def to_markdown(report: dict[str, Any]) -> str:
    parts = ["# Paper vs ours", "\n".join(f"`{d}`" for d in report["folders"])]
    parts += _summary_lines(report)
    parts += [comparison_markdown(c) for c in report["comparisons"]]
    parts.append(
        "Δ = ours − paper in the paper's unit; within the paper's spread: |Δ| ≤ the paper's ± (one s.d. "
        "or standard error, as the table's note says). Ours: mean ± our own spread over n folds or "
        "repetitions."
    )
    return "\n\n".join(parts) + "\n"


# ---- HTML --------------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.25em 0.5em;text-align:left;vertical-align:top}
th{background:#eee} tr.no td{background:#fde8e8} tr.yes td{background:#e8f6e8}
.synthetic{color:#a00;font-weight:bold} figure{display:inline-block;margin:0.5em;max-width:45%}
figure img{max-width:100%} figcaption{font-size:0.8em;color:#555}
"""


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str) -> str:
    """The markdown this package writes (headings, pipe tables, lists, paragraphs) as HTML."""
    out = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = block.split("\n")
        if all(line.startswith("|") for line in lines):
            rows = [
                [c.strip() for c in line.strip().strip("|").split(" | ")]
                for line in lines
                if not re.fullmatch(r"\|(\s*-+\s*\|)+", line.strip())
            ]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif lines[0].startswith("#"):
            level = min(len(lines[0]) - len(lines[0].lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{_inline(lines[0].lstrip('#').strip())}</h{level}>")
            if len(lines) > 1:
                out.append(f"<p>{_inline(' '.join(lines[1:]))}</p>")
        elif all(line.startswith("- ") for line in lines):
            out.append(
                "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>"
            )
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def comparison_html(comparison: dict[str, Any]) -> str:
    title = html.escape(f"{comparison['title']} beside {comparison['layout']}")
    if comparison["synthetic"]:
        title += ' <span class="synthetic">SYNTHETIC data</span>'
    parts = [f"<h2>{title}</h2>"]
    if comparison["lines"]:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
        rows = []
        for line in comparison["lines"]:
            css = {True: "yes", False: "no"}.get(line["within"], "")
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in line_cells(line))
            rows.append(f'<tr class="{css}">{cells}</tr>')
        parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    else:
        parts.append("<p>No row of these sweeps maps to a row of this table.</p>")
    parts += [f"<p>{_inline(n)}</p>" for n in notes(comparison)]
    return "\n".join(parts)


def collect_plots(report: dict[str, Any]) -> tuple[list[tuple[str, Path]], list[str]]:
    """``(caption, png)`` of the sweeps' own plots and of each finished job's (at most
    :data:`PLOTS_PER_JOB`, attention heatmap galleries left out), within :data:`PLOT_BUDGET_BYTES`; and
    the ones left out."""
    candidates: list[tuple[str, Path]] = []
    for folder in map(Path, report["folders"]):
        candidates += [(f"{folder.name}/{p.name}", p) for p in sorted(folder.glob("*.png"))]
    for job in report["jobs"]:
        if job.status != FINISHED:
            continue
        own = [p for depth in ("*", "*/*", "*/*/*") for p in sorted(job.dir.glob(f"{depth}.png"))]
        own = [p for p in own if "heatmaps" not in p.parts]
        candidates += [(str(p.relative_to(job.dir.parent)), p) for p in own[:PLOTS_PER_JOB]]
    chosen, left_out, used = [], [], 0
    for caption, path in candidates:
        size = path.stat().st_size
        if used + size > PLOT_BUDGET_BYTES:
            left_out.append(caption)
            continue
        used += size
        chosen.append((caption, path))
    return chosen, left_out


def to_html(report: dict[str, Any]) -> str:
    """One self-contained page: the comparisons, the layouts' own tables, the plots as data URIs."""
    parts = ["<h1>Paper vs ours</h1>"]
    parts += [f"<p><code>{html.escape(f)}</code></p>" for f in report["folders"]]
    parts += [f"<p>{_inline(p)}</p>" for p in _summary_lines(report)]
    parts += [comparison_html(c) for c in report["comparisons"]]
    if report["tables"]:
        parts.append("<h1>The sweeps' tables</h1>")
        for table in report["tables"]:
            parts.append(f"<h2>{html.escape(table['title'])}</h2>")
            for label, body in table["sections"]:
                if label:
                    parts.append(f"<h3>{_inline(label)}</h3>")
                parts.append(markdown_to_html(body))
            if table.get("note"):
                parts.append(f"<p>{_inline(table['note'])}</p>")
    plots, left_out = collect_plots(report)
    if plots:
        parts.append("<h1>Plots</h1>")
        for caption, path in plots:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if left_out:
        parts.append(f"<p>Plots left out (size budget): {html.escape(', '.join(left_out))}</p>")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Paper vs ours</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_comparison(
    sweep_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    page: bool = True,
) -> tuple[Path, Path | None] | None:
    """Write ``paper_vs_ours.md`` and (``page``) ``.html`` into ``out_dir`` (default: the folder of the
    sweeps' first job); None when the sweeps hold no job yet."""
    report = compare_sweeps(sweep_dirs, names)
    if not report["jobs"]:
        return None
    out = Path(out_dir) if out_dir is not None else report["jobs"][0].dir.parent
    md = write_text_atomic(out / f"{OUT_NAME}.md", to_markdown(report))
    if not page:
        return md, None
    return md, write_text_atomic(out / f"{OUT_NAME}.html", to_html(report))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun folders to compare")
    parser.add_argument(
        "--layout", action="append", default=None, help="only this layout's table (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for paper_vs_ours.md|html")
    args = parser.parse_args(argv)
    for d in args.sweep_dirs:
        if not d.is_dir():
            parser.exit(2, f"error: {d} is not a directory\n")
    try:
        written = write_comparison(args.sweep_dirs, args.out, args.layout)
    except ValueError as err:
        parser.exit(2, f"error: --layout: {err}\n")
    if written is None:
        parser.exit(2, "error: no Hydra job folders (<n>_.../.hydra) in the given sweeps\n")
    print(written[0].read_text())
    print(f"wrote {written[0]} and {written[1]}")


if __name__ == "__main__":
    main()


__all__ = [
    "OUT_NAME",
    "applicable",
    "collect_plots",
    "compare_result",
    "compare_sweeps",
    "compare_table",
    "comparison_markdown",
    "markdown_to_html",
    "to_html",
    "to_markdown",
    "write_comparison",
]
