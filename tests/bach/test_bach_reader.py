"""The BACH reader on tiny trees in the real layout: labels, counts, ground-truth checks, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from histo_lightning.data.datasets.bach import (
    CLASS_NAMES,
    CLASS_PREFIXES,
    GROUND_TRUTH_FILE,
    check_one_size,
    scan_bach,
)
from histo_lightning.errors import ConfigError, DatasetLayoutError, HistoError


def write_tiny_bach(
    root: Path,
    per_class: int = 3,
    n_test: int = 12,
    csv: bool = True,
    suffix: str = ".tif",
    size: tuple[int, int] = (12, 16),
) -> Path:
    """A BACH tree of small TIFFs in the distributed layout; returns ``root``."""
    rng = np.random.default_rng(0)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    lines = []
    for name, prefix in zip(CLASS_NAMES, CLASS_PREFIXES):
        (photos / name).mkdir(parents=True)
        for i in range(1, per_class + 1):
            file = f"{prefix}{i:03d}{suffix}"
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            assert cv2.imwrite(str(photos / name / file), pixels)
            lines.append(f"{prefix}{i:03d}.tif,{name}")
    if csv:
        (photos / GROUND_TRUTH_FILE).write_text("\n".join(sorted(lines)) + "\n")
    test = root / "ICIAR2018_BACH_Challenge_TestDataset" / "Photos"
    test.mkdir(parents=True)
    for i in range(n_test):
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        assert cv2.imwrite(str(test / f"test{i}.tif"), pixels)
    return root


def test_labels_counts_and_order(tmp_path: Path) -> None:
    found = scan_bach(write_tiny_bach(tmp_path))
    counts = found.describe()
    assert counts["n_labelled"] == 12 and counts["n_test"] == 12
    assert counts["per_class"] == {name: 3 for name in CLASS_NAMES}
    assert counts["ground_truth"].endswith(GROUND_TRUTH_FILE)
    labelled = found.labelled
    assert list(labelled["index"]) == list(range(12))
    assert labelled["label"].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert labelled["patient"].tolist()[:4] == ["n001", "n002", "n003", "b001"]
    assert labelled["origin"][0] == "ICIAR2018_BACH_Challenge/Photos/Normal/n001.tif"
    assert Path(labelled["path"][0]).is_file()
    # numeric, not lexicographic, order of the test images; unlabelled
    assert found.test["image"].tolist() == [f"test{i}.tif" for i in range(12)]
    assert (found.test["label"] == -1).all()
    assert "12 labelled images (Normal 3, Benign 3, InSitu 3, Invasive 3), 12 unlabelled" in (
        found.summary()
    )


def test_root_may_be_the_challenge_folder_and_the_csv_is_optional(tmp_path: Path) -> None:
    write_tiny_bach(tmp_path, csv=False)
    found = scan_bach(tmp_path / "ICIAR2018_BACH_Challenge")
    assert found.root == tmp_path and len(found.labelled) == 12 and len(found.test) == 12
    assert found.ground_truth is None and "labels from the folders" in found.summary()


@pytest.mark.parametrize("suffix", [".TIF", ".tiff", ".Tif"])
def test_extension_case_variants(tmp_path: Path, suffix: str) -> None:
    found = scan_bach(write_tiny_bach(tmp_path, suffix=suffix, n_test=0))
    assert len(found.labelled) == 12 and found.labelled["image"][0] == f"n001{suffix}"
    assert found.test.empty


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, HistoError)
    return message


def test_missing_class_folder(tmp_path: Path) -> None:
    root = write_tiny_bach(tmp_path)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    for file in (photos / "InSitu").iterdir():
        file.unlink()
    (photos / "InSitu").rmdir()
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    assert "InSitu/ is missing" in _one_line(err)


def test_csv_disagreeing_with_the_folders(tmp_path: Path) -> None:
    root = write_tiny_bach(tmp_path)
    csv = root / "ICIAR2018_BACH_Challenge" / "Photos" / GROUND_TRUTH_FILE
    csv.write_text(csv.read_text().replace("b002.tif,Benign", "b002.tif,Normal"))
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    message = _one_line(err)
    assert "Photos/Benign/b002.tif is Normal there but lies in Benign/" in message
    assert f"{GROUND_TRUTH_FILE}:" in message


def test_csv_listing_an_absent_image_or_missing_one(tmp_path: Path) -> None:
    root = write_tiny_bach(tmp_path)
    csv = root / "ICIAR2018_BACH_Challenge" / "Photos" / GROUND_TRUTH_FILE
    original = csv.read_text()
    csv.write_text(original + "iv099.tif,Invasive\n")
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    assert "lists iv099 (Invasive), which is in no class folder" in _one_line(err)
    csv.write_text(original.replace("is003.tif,InSitu\n", ""))
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    assert "no line for ICIAR2018_BACH_Challenge/Photos/InSitu/is003.tif" in _one_line(err)
    csv.write_text(original.replace("is003.tif,InSitu", "is003.tif,Carcinoma"))
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    assert "class 'Carcinoma' is not one of Normal, Benign, InSitu, Invasive" in _one_line(err)


def test_file_in_the_wrong_class_folder(tmp_path: Path) -> None:
    root = write_tiny_bach(tmp_path, csv=False)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    (photos / "Invasive" / "iv003.tif").rename(photos / "Normal" / "iv003.tif")
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(root)
    assert "Normal/iv003.tif: the name says class Invasive but the file lies in Normal/" in (
        _one_line(err)
    )


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        scan_bach(tmp_path / "nowhere")
    assert "dataset.root=" in _one_line(err) and "bach_synthetic" in str(err.value)
    with pytest.raises(DatasetLayoutError) as err:
        scan_bach(tmp_path)
    assert "holds no ICIAR2018_BACH_Challenge/" in _one_line(err)


@pytest.mark.parametrize("csv", [False, True], ids=["no_csv", "csv"])
def test_an_empty_class_folder_stops_the_run(tmp_path: Path, csv: bool) -> None:
    # without a CSV to compare with, an empty class folder used to train on three classes and report a
    # four-class result: a run never leaves a class out
    root = write_tiny_bach(tmp_path, csv=csv)
    insitu = root / "ICIAR2018_BACH_Challenge" / "Photos" / "InSitu"
    for image in insitu.iterdir():
        image.unlink()
    with pytest.raises(DatasetLayoutError, match=rf"class folder {insitu}/ holds no \.tif images"):
        scan_bach(root)


def test_an_image_of_another_size_is_named_with_the_expected_size(tmp_path: Path) -> None:
    root = write_tiny_bach(tmp_path, n_test=2)
    found = scan_bach(root)
    images = pd.concat([found.labelled, found.test], ignore_index=True)
    check_one_size(images)  # 12 x 16 everywhere
    odd = root / "ICIAR2018_BACH_Challenge" / "Photos" / "Benign" / "b002.tif"
    assert cv2.imwrite(str(odd), np.zeros((15, 20, 3), np.uint8))
    with pytest.raises(DatasetLayoutError) as caught:
        check_one_size(images)
    assert (
        str(caught.value)
        == f"{odd}: 20x15 pixels, expected 16x12 like the other 13 BACH images (every image has one size)"
    )
