"""The holdout split (SMSE PAIP 2019: 30 of 50 slides train, 20 test)."""

from __future__ import annotations

import pandas as pd
import pytest

from histo_lightning.data.splits import (
    SplitSpec,
    check_fold,
    holdout_split,
    load_or_create_split,
    subsets_for_fold,
)
from histo_lightning.errors import ConfigError


def _slides(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"patient": [f"01_01_{i:04d}" for i in range(n)], "label": 1})


def test_holdout_is_the_papers_30_20_with_validation_from_training() -> None:
    table = holdout_split(
        _slides(), SplitSpec(scheme="holdout", test_fraction=0.4, val_fraction=0.2)
    )
    assert set(table["fold"]) == {1}
    subsets = subsets_for_fold(table, 1)
    assert len(subsets["test"]) == 20 and len(subsets["train"]) + len(subsets["val"]) == 30
    assert len(subsets["val"]) == 6
    assert not (subsets["train"] & subsets["test"]) and not (subsets["val"] & subsets["test"])
    other = holdout_split(_slides(), SplitSpec(scheme="holdout", seed=1))
    assert set(other[other["subset"] == "test"]["patient"]) != subsets["test"]


def test_holdout_split_file_and_fold_check(tmp_path) -> None:
    spec = SplitSpec(scheme="holdout", test_fraction=0.4)
    table = load_or_create_split(tmp_path, "paip", _slides(), spec)
    assert (tmp_path / "paip__holdout_test40_k1_seed0_val20_v1.csv").is_file()
    check_fold(1, table, "paip/holdout")
    with pytest.raises(ConfigError, match="fold"):
        check_fold(2, table, "paip/holdout")
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitSpec(scheme="holdout", test_fraction=1.0)
