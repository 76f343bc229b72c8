"""Patient-level folds: invariants, stratification, the versioned split file, official folds."""

from __future__ import annotations

import pandas as pd
import pytest

from histo_lightning.data.splits import (
    SplitSpec,
    check_fold,
    kfold_split,
    load_or_create_split,
    official_split,
    patient_labels,
    subsets_for_fold,
)
from histo_lightning.errors import ConfigError, DatasetLayoutError


def _patients(n_benign: int = 7, n_malignant: int = 16) -> pd.DataFrame:
    rows = [{"patient": f"B{i:02d}", "label": 0} for i in range(n_benign)]
    rows += [{"patient": f"M{i:02d}", "label": 1} for i in range(n_malignant)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_folds", [2, 5])
def test_every_patient_in_exactly_one_test_fold(n_folds: int) -> None:
    patients = _patients()
    table = kfold_split(patients, SplitSpec(scheme="patient_kfold", n_folds=n_folds))
    tests = table[table["subset"] == "test"]
    assert tests["patient"].value_counts().eq(1).all()  # no patient in two test folds
    assert set(tests["patient"]) == set(patients["patient"])  # every patient in one test fold
    for k in range(1, n_folds + 1):
        subsets = subsets_for_fold(table, k)
        assert not subsets["train"] & subsets["test"]
        assert not subsets["val"] & subsets["test"]
        assert not subsets["val"] & subsets["train"]
        assert subsets["train"] | subsets["val"] | subsets["test"] == set(patients["patient"])


def test_folds_are_stratified_and_validation_comes_from_training_patients() -> None:
    table = kfold_split(_patients(), SplitSpec(scheme="patient_kfold", n_folds=5, val_fraction=0.2))
    for k in range(1, 6):
        fold = table[table["fold"] == k]
        test_labels = fold.loc[fold["subset"] == "test", "label"]
        assert set(test_labels) == {0, 1}  # 7 benign patients over 5 folds: every fold gets one
        val = fold[fold["subset"] == "val"]
        assert len(val) == round(0.2 * (len(fold) - len(test_labels)))
        assert set(val["label"]) == {0, 1}


def test_unstratifiable_classes_still_give_grouped_folds() -> None:
    table = kfold_split(
        _patients(n_benign=2, n_malignant=9), SplitSpec(scheme="patient_kfold", n_folds=5)
    )
    assert table[table["subset"] == "test"]["patient"].value_counts().eq(1).all()


def test_patient_labels_takes_the_majority() -> None:
    images = pd.DataFrame({"patient": ["a", "a", "a", "b"], "label": [1, 1, 0, 0]})
    assert patient_labels(images).to_dict("list") == {"patient": ["a", "b"], "label": [1, 0]}


def test_split_file_written_once_and_reused(tmp_path) -> None:
    spec = SplitSpec(scheme="patient_kfold")
    first = load_or_create_split(tmp_path, "toy", _patients(), spec)
    (path,) = tmp_path.glob("toy__patient_kfold_k5_seed0_val20_v1.csv")
    mtime = path.stat().st_mtime_ns
    again = load_or_create_split(tmp_path, "toy", _patients(), spec)
    assert path.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(
        first.reset_index(drop=True), again.reset_index(drop=True), check_dtype=False
    )
    # a different seed is a different file, and different folds
    other = load_or_create_split(
        tmp_path, "toy", _patients(), SplitSpec(scheme="patient_kfold", seed=1)
    )
    assert not other.equals(first)


def test_split_file_refuses_a_changed_patient_set(tmp_path) -> None:
    load_or_create_split(tmp_path, "toy", _patients(), SplitSpec(scheme="patient_kfold"))
    with pytest.raises(ConfigError, match=r"different patient set.*split.version=2"):
        load_or_create_split(
            tmp_path, "toy", _patients(n_benign=8), SplitSpec(scheme="patient_kfold")
        )
    # bumping the version makes a new file
    load_or_create_split(
        tmp_path, "toy", _patients(n_benign=8), SplitSpec(scheme="patient_kfold", version=2)
    )


def test_check_fold_names_the_key_and_range() -> None:
    table = kfold_split(_patients(), SplitSpec(scheme="patient_kfold", n_folds=5))
    check_fold(3, table, "toy")
    for bad in (0, 6, 9):
        with pytest.raises(ConfigError, match=rf"fold={bad} is out of range.*1…5"):
            check_fold(bad, table, "toy")


def test_official_split_keeps_the_dataset_folds() -> None:
    patients = _patients(3, 5)
    names = patients["patient"].tolist()
    # two folds that do NOT partition patients (like BreakHis' Folds.csv)
    rows = [
        {"fold": 1, "patient": p, "subset": "test" if p in ("B00", "M00") else "train"}
        for p in names
    ]
    rows += [
        {"fold": 2, "patient": p, "subset": "test" if p in ("B00", "M01") else "train"}
        for p in names
    ]
    table = official_split(
        patients, pd.DataFrame(rows), SplitSpec(scheme="official", val_fraction=0.25)
    )
    assert subsets_for_fold(table, 1)["test"] == {"B00", "M00"}
    assert subsets_for_fold(table, 2)["test"] == {"B00", "M01"}
    for k in (1, 2):
        subsets = subsets_for_fold(table, k)
        assert subsets["val"] and not subsets["val"] & subsets["test"]


def test_official_split_rejects_image_level_mixing() -> None:
    patients = _patients(1, 1)
    rows = [
        {"fold": 1, "patient": "B00", "subset": "train"},
        {"fold": 1, "patient": "B00", "subset": "test"},
    ]
    with pytest.raises(DatasetLayoutError, match="patient B00 in both train and test of fold 1"):
        official_split(patients, pd.DataFrame(rows), SplitSpec(scheme="official"))


def test_scheme_official_without_a_fold_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="ships no fold file"):
        load_or_create_split(tmp_path, "toy", _patients(), SplitSpec(scheme="official"))


def test_bad_split_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"split.scheme"):
        SplitSpec(scheme="random")
    with pytest.raises(ConfigError, match=r"split.n_folds"):
        SplitSpec(n_folds=1)
