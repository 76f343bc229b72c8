"""The papers' numbers shipped in the package (histo_lightning/resources/papers/*.yaml) are the numbers printed
in the paper texts (``<repo>/../shared/papers/*.md``, or ``$HISTO_PAPERS_DIR``): every cell of every
transcribed table is found in its table's row of the text, and every loaded value equals the number
printed there. Without the paper texts beside the repository those checks are skipped (a clone alone must
pass); the package data itself never needs them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from histo_lightning.reporting.papers import (
    normalise_cell,
    paper_tables,
    parse_cell,
    table_for_layout,
)
from histo_lightning.reporting.tables import layouts

PAPERS_DIR = Path(
    os.environ.get("HISTO_PAPERS_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "papers"
)
needs_texts = pytest.mark.skipif(
    not PAPERS_DIR.is_dir(),
    reason=f"the paper texts are not beside the repository ({PAPERS_DIR} is absent; set HISTO_PAPERS_DIR)",
)


def table_rows(text: str, caption: str) -> list[list[str]]:
    """The tab-separated rows of the table whose caption line starts with ``caption``, leading empty cells
    filled from the row above (grouped rows such as SMSE Table III's margins under one No.)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(caption)]
    assert len(starts) == 1, f"caption {caption!r} found {len(starts)} times"
    rows: list[list[str]] = []
    for line in lines[starts[0] + 1 :]:
        if "\t" in line:
            cells = line.split("\t")
            for k, cell in enumerate(cells):
                if cell.strip() or not rows or k >= len(rows[-1]):
                    break
                cells[k] = rows[-1][k]
            rows.append(cells)
        elif rows:
            break
    assert rows, f"no table rows after {caption!r}"
    return rows


def _flat(text: str) -> str:
    return " ".join(text.split())


@needs_texts
@pytest.mark.parametrize("table", paper_tables(), ids=lambda t: f"{t.paper.key}-{t.name}")
def test_every_value_is_the_number_printed_in_the_paper(table) -> None:
    text = (PAPERS_DIR / table.paper.text).read_text(encoding="utf-8")
    checked = 0
    if table.caption is None:  # numbers printed in sentences: each cell with the sentence it is in
        flat = _flat(text)
        for row in table.rows:
            assert len(row.quotes) == len(table.columns), row.name
            for column, quote in zip(table.columns, row.quotes):
                assert _flat(quote) in flat, f"{row.name}: {quote!r} is not in {table.paper.text}"
                value = row.values[column.name]
                if value is None:
                    continue
                assert value.printed in quote, f"{value.printed} not in {quote!r}"
                if value.spread_printed:
                    assert value.spread_printed in quote
                checked += 1
        assert checked
        return
    rows = table_rows(text, table.caption)
    for row in table.rows:
        found = [
            r
            for r in rows
            if [normalise_cell(c) for c in r[: len(row.match)]]
            == [normalise_cell(m) for m in row.match]
        ]
        assert len(found) == 1, f"{table.name} row {row.match}: {len(found)} rows in the text"
        for column, cell in zip(table.columns, row.cells):
            printed = found[0][column.cell]
            if column.part is not None:
                printed = printed.split("/")[column.part]
            where = f"{table.name}, row {row.name}, column {column.name}"
            assert normalise_cell(printed) == normalise_cell(cell), f"{where}: {printed!r} printed"
            value = row.values[column.name]
            parsed = parse_cell(printed)
            assert (value is None) == (parsed is None), where
            if value is not None:
                assert value.value == parsed[0], where
                if parsed[1] is not None:
                    assert value.spread == parsed[1], where
                checked += 1
    assert checked == len(table.values())


def test_the_spreads_read_as_the_papers_own_numbers_support() -> None:
    # SMSE Table VI: Mean ± st.d. is the mean and the population s.d. of the five printed folds
    vi = table_for_layout("smse.table6")
    folds = [r.values["RR (%)"].value for r in vi.rows[:5]]
    mean = vi.rows[5].values["RR (%)"]
    assert round(float(np.mean(folds)), 2) == mean.value and round(float(np.std(folds)), 2) == mean.spread  # fmt: skip
    # Rakhlin Table 1: the fusion's std is the population s.d. of its ten printed folds; a model's is
    # larger than its folds' (it is over the 50 seed × fold values)
    t1 = table_for_layout("rakhlin.table1")
    rows = {r.name: r for r in t1.rows}
    fusion = [rows["Model fusion"].values[f"f{k}"].value for k in range(1, 11)]
    assert round(float(np.std(fusion)), 1) == rows["Model fusion"].values["mean"].spread == 2.6
    resnet = [rows["ResNet-400"].values[f"f{k}"].value for k in range(1, 11)]
    assert round(float(np.std(resnet)), 1) == 3.9 < rows["ResNet-400"].values["mean"].spread == 4.2
    # CHS-Net Table 3: the AVE. row is pooled from the Total row, its derived spread the folds' s.d.
    t3 = {r.name: r for r in table_for_layout("chsnet.table3").rows}
    fp, tp = t3["Total"].values["FP"].value, t3["Total"].values["TP"].value
    ave = t3["AVE."].values["Precision"]
    assert round(tp / (tp + fp), 4) == ave.value and ave.spread_derived
    assert ave.spread == pytest.approx(np.std([t3[str(k)].values["Precision"].value for k in range(1, 6)]))  # fmt: skip
    # Li: every value of the methods has the standard error of five repetitions
    li = table_for_layout("mil.table1")
    assert {v.spread_kind for v in li.values()} == {"SE over 5 repetitions"}


def test_every_paper_table_sits_beside_a_registered_layout() -> None:
    registered = layouts()
    tables = paper_tables()
    assert {t.layout for t in tables} == set(registered)  # one paper table per layout, no orphans
    for table in tables:
        assert table.experiments and table.values()
        for row in table.rows:
            assert row.ours is None or row.ours, f"{table.title} row {row.name}: empty mapping"
