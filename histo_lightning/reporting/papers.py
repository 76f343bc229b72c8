"""The papers' published numbers, shipped with the package: ``histo_lightning/resources/papers/*.yaml``.

One YAML file per paper (``chsnet``, ``smse``, ``li_mil``, ``rakhlin``) holds every table the project lays
out (the layouts of :mod:`histo_lightning.reporting.tables`), transcribed from the paper text, and the map
from the paper's rows and columns to ours — the one place that says which of our settings a paper row is:

* ``paper``: ``key``, ``short`` (how tables cite it), ``citation``, ``text`` (the file name of the paper
  in ``../shared/papers/``, against which ``tests/test_paper_data.py`` checks every cell);
* ``tables``: each with ``name`` (Table III), ``caption`` (how the table starts in the text; null for
  numbers printed in sentences), ``layout`` (ours, e.g. ``smse.table3``), ``experiments`` (the
  experiment names, shell patterns, whose sweeps it applies to), ``scale`` (paper value = ours × scale:
  100 where the paper prints %), ``spread`` (what its ± means, in words), ``columns`` and ``rows``;
* a column: ``name``, ``cell`` (its index in the table's tab-separated rows of the text), ``part``
  (``0``/``1`` of a ``P/N`` cell), ``ours`` (the key of our value in the layout's cells, e.g.
  ``test/rr``), optional ``scale``, ``spread_from`` (another column holding this one's spread, e.g.
  Rakhlin's ``std``) and ``when`` (our row settings a comparison needs, e.g. ``{split: official}``);
* a row: ``name``, ``match`` (its leading cells in the text), ``ours`` (the settings of our rows it is;
  ``null``: a method this project does not implement), ``cells`` (as printed, one per column: ``0.880 ±
  0.026``, ``86.27``, ``NA``, ``-``), ``spread_kind`` (what its ±, if any, is over), optional
  ``spread_from_rows`` (the per-fold rows whose population s.d. is a derived spread, said so) and
  ``quotes`` (for numbers printed in sentences: the sentence of each cell) and ``note`` (an
  inconsistency of the printed row, e.g. a precision its own counts do not give).

The files are read with :func:`importlib.resources` (no access outside the package at run time).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

PAPER_FILES = ("chsnet.yaml", "smse.yaml", "li_mil.yaml", "rakhlin.yaml")
_NUMBER = re.compile(r"^([-+]?\d+(?:\.\d+)?)(?:±(\d+(?:\.\d+)?))?$")
#: printed cells that hold no number
EMPTY_CELLS = ("", "-", "NA", "-/-")


def normalise_cell(text: str) -> str:
    """A printed cell without markup and spaces: ``<b>0.948</b> $\\pm$ 0.004`` → ``0.948±0.004``."""
    text = str(text)
    for tag in ("<b>", "</b>", "<i>", "</i>", "<math>", "</math>", "$"):
        text = text.replace(tag, "")
    text = text.replace("\\pm", "±").replace("\\%", "%")
    return "".join(text.split())


def parse_cell(text: str) -> tuple[float, float | None, str, str | None] | None:
    """``(value, spread, value as printed, spread as printed)`` of a cell, None for an empty one.

    Raises ``ValueError`` for a cell that is neither a number, ``number ± number`` nor empty.
    """
    cell = normalise_cell(text).removesuffix("%")
    if cell in EMPTY_CELLS:
        return None
    found = _NUMBER.match(cell)
    if not found:
        raise ValueError(f"not a number or 'number ± number': {text!r}")
    value, spread = found.groups()
    return float(value), (float(spread) if spread else None), value, spread


def decimals(printed: str) -> int:
    """Digits after the point of a printed number (``0.880`` → 3)."""
    return len(printed.split(".", 1)[1]) if "." in printed else 0


@dataclass(frozen=True)
class PaperInfo:
    key: str
    short: str
    citation: str
    text: str


@dataclass(frozen=True)
class PaperColumn:
    name: str
    ours: str
    scale: float
    cell: int | None = None
    part: int | None = None
    spread_from: str | None = None
    when: dict[str, Any] = field(default_factory=dict)

    def applies(self, row: dict[str, Any]) -> bool:
        """Whether our row's settings allow comparing this column (``when``)."""
        return all(same_setting(row.get(k), v) for k, v in self.when.items())


@dataclass(frozen=True)
class PaperValue:
    """One published number with its citation: paper, table, row, column, and its spread if any."""

    paper: str
    table: str
    row: str
    column: str
    value: float
    printed: str
    spread: float | None
    spread_printed: str | None
    spread_kind: str | None
    spread_derived: bool = False

    @property
    def digits(self) -> int:
        return decimals(self.printed)

    def citation(self) -> dict[str, str]:
        return {"paper": self.paper, "table": self.table, "row": self.row, "column": self.column}

    def shown(self) -> str:
        """As printed, with its spread: ``0.880 ± 0.026``; a derived spread in brackets."""
        if self.spread is None:
            return self.printed
        if self.spread_derived:
            return f"{self.printed} (± {self.spread:.{self.digits}f} derived)"
        return f"{self.printed} ± {self.spread_printed}"


@dataclass(frozen=True)
class PaperRow:
    name: str
    match: tuple[str, ...]
    ours: dict[str, Any] | None
    cells: tuple[str, ...]
    values: dict[str, PaperValue | None]
    quotes: tuple[str, ...] = ()
    note: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether our row (its settings) is this paper row."""
        return self.ours is not None and all(
            same_setting(row.get(k), v) for k, v in self.ours.items()
        )


@dataclass(frozen=True)
class PaperTable:
    paper: PaperInfo
    name: str
    caption: str | None
    layout: str
    experiments: tuple[str, ...]
    scale: float
    spread: str
    columns: tuple[PaperColumn, ...]
    rows: tuple[PaperRow, ...]

    def applies_to(self, task_name: str | None) -> bool:
        """Whether jobs of experiment ``task_name`` are summarised by this table."""
        return task_name is not None and any(
            fnmatch.fnmatchcase(str(task_name), p) for p in self.experiments
        )

    @property
    def title(self) -> str:
        return f"{self.paper.short}, {self.name}"

    def values(self) -> list[PaperValue]:
        return [v for row in self.rows for v in row.values.values() if v is not None]


def same_setting(ours: Any, paper: Any) -> bool:
    """Equal settings; numbers compare as numbers (``2`` is ``2.0``), anything else as text."""
    if isinstance(ours, bool) or isinstance(paper, bool):
        return ours is paper
    if isinstance(ours, (int, float)) and isinstance(paper, (int, float)):
        return math.isclose(float(ours), float(paper), rel_tol=1e-9, abs_tol=1e-12)
    if ours is None or paper is None:
        return ours is None and paper is None
    return str(ours) == str(paper)


def _table(paper: PaperInfo, spec: dict[str, Any], source: str) -> PaperTable:
    scale = float(spec.get("scale", 1))
    columns = tuple(
        PaperColumn(
            name=str(c["name"]),
            ours=str(c["ours"]),
            scale=float(c.get("scale", scale)),
            cell=c.get("cell"),
            part=c.get("part"),
            spread_from=c.get("spread_from"),
            when=dict(c.get("when") or {}),
        )
        for c in spec["columns"]
    )
    where = f"{source}: {spec['name']}"
    parsed: dict[str, list] = {}
    for row in spec["rows"]:
        cells = [str(c) for c in row["cells"]]
        if len(cells) != len(columns):
            raise ValueError(
                f"{where}, row {row['name']}: {len(cells)} cells for {len(columns)} columns"
            )
        try:
            parsed[str(row["name"])] = [parse_cell(c) for c in cells]
        except ValueError as err:
            raise ValueError(f"{where}, row {row['name']}: {err}") from None
    names = [c.name for c in columns]
    rows = []
    for row in spec["rows"]:
        name = str(row["name"])
        values: dict[str, PaperValue | None] = {}
        for k, column in enumerate(columns):
            cell = parsed[name][k]
            if cell is None:
                values[column.name] = None
                continue
            value, spread, printed, spread_printed = cell
            derived = False
            if spread is None and column.spread_from:
                source_cell = parsed[name][names.index(column.spread_from)]
                if source_cell is not None:
                    spread, spread_printed = source_cell[0], source_cell[2]
            if spread is None and row.get("spread_from_rows"):
                others = [parsed[str(r)][k] for r in row["spread_from_rows"]]
                if all(o is not None for o in others):
                    spread, derived = float(np.std([o[0] for o in others])), True
            kind = None
            if spread is not None:
                kind = (
                    f"population s.d. of the printed rows {', '.join(map(str, row['spread_from_rows']))} (derived, not printed)"
                    if derived
                    else str(row.get("spread_kind") or spec.get("spread", ""))
                )
            values[column.name] = PaperValue(
                paper=paper.short,
                table=str(spec["name"]),
                row=name,
                column=column.name,
                value=value,
                printed=printed,
                spread=spread,
                spread_printed=spread_printed,
                spread_kind=kind,
                spread_derived=derived,
            )
        rows.append(
            PaperRow(
                name=name,
                match=tuple(str(m) for m in row.get("match") or ()),
                ours=dict(row["ours"]) if row.get("ours") is not None else None,
                cells=tuple(str(c) for c in row["cells"]),
                values=values,
                quotes=tuple(str(q) for q in row.get("quotes") or ()),
                note=row.get("note"),
            )
        )
    return PaperTable(
        paper=paper,
        name=str(spec["name"]),
        caption=spec.get("caption"),
        layout=str(spec["layout"]),
        experiments=tuple(str(e) for e in spec.get("experiments") or ()),
        scale=scale,
        spread=" ".join(str(spec.get("spread", "")).split()),
        columns=columns,
        rows=tuple(rows),
    )


@cache
def paper_tables() -> tuple[PaperTable, ...]:
    """Every transcribed table of every paper, in file order."""
    folder = resources.files("histo_lightning").joinpath("resources", "papers")
    tables = []
    for name in PAPER_FILES:
        data = yaml.safe_load(folder.joinpath(name).read_text(encoding="utf-8"))
        info = PaperInfo(**{k: str(data["paper"][k]) for k in ("key", "short", "citation", "text")})
        tables += [_table(info, spec, name) for spec in data["tables"]]
    return tuple(tables)


def table_for_layout(layout: str) -> PaperTable | None:
    """The paper table beside our layout ``layout`` (None for layouts without one)."""
    return next((t for t in paper_tables() if t.layout == layout), None)


def tables_for_experiments(task_names: set[str]) -> list[PaperTable]:
    """The paper tables that summarise jobs of any of the experiments ``task_names``."""
    return [t for t in paper_tables() if any(t.applies_to(n) for n in task_names)]


__all__ = [
    "PaperColumn",
    "PaperInfo",
    "PaperRow",
    "PaperTable",
    "PaperValue",
    "decimals",
    "normalise_cell",
    "paper_tables",
    "parse_cell",
    "same_setting",
    "table_for_layout",
    "tables_for_experiments",
]
