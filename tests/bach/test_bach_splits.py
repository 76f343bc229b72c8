"""BACH folds: our stratified 10 folds, the authors' own folds and the patient-aware split (package data)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from histo_lightning.data.datasets.bach import CLASS_PREFIXES, bach_split, read_official_folds
from histo_lightning.data.splits import SplitSpec, subsets_for_fold
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.resources import RESOURCES_DIR, resource
from tests.shared_folder import SHARED_DIR, requires_shared

RAKHLIN_FOLDS = resource("splits/bach_rakhlin_folds10.json")
PATIENT_SPLIT = resource("splits/bach_patient_split.json")


def _labelled(per_class: int = 100) -> pd.DataFrame:
    """The manifest columns the split needs, for BACH's 4 × ``per_class`` image names."""
    rows = [
        {"patient": f"{prefix}{i:03d}", "label": label, "image": f"{prefix}{i:03d}.tif"}
        for label, prefix in enumerate(CLASS_PREFIXES)
        for i in range(1, per_class + 1)
    ]
    return pd.DataFrame(rows)


def test_the_split_files_ship_in_the_package_with_their_sources() -> None:
    assert RAKHLIN_FOLDS.parent == RESOURCES_DIR / "splits" and PATIENT_SPLIT.is_file()
    sources = (RESOURCES_DIR / "splits" / "README.md").read_text()
    for name in ("bach_rakhlin_folds10.json", "bach_patient_split.json"):
        assert f"`{name}`" in sources  # each file has its row (what it is, where it comes from)
    assert "github.com/alexander-rakhlin/ICIAR2018" in sources
    with pytest.raises(FileNotFoundError, match="no such file in the package"):
        resource("splits/missing.json")


@requires_shared
def test_the_packaged_splits_equal_the_shared_originals() -> None:
    for packaged in (RAKHLIN_FOLDS, PATIENT_SPLIT):
        original = SHARED_DIR / "splits" / packaged.name
        assert packaged.read_bytes() == original.read_bytes(), packaged.name


def test_auto_is_ten_folds_stratified_over_images(tmp_path: Path) -> None:
    labelled = _labelled(20)
    spec = SplitSpec(scheme="auto", n_folds=10, val_fraction=0.0)
    table = bach_split(labelled, spec, tmp_path)
    tests = table[table["subset"] == "test"]
    assert sorted(tests["patient"]) == sorted(labelled["patient"])  # each image tested once
    per_fold = tests.groupby(["fold", "label"]).size().unstack()
    assert (per_fold == 2).all().all()  # 20 per class over 10 folds: 2 per class per fold
    for fold in range(1, 11):
        subsets = subsets_for_fold(table, fold)
        assert not subsets["val"] and not subsets["train"] & subsets["test"]
        assert len(subsets["train"]) == 72
    again = bach_split(labelled, spec, tmp_path)  # written once, read back
    pd.testing.assert_frame_equal(table.reset_index(drop=True), again.reset_index(drop=True))


def test_official_reproduces_the_authors_folds(tmp_path: Path) -> None:
    labelled = _labelled()
    table = bach_split(
        labelled,
        SplitSpec(scheme="official", val_fraction=0.0),
        tmp_path,
        official_folds=RAKHLIN_FOLDS,
    )
    folds = json.loads(RAKHLIN_FOLDS.read_text())
    assert sorted(table["fold"].unique()) == list(range(1, 11))
    for k, fold in enumerate(folds, start=1):
        subsets = subsets_for_fold(table, k)
        assert subsets["test"] == {name[:-4] for name in fold["test"]}
        assert len(subsets["train"]) == 360 and not subsets["train"] & subsets["test"]
    assert (tmp_path / "bach-bach_rakhlin_folds10__official_k10_seed0_val0_v1.csv").is_file()
    # fold 1 of the authors' file starts with b008 … and holds 10 images per class
    first = table[(table["fold"] == 1) & (table["subset"] == "test")]
    assert "b008" in set(first["patient"]) and first.groupby("label").size().tolist() == [10] * 4


def test_patient_aware_split_is_one_fold_268_132(tmp_path: Path) -> None:
    labelled = _labelled()
    table = bach_split(
        labelled,
        SplitSpec(scheme="official", val_fraction=0.0),
        tmp_path,
        official_folds=PATIENT_SPLIT,
    )
    subsets = subsets_for_fold(table, 1)
    assert len(subsets["train"]) == 268 and len(subsets["test"]) == 132
    assert "b042" in subsets["test"] and "b001" in subsets["train"]


def test_official_folds_refuse_other_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"not under the dataset root.*split=auto"):
        read_official_folds(RAKHLIN_FOLDS, _labelled(12))  # e.g. a synthetic tree
    extra = pd.concat([_labelled(), pd.DataFrame([{"patient": "n101", "label": 0}])])
    with pytest.raises(DatasetLayoutError, match="does not place image n101"):
        read_official_folds(RAKHLIN_FOLDS, extra)


def test_official_folds_check_labels_and_partition(tmp_path: Path) -> None:
    folds = json.loads(RAKHLIN_FOLDS.read_text())
    folds[0]["test_y"][0] = 3  # b008 called Invasive
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(folds))
    with pytest.raises(
        DatasetLayoutError, match=r"fold 1 labels b008\.tif Invasive but it lies in Benign/"
    ):
        read_official_folds(bad, _labelled())
    folds = json.loads(RAKHLIN_FOLDS.read_text())
    folds[1]["test"][0] = folds[0]["test"][0]
    bad.write_text(json.dumps(folds))
    with pytest.raises(DatasetLayoutError, match="in the test set of folds 1 and 2"):
        read_official_folds(bad, _labelled())


def test_official_needs_its_file(tmp_path: Path) -> None:
    spec = SplitSpec(scheme="official")
    with pytest.raises(ConfigError, match=r"dataset\.official_folds"):
        bach_split(_labelled(), spec, tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist.*paths\.resources_dir"):
        bach_split(_labelled(), spec, tmp_path, official_folds=tmp_path / "missing.json")
