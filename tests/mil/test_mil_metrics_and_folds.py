"""Bag-level metrics (Tables 1/2 columns), attention AUROC against instance labels, folds over bags."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from histo_lightning.data.bag_folds import bag_split, repeat_seed
from histo_lightning.data.splits import SplitSpec
from histo_lightning.errors import ConfigError
from histo_lightning.metrics.mil import BagMetrics, InstanceAttentionAUROC


def test_bag_metrics_hand_worked() -> None:
    # labels 1 1 1 0 0 0 0, predictions (≥ 0.5) 1 1 0 1 0 0 0: TP 2, FN 1, FP 1, TN 3
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4])
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    metrics = BagMetrics()
    metrics.update(probs[:3], target[:3])  # in two batches
    metrics.update(probs[3:], target[3:])
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["acc"] == pytest.approx(5 / 7)
    assert values["precision"] == pytest.approx(2 / 3)
    assert values["recall"] == pytest.approx(2 / 3)
    assert values["f1"] == pytest.approx(2 / 3)
    assert values["fpr"] == pytest.approx(1 / 4)
    # AUROC: of the 12 positive/negative pairs, the positive scores higher in 10
    assert values["auroc"] == pytest.approx(10 / 12)
    metrics.reset()
    metrics.update(torch.tensor([0.9]), torch.tensor([1]))
    with warnings.catch_warnings():  # torchmetrics warns that AUROC is undefined with one class
        warnings.simplefilter("ignore")
        assert math.isnan(float(metrics.compute()["fpr"]))  # no negative bag


def test_instance_auroc_per_bag_and_pooled() -> None:
    metric = InstanceAttentionAUROC()
    attention = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.2, 0.5, 0.3, 0.0], [0.5, 0.5, 0.0, 0.0]])
    labels = torch.tensor([[1, 0, 0, -1], [1, 1, 0, -1], [0, 0, -1, -1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    metric.update(attention, labels, mask)
    values = metric.compute()
    # bag 0: the key instance ranks first (AUROC 1); bag 1: key 0.2 and 0.5 vs ordinary 0.3 → 1/2;
    # bag 2 has no key instance and does not count
    assert float(values["inst_auroc"]) == pytest.approx(0.75)
    # pooled w·n: keys 1.8, 0.6, 1.5; ordinary 0.9, 0.3, 0.9, 1.0, 1.0 → 5 + 1 + 5 of 15 pairs ordered
    assert float(values["inst_auroc_pooled"]) == pytest.approx(11 / 15)
    unknown = InstanceAttentionAUROC()
    unknown.update(attention, torch.full_like(labels, -1), mask)
    assert all(math.isnan(float(v)) for v in unknown.compute().values())


def _bags(n: int = 40) -> tuple[list[str], list[int]]:
    return [f"img{i}" for i in range(1, n + 1)], [int(i % 3 == 0) for i in range(1, n + 1)]


def test_folds_are_over_bags_stratified_and_repeat_reshuffles_deterministically(
    tmp_path: Path,
) -> None:
    names, labels = _bags()
    spec = SplitSpec(scheme="patient_kfold", n_folds=4, val_fraction=0.0, seed=0)
    first = bag_split(tmp_path, "colon", names, labels, spec, repeat=1)
    tests = first[first["subset"] == "test"]
    assert sorted(tests["patient"]) == sorted(names)  # every bag in exactly one test fold
    per_fold = tests.groupby("fold")["label"].agg(["sum", "size"])
    assert per_fold["size"].tolist() == [10, 10, 10, 10]
    assert per_fold["sum"].max() - per_fold["sum"].min() <= 1  # stratified: 13 positives

    def folds(table: pd.DataFrame) -> dict[str, int]:
        rows = table[table["subset"] == "test"]
        return dict(zip(rows["patient"], rows["fold"]))

    second = bag_split(tmp_path, "colon", names, labels, spec, repeat=2)
    assert folds(second) != folds(first)
    # the same repeat gives the same folds, from its own split file, also when written afresh
    again = bag_split(tmp_path / "elsewhere", "colon", names, labels, spec, repeat=2)
    assert folds(again) == folds(second)
    assert len(list(tmp_path.glob("colon__patient_kfold_k4_seed*_val0_v1.csv"))) == 2
    assert repeat_seed(0, 1) == 0 and repeat_seed(0, 2) == 1000 and repeat_seed(7, 3) == 2007


def test_validation_bags_come_from_training_bags(tmp_path: Path) -> None:
    names, labels = _bags()
    spec = SplitSpec(scheme="patient_kfold", n_folds=4, val_fraction=0.25, seed=0)
    table = bag_split(tmp_path, "ucsb", names, labels, spec, repeat=3)
    for _, rows in table.groupby("fold"):
        assert (rows["subset"] == "val").sum() == 8 and (rows["subset"] == "test").sum() == 10


def test_bad_repeat_or_scheme_names_the_key(tmp_path: Path) -> None:
    names, labels = _bags()
    with pytest.raises(ConfigError, match="repeat=0"):
        bag_split(tmp_path, "colon", names, labels, SplitSpec(scheme="patient_kfold"), repeat=0)
    with pytest.raises(ConfigError, match=r"split\.scheme='official'"):
        bag_split(tmp_path, "colon", names, labels, SplitSpec(scheme="official"))
