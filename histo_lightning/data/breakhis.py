"""BreakHis (Spanhol et al. 2016): reader for the distributed layout and its data module.

Layout (``dataset.root`` is the folder that holds ``BreaKHis_v1/``; pointing at ``BreaKHis_v1`` itself
works too)::

    <root>/BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient folder>/
        {40X,100X,200X,400X}/SOB_B_A-14-22549AB-40-001.png
    <root>/Folds.csv            (optional: the dataset's five patient-wise train/test splits)

A file name is procedure_class_subtype-year-slideID-magnification-sequence. Class (B/M), subtype, slide
ID, magnification and sequence are parsed from the name and checked against the folders. The patient is
the slide ID: in the public release one slide ID (13412) appears under two malignant subtypes; keying
patients by slide ID keeps those images together in one fold (81 patients instead of the 82 folders).

``Folds.csv`` (header seen in public loaders as ``fold,mag,grp,filename``; the exact header is
unconfirmed, so column names are matched case-insensitively in any order, with ``group``/``magnification``
/``path`` accepted too) and the older ``dsfold<N>.txt`` files (``<file>|<mag>|<fold>|<train/test>``) are
both read when present. Folds are matched to images by file name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from histo_lightning.data.datamodule import HistoDataModule
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

MAGNIFICATIONS = (40, 100, 200, 400)
CLASSES = ("benign", "malignant")
SUBTYPES = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
FILENAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>A|F|PT|TA|DC|LC|MC|PC)-(?P<year>\d{2})-(?P<slide>[0-9A-Z]+)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$"
)
LAYOUT = (
    "<root>/BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient folder>/"
    "{40X,100X,200X,400X}/SOB_<B|M>_<subtype>-<yy>-<slideID>-<mag>-<seq>.png (optional <root>/Folds.csv)"
)


def parse_filename(name: str) -> dict[str, Any] | None:
    """Fields of a BreakHis file name, or None if it is not one.

    >>> parse_filename("SOB_B_A-14-22549AB-40-001.png")["patient"]
    '22549AB'
    """
    match = FILENAME.match(name)
    if match is None:
        return None
    cls = "benign" if match["cls"] == "B" else "malignant"
    return {
        "class_name": cls,
        "label": CLASSES.index(cls),
        "subtype": SUBTYPES[match["subtype"]],
        "patient": match["slide"],
        "magnification": int(match["mag"]),
        "sequence": int(match["seq"]),
    }


def breast_dir(root: Path) -> Path | None:
    """``.../histology_slides/breast`` under ``root`` (or under ``root`` = ``BreaKHis_v1``), if present."""
    for candidate in (
        root / "BreaKHis_v1" / "histology_slides" / "breast",
        root / "histology_slides" / "breast",
    ):
        if candidate.is_dir():
            return candidate
    return None


def scan(root: str | Path) -> pd.DataFrame:
    """Every image under a BreakHis root, one row each.

    Columns: ``path, filename, class_name, label, subtype, patient, magnification, sequence, group``
    (``group`` = magnification, used for per-magnification metrics).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected the BreakHis layout {LAYOUT}"
        )
    breast = breast_dir(root)
    if breast is None:
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) has no BreaKHis_v1/histology_slides/breast; expected {LAYOUT}"
        )
    rows = []
    for path in sorted(breast.glob("*/SOB/*/*/*/*.png")):
        fields = parse_filename(path.name)
        class_dir, _, subtype_dir, _, mag_dir = path.parts[-6:-1]
        if (
            fields is None
            or class_dir != fields["class_name"]
            or subtype_dir != fields["subtype"]
            or mag_dir != f"{fields['magnification']}X"
        ):
            raise DatasetLayoutError(
                f"{path} does not fit the BreakHis layout: its name or folders disagree; expected {LAYOUT}"
            )
        rows.append({"path": str(path), "filename": path.name, **fields})
    if not rows:
        raise DatasetLayoutError(f"no BreakHis images found under {breast}; expected {LAYOUT}")
    table = pd.DataFrame(rows)
    table["group"] = table["magnification"]
    return table


_FOLD_COLUMNS = {
    "fold": "fold",
    "mag": "mag",
    "magnification": "mag",
    "grp": "grp",
    "group": "grp",
    "filename": "filename",
    "file": "filename",
    "path": "filename",
}


def _read_folds_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise DatasetLayoutError(
            f"{path} is empty; expected a header 'fold,mag,grp,filename' and one row per image and fold"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise DatasetLayoutError(f"{path} is not a readable CSV ({reason})") from None
    renamed = {c: _FOLD_COLUMNS.get(c.strip().lower()) for c in frame.columns}
    if {"fold", "grp", "filename"} - set(renamed.values()):
        raise DatasetLayoutError(
            f"{path}: expected columns fold, mag, grp, filename (any case/order); found {list(frame.columns)}"
        )
    frame = frame.rename(columns=renamed)
    return frame[["fold", "grp", "filename"]]


def _read_dsfold_txt(paths: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split("|")
            if len(parts) != 4:
                raise DatasetLayoutError(
                    f"{path}:{n}: expected '<file>|<mag>|<fold>|<train|test>', got {line!r}"
                )
            rows.append({"filename": parts[0], "fold": parts[2], "grp": parts[3]})
    return pd.DataFrame(rows)


def read_official_folds(root: str | Path, table: pd.DataFrame) -> tuple[pd.DataFrame, str] | None:
    """BreakHis' own folds as ``fold, patient, subset`` rows (one per image), or None if no fold file."""
    root = Path(root)
    search = [root, root.parent] if root.name == "BreaKHis_v1" else [root]
    for folder in search:
        if (folder / "Folds.csv").is_file():
            source, frame = folder / "Folds.csv", _read_folds_csv(folder / "Folds.csv")
            break
        dsfolds = sorted(folder.glob("dsfold*.txt"))
        if dsfolds:
            source, frame = dsfolds[0], _read_dsfold_txt(dsfolds)
            break
    else:
        return None
    if frame.empty:
        raise DatasetLayoutError(
            f"{source} has no rows; expected one 'fold,mag,grp,filename' row per image and fold"
        )
    frame = frame.assign(
        filename=frame["filename"].map(lambda f: Path(str(f).replace("\\", "/")).name),
        subset=frame["grp"].str.strip().str.lower(),
    )
    bad = set(frame["subset"]) - {"train", "test"}
    if bad:
        raise DatasetLayoutError(f"{source}: group values must be train/test, found {sorted(bad)}")
    try:
        frame["fold"] = frame["fold"].astype(int)
    except ValueError as err:
        raise DatasetLayoutError(f"{source}: fold column must hold integers ({err})") from err
    patient_of = dict(zip(table["filename"], table["patient"]))
    frame["patient"] = frame["filename"].map(patient_of)
    in_use = set(table["magnification"])
    unknown = frame[frame["patient"].isna()]
    parsed = [parse_filename(name) for name in unknown["filename"]]
    absent = sorted(
        {
            name
            for name, p in zip(unknown["filename"], parsed)
            if p is None or p["magnification"] in in_use
        }
    )
    if absent:
        raise DatasetLayoutError(
            f"{source} names {len(absent)} image(s) that are not under {root}, e.g. {absent[0]}; "
            f"expected every image it lists in {LAYOUT} (an incomplete download?)"
        )
    if len(unknown):
        log.info(f"{source}: {len(unknown)} rows name images at magnifications not in use; ignored")
    frame = frame.dropna(subset=["patient"])
    if frame.empty:
        raise DatasetLayoutError(f"{source} lists none of the images in use under {root}")
    return frame[["fold", "patient", "subset"]], str(source)


class BreakHisDataModule(HistoDataModule):
    """BreakHis, magnification-independent by default (all four magnifications pooled).

    Args:
        root: the folder holding ``BreaKHis_v1/`` (``dataset.root``); unused when ``synthetic`` is set.
        magnifications: which magnification folders to use (default all four).
        synthetic: generator settings (:class:`~histo_lightning.data.synthetic.breakhis.SyntheticBreakHisConfig`
            fields). When given, a synthetic BreakHis tree is generated once under ``synthetic_dir`` and read
            with the same code as the real one. Only ``dataset=breakhis_synthetic`` sets this.
        synthetic_dir: where synthetic datasets are generated (``${paths.data_dir}``).
        **kwargs: :class:`HistoDataModule` arguments.
    """

    def __init__(
        self,
        root: str | None = None,
        magnifications: Sequence[int] = MAGNIFICATIONS,
        synthetic: Mapping[str, Any] | None = None,
        synthetic_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(int(m) for m in magnifications) - set(MAGNIFICATIONS))
        if unknown or not magnifications:
            raise ConfigError(
                f"dataset.magnifications={list(magnifications)}: each must be one of {list(MAGNIFICATIONS)}"
            )
        if synthetic is not None and root is not None:
            raise ConfigError(
                "dataset.root is set, but dataset=breakhis_synthetic generates its own data under paths.data_dir; "
                "use dataset=breakhis dataset.root=... for real BreakHis"
            )
        if synthetic is None and root is None:
            raise ConfigError(
                "dataset.root is not set: point it at the folder holding BreaKHis_v1/"
            )
        self.magnifications = sorted(int(m) for m in magnifications)
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.synthetic_dir = Path(synthetic_dir) if synthetic_dir else None
        self._root = Path(root) if root is not None else None

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None

    def _synthetic_config(self) -> Any:
        from histo_lightning.data.synthetic.breakhis import SyntheticBreakHisConfig

        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.synthetic.items()}
        return SyntheticBreakHisConfig(**fields)

    @property
    def name(self) -> str:
        if self.is_synthetic:
            return f"breakhis_synthetic-{self._synthetic_config().fingerprint()}"
        return "breakhis"

    @property
    def root(self) -> Path:
        if self._root is None:
            from histo_lightning.data.synthetic.breakhis import ensure_synthetic_breakhis

            if self.synthetic_dir is None:
                raise ConfigError(
                    "dataset.synthetic_dir is not set (where to generate synthetic BreakHis)"
                )
            self._root = ensure_synthetic_breakhis(
                self.synthetic_dir, self._synthetic_config(), workers=self.prepare_workers
            )
        return self._root

    def load_table(self) -> pd.DataFrame:
        table = scan(self.root)
        table = table[table["magnification"].isin(self.magnifications)].reset_index(drop=True)
        if table.empty:
            raise DatasetLayoutError(
                f"no images at magnifications {self.magnifications} under {self.root}"
            )
        return table

    def official_folds(self, table: pd.DataFrame) -> tuple[pd.DataFrame, str] | None:
        return read_official_folds(self.root, table)
