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
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from histo_lightning.data.image_datamodule import ImageTableDataModule
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
#: subtype codes of each class, in the order of ``SUBTYPES``
CLASS_SUBTYPES = {"benign": ("A", "F", "PT", "TA"), "malignant": ("DC", "LC", "MC", "PC")}
#: the images' folder below the dataset root, and the fold file beside ``BreaKHis_v1/``
BREAST_DIR = "BreaKHis_v1/histology_slides/breast"
FOLDS_FILE = "Folds.csv"
_SUBTYPE_CODES = "|".join(SUBTYPES)
FILENAME = re.compile(
    rf"^SOB_(?P<cls>[BM])_(?P<subtype>{_SUBTYPE_CODES})-(?P<year>\d{{2}})-(?P<slide>[0-9A-Z]+)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$"
)
PATIENT_DIR = re.compile(
    rf"^SOB_(?P<cls>[BM])_(?P<subtype>{_SUBTYPE_CODES})_(?P<year>\d{{2}})-(?P<slide>[0-9A-Z]+)$"
)
LAYOUT = (
    "<root>/BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient folder>/"
    "{40X,100X,200X,400X}/SOB_<B|M>_<subtype>-<yy>-<slideID>-<mag>-<seq>.png (optional <root>/Folds.csv)"
)


def patient_folder(class_code: str, subtype_code: str, year: int, slide: str) -> str:
    """A patient's folder name, e.g. ``SOB_B_A_14-22549AB`` (the inverse of :data:`PATIENT_DIR`)."""
    return f"SOB_{class_code}_{subtype_code}_{year:02d}-{slide}"


def file_name(
    class_code: str, subtype_code: str, year: int, slide: str, magnification: int, seq: int
) -> str:
    """An image's file name, e.g. ``SOB_B_A-14-22549AB-40-001.png`` (the inverse of :func:`parse_filename`)."""
    return f"SOB_{class_code}_{subtype_code}-{year:02d}-{slide}-{magnification}-{seq:03d}.png"


def image_path(
    class_code: str, subtype_code: str, year: int, slide: str, magnification: int, seq: int
) -> PurePosixPath:
    """An image's path relative to the dataset root (as written in ``Folds.csv``)."""
    return (
        PurePosixPath(BREAST_DIR)
        / CLASSES["BM".index(class_code)]
        / "SOB"
        / SUBTYPES[subtype_code]
        / patient_folder(class_code, subtype_code, year, slide)
        / f"{magnification}X"
        / file_name(class_code, subtype_code, year, slide, magnification, seq)
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
    for candidate in (root / BREAST_DIR, root / BREAST_DIR.split("/", 1)[1]):
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
        if (folder / FOLDS_FILE).is_file():
            source, frame = folder / FOLDS_FILE, _read_folds_csv(folder / FOLDS_FILE)
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


class BreakHisDataModule(ImageTableDataModule):
    """BreakHis, magnification-independent by default (all four magnifications pooled).

    Args:
        magnifications: which magnification folders to use (default all four).
        **kwargs: :class:`~histo_lightning.data.image_datamodule.ImageTableDataModule` arguments; ``root`` is the
            folder holding ``BreaKHis_v1/``, or ``synthetic`` (only ``dataset=breakhis_synthetic`` sets it:
            :class:`~histo_lightning.data.synthetic.breakhis.SyntheticBreakHisConfig` fields) generates a
            synthetic BreakHis tree once under ``synthetic_dir``, read with the same code as the real one.
    """

    dataset_name = "breakhis"
    display_name = "BreakHis"
    root_hint = "the folder holding BreaKHis_v1/"
    synthetic_module = "histo_lightning.data.synthetic.breakhis"

    def __init__(self, magnifications: Sequence[int] = MAGNIFICATIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(int(m) for m in magnifications) - set(MAGNIFICATIONS))
        if unknown or not magnifications:
            raise ConfigError(
                f"dataset.magnifications={list(magnifications)}: each must be one of {list(MAGNIFICATIONS)}"
            )
        self.magnifications = sorted(int(m) for m in magnifications)

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

    def sample_settings(self) -> dict[str, Any]:
        return {**super().sample_settings(), "magnifications": self.magnifications}
