"""The BACH data module: its contract, the authors' official folds, and bad input as one line via run.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from histo_lightning.data.base import DataContract
from histo_lightning.data.datasets.bach import CLASS_NAMES, CLASS_PREFIXES, BachDataModule
from histo_lightning.errors import ConfigError
from histo_lightning.resources import RESOURCES_DIR
from tests.bach.conftest import write_small_bach
from tests.conftest import run_cli

SPLITS = RESOURCES_DIR / "splits"


def _module(root: Path, tmp_path: Path, fold: int = 1, **kwargs) -> BachDataModule:
    split = kwargs.pop("split", {"scheme": "auto", "n_folds": 5, "val_fraction": 0.0})
    return BachDataModule(
        fold=fold,
        split=split,
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        split_dir=str(tmp_path / "splits"),
        prepare_workers=1,
        **kwargs,
    )


def test_the_contract_and_fold_independent_descriptors(small_bach: Path, tmp_path: Path) -> None:
    one, two = _module(small_bach, tmp_path, 1), _module(small_bach, tmp_path, 2)
    for datamodule in (one, two):
        datamodule.prepare_data()
        datamodule.setup()
    assert isinstance(one, DataContract) and not one.has_validation()
    # "all" (what descriptors are computed over) is the same for every fold: caches serve all folds
    assert one.sample_manifest("all").equals(two.sample_manifest("all"))
    assert one.fingerprint() != two.fingerprint()
    manifest = one.sample_manifest("all")
    assert len(manifest) == 23 and manifest["index"].tolist() == list(range(23))
    assert manifest["label"].tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [-1] * 3
    assert manifest["origin"][0] == "ICIAR2018_BACH_Challenge/Photos/Normal/n001.tif"
    rows = one.fold_rows()
    assert sorted(np.concatenate([rows["train"], rows["test"]]).tolist()) == list(range(20))
    assert rows["unlabelled"].tolist() == [20, 21, 22] and len(rows["test"]) == 4
    assert sorted(manifest["label"][rows["test"]]) == [0, 1, 2, 3]  # stratified
    item = one.predict_dataset("all")[4]
    assert item["index"] == 4 and item["key"] == "n005"
    assert (
        tuple(item["image"].shape) == (60, 80, 3) and item["image"].dtype.is_floating_point is False
    )
    test = one.predict_dataset("test")
    assert len(test) == 4 and one.sample_manifest("test")["index"].tolist() == [0, 1, 2, 3]
    info = one.describe()
    assert info["n_labelled"] == 20 and info["n_unlabelled"] == 3
    assert info["images_per_subset"] == {"train": 16, "val": 0, "test": 4, "unlabelled": 3}
    assert info["preprocess"]["key"].startswith("rescale0.5-cubic+macenko")


def _real_names_tree(root: Path) -> Path:
    """BACH's 400 real file names (tiny images): what the official fold files name."""
    pixels = np.full((12, 16, 3), 200, dtype=np.uint8)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    for name, prefix in zip(CLASS_NAMES, CLASS_PREFIXES):
        (photos / name).mkdir(parents=True)
        for i in range(1, 101):
            assert cv2.imwrite(str(photos / name / f"{prefix}{i:03d}.tif"), pixels)
    return root


def test_the_authors_folds_and_the_patient_split_load(tmp_path: Path) -> None:
    root = _real_names_tree(tmp_path / "bach")
    folds = json.loads((SPLITS / "bach_rakhlin_folds10.json").read_text())
    official = {"scheme": "official", "n_folds": 10, "val_fraction": 0.0}
    datamodule = _module(
        root,
        tmp_path,
        3,
        split=official,
        official_folds=str(SPLITS / "bach_rakhlin_folds10.json"),
        preprocess={"stain_normalization": "none"},
    )
    datamodule.setup()
    manifest = datamodule.sample_manifest("all")
    test = manifest["image"][datamodule.rows("test")].tolist()
    assert sorted(test) == sorted(Path(n).name for n in folds[2]["test"])
    assert len(datamodule.rows("train")) == 360
    patient = _module(
        root,
        tmp_path,
        1,
        split=official,
        official_folds=str(SPLITS / "bach_patient_split.json"),
        preprocess={"stain_normalization": "none"},
    )
    patient.setup()
    assert len(patient.rows("test")) == 132 and len(patient.rows("train")) == 268
    with pytest.raises(ConfigError, match="fold=11"):
        _module(root, tmp_path, 11, split=official, official_folds=str(SPLITS / "bach_rakhlin_folds10.json"), preprocess={"stain_normalization": "none"}).prepare_data()  # fmt: skip


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.preprocess: unknown"):
        _module(tmp_path, tmp_path, preprocess={"size": 2})
    with pytest.raises(ConfigError, match=r"dataset.preprocess.scale"):
        _module(tmp_path, tmp_path, preprocess={"scale": 2})
    with pytest.raises(ConfigError, match="dataset=bach_synthetic"):
        _module(tmp_path / "nowhere", tmp_path).prepare_data()


def _run_on(root: Path, tmp_path: Path):
    return run_cli(
        [
            "experiment=rakhlin_demo",
            "dataset=bach",
            f"dataset.root={root}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ]
    )


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_bad_input_gives_one_clear_line_through_run_py(tmp_path: Path) -> None:
    missing = write_small_bach(tmp_path / "missing", per_class=1, n_test=0)
    invasive = missing / "ICIAR2018_BACH_Challenge" / "Photos" / "Invasive"
    for path in invasive.iterdir():
        path.unlink()
    invasive.rmdir()
    line = _one_line_error(_run_on(missing, tmp_path))
    assert "class folder" in line and "Invasive/ is missing" in line

    disagreeing = write_small_bach(tmp_path / "disagreeing", per_class=1, n_test=0)
    csv = disagreeing / "ICIAR2018_BACH_Challenge" / "Photos" / "microscopy_ground_truth.csv"
    csv.write_text(csv.read_text().replace("n001.tif,Normal", "n001.tif,Benign"))
    line = _one_line_error(_run_on(disagreeing, tmp_path))
    assert (
        "microscopy_ground_truth.csv:" in line
        and "n001.tif is Benign there but lies in Normal/" in line
    )
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("metrics.json"))
