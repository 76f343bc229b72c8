"""The BreakHis reader on hand-built trees in the distributed layout (file names parsed, folds read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_lightning.data.datasets.breakhis import parse_filename, read_official_folds, scan
from histo_lightning.errors import DatasetLayoutError

BREAST = Path("BreaKHis_v1/histology_slides/breast")
PATIENTS = [
    ("B", "A", "adenosis", "22549AB"),
    ("M", "DC", "ductal_carcinoma", "2773"),
    ("M", "LC", "lobular_carcinoma", "13412"),
]


def make_tree(root: Path, n_per_mag: int = 2) -> list[str]:
    names = []
    for cls, code, subtype, slide in PATIENTS:
        class_dir = "benign" if cls == "B" else "malignant"
        for mag in (40, 100, 200, 400):
            folder = (
                root
                / BREAST
                / class_dir
                / "SOB"
                / subtype
                / f"SOB_{cls}_{code}_14-{slide}"
                / f"{mag}X"
            )
            folder.mkdir(parents=True, exist_ok=True)
            for seq in range(1, n_per_mag + 1):
                name = f"SOB_{cls}_{code}-14-{slide}-{mag}-{seq:03d}.png"
                Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(folder / name)
                names.append(name)
    return names


@pytest.mark.parametrize(
    ("name", "patient", "label", "mag", "subtype"),
    [
        ("SOB_B_A-14-22549AB-40-001.png", "22549AB", 0, 40, "adenosis"),
        ("SOB_M_DC-14-2773-100-012.png", "2773", 1, 100, "ductal_carcinoma"),
        ("SOB_B_PT-14-21998AB-200-005.png", "21998AB", 0, 200, "phyllodes_tumor"),
        ("SOB_M_MC-14-13418DE-400-010.png", "13418DE", 1, 400, "mucinous_carcinoma"),
    ],
)
def test_parse_filename(name: str, patient: str, label: int, mag: int, subtype: str) -> None:
    fields = parse_filename(name)
    assert (fields["patient"], fields["label"], fields["magnification"], fields["subtype"]) == (
        patient,
        label,
        mag,
        subtype,
    )


@pytest.mark.parametrize(
    "name",
    [
        "SOB_B_A-14-22549AB-50-001.png",
        "SOB_X_A-14-1-40-001.png",
        "SOB_B_A-14-22549AB-40-001.jpg",
        "img.png",
    ],
)
def test_parse_filename_rejects(name: str) -> None:
    assert parse_filename(name) is None


def test_scan_reads_the_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    table = scan(tmp_path)
    assert len(table) == 3 * 4 * 2
    assert sorted(table["patient"].unique()) == ["13412", "22549AB", "2773"]
    assert table.groupby("patient")["label"].first().to_dict() == {
        "13412": 1,
        "22549AB": 0,
        "2773": 1,
    }
    assert sorted(table["magnification"].unique()) == [40, 100, 200, 400]
    assert (table["group"] == table["magnification"]).all()
    # pointing at BreaKHis_v1 itself works too
    assert len(scan(tmp_path / "BreaKHis_v1")) == len(table)


def test_scan_errors_name_the_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetLayoutError, match=r"/does/not/exist.*does not exist.*BreaKHis_v1/histology_slides"
    ):
        scan("/does/not/exist")
    with pytest.raises(DatasetLayoutError, match="has no BreaKHis_v1/histology_slides/breast"):
        scan(tmp_path)
    (tmp_path / BREAST).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no BreakHis images found"):
        scan(tmp_path)


def test_scan_rejects_files_that_disagree_with_their_folders(tmp_path: Path) -> None:
    make_tree(tmp_path)
    wrong = next((tmp_path / BREAST).glob("benign/SOB/adenosis/*/40X/*.png"))
    wrong.rename(wrong.with_name(wrong.name.replace("-40-", "-100-")))
    with pytest.raises(DatasetLayoutError, match="name or folders disagree"):
        scan(tmp_path)


def _folds_csv(names: list[str], header: str, test_patient: str = "2773") -> str:
    lines = [header]
    for fold in (1, 2):
        for name in names:
            mag = name.split("-")[3]
            grp = (
                "test"
                if (test_patient in name and fold == 1) or ("22549AB" in name and fold == 2)
                else "train"
            )
            lines.append(
                f"{fold},{mag},{grp},{BREAST.parent.parent}/histology_slides/breast/x/{name}"
            )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "header", ["fold,mag,grp,filename", "Fold,Mag,Grp,Filename", "fold,magnification,group,path"]
)
def test_official_folds_csv_variants(tmp_path: Path, header: str) -> None:
    names = make_tree(tmp_path)
    (tmp_path / "Folds.csv").write_text(_folds_csv(names, header))
    folds, source = read_official_folds(tmp_path, scan(tmp_path))
    assert source.endswith("Folds.csv")
    tests = folds[folds["subset"] == "test"].groupby("fold")["patient"].unique()
    assert list(tests[1]) == ["2773"] and list(tests[2]) == ["22549AB"]


def test_official_folds_columns_in_another_order(tmp_path: Path) -> None:
    names = make_tree(tmp_path)
    rows = ["filename,grp,fold,mag"] + [
        f"{n},{'test' if '2773' in n else 'train'},1,40" for n in names
    ]
    (tmp_path / "Folds.csv").write_text("\n".join(rows) + "\n")
    folds, _ = read_official_folds(tmp_path, scan(tmp_path))
    assert set(folds.loc[folds["subset"] == "test", "patient"]) == {"2773"}


def test_official_dsfold_txt(tmp_path: Path) -> None:
    names = make_tree(tmp_path)
    for fold in (1, 2):
        lines = [
            f"{n}|{n.split('-')[3]}|{fold}|{'test' if '13412' in n else 'train'}" for n in names
        ]
        (tmp_path / f"dsfold{fold}.txt").write_text("\n".join(lines) + "\n")
    folds, source = read_official_folds(tmp_path, scan(tmp_path))
    assert "dsfold" in source and sorted(folds["fold"].unique()) == [1, 2]


def test_bad_folds_csv_is_named(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "Folds.csv").write_text("a,b\n1,2\n")
    with pytest.raises(
        DatasetLayoutError, match=r"Folds.csv: expected columns fold, mag, grp, filename"
    ):
        read_official_folds(tmp_path, scan(tmp_path))


def test_no_fold_file_means_none(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert read_official_folds(tmp_path, scan(tmp_path)) is None
