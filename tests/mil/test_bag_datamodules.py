"""The MIL data modules on tiny synthetic data: counts, folds stratified by bag label, repeat, padded and
DDP-exact evaluation, predict subsets, feature bags and generated bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histo_lightning.data.base import DataContract
from histo_lightning.data.datasets.colon import ColonDataModule, scan_colon
from histo_lightning.data.datasets.digits_bags import DigitsBagsDataModule
from histo_lightning.data.datasets.ucsb import UcsbDataModule
from histo_lightning.errors import ConfigError

SPLIT = {"scheme": "patient_kfold", "n_folds": 3, "val_fraction": 0.2, "seed": 0}


def colon(data_dir: Path, fold: int = 1, repeat: int = 1, **kwargs) -> ColonDataModule:
    module = ColonDataModule(
        fold=fold,
        split=kwargs.pop("split", SPLIT),
        repeat=repeat,
        synthetic={"preset": "tiny"},
        synthetic_dir=str(data_dir),
        cache_dir=str(data_dir / "cache"),
        split_dir=str(data_dir / "splits"),
        **kwargs,
    )
    module.setup()
    return module


def test_colon_counts_match_the_reader(data_dir: Path, colon_tiny: Path) -> None:
    module = colon(data_dir, eval_batch_size=3)
    assert isinstance(module, DataContract) and module.is_synthetic
    scan = scan_colon(colon_tiny).describe()
    info = module.describe()
    totals = info["totals"]
    assert totals["images"] == totals["bags"] == scan["images"] == 12
    assert totals["instances"] == scan["instances"]
    assert totals["key_instances"] == scan["key_instances"]
    assert totals["positive_bags"] == scan["positive_bags"]
    per_subset = [info[s] for s in ("train", "val", "test")]
    assert sum(c["bags"] for c in per_subset) == 12
    assert sum(c["instances"] for c in per_subset) == scan["instances"]
    assert sum(c["key_instances"] for c in per_subset) == scan["key_instances"]
    assert "protocol" not in info and info["repeat"] == 1  # a method's, not the data's


def test_folds_partition_the_bags_stratified_by_label(data_dir: Path) -> None:
    tests, labels = [], None
    for fold in (1, 2, 3):
        module = colon(data_dir, fold=fold)
        ids = module.bag_ids
        assert not set(ids["train"]) & set(ids["test"]) and not set(ids["val"]) & set(ids["test"])
        assert len(ids["train"]) + len(ids["val"]) + len(ids["test"]) == 12
        tests.append(ids["test"])
        labels = module.bags.labels
        # 6 positive and 6 negative images over 3 folds: 2 + 2 in every test fold
        assert sorted(np.bincount(labels[ids["test"]], minlength=2)) == [2, 2]
    assert sorted(np.concatenate(tests).tolist()) == list(range(12))


def test_repeat_reshuffles_the_folds_deterministically(data_dir: Path) -> None:
    first = colon(data_dir, repeat=1).bag_ids["test"]
    second = colon(data_dir, repeat=2)
    again = colon(data_dir, repeat=2).bag_ids["test"]
    assert second.split_spec.seed == 1000
    assert np.array_equal(second.bag_ids["test"], again)
    assert not all(
        np.array_equal(
            colon(data_dir, fold=k, repeat=1).bag_ids["test"],
            colon(data_dir, fold=k, repeat=2).bag_ids["test"],
        )
        for k in (1, 2, 3)
    )
    assert colon(data_dir, repeat=2).fingerprint() != colon(data_dir, repeat=1).fingerprint()
    assert len(first)
    with pytest.raises(ConfigError, match="repeat=0"):
        colon(data_dir, repeat=0)


def test_evaluation_batches_are_padded_and_exact_under_ddp(data_dir: Path, monkeypatch) -> None:
    module = colon(data_dir, eval_batch_size=3)
    sizes = module.bags.bag_sizes
    batch = next(iter(module.test_dataloader()))
    ids = module.bag_ids["test"]
    assert batch["mask"].sum(1).tolist() == sizes[ids[: len(batch["label"])]].tolist()
    assert batch["instances"].shape[1] == batch["mask"].sum(1).max()
    assert (batch["instance_labels"][~batch["mask"]] == -1).all()

    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(module, "_world", lambda rank=rank: (2, rank))
        for b in module.test_dataloader():
            seen += module.sample_manifest("test")["bag"].to_numpy()[b["index"].numpy()].tolist()
    assert sorted(seen) == sorted(ids.tolist())  # every test bag exactly once over the two ranks


def test_predict_subsets_match_their_manifests(data_dir: Path) -> None:
    module = colon(data_dir)
    train = module.predict_dataset("train")
    manifest = module.sample_manifest("train")
    assert len(train) == len(manifest) and manifest["index"].tolist() == list(range(len(train)))
    item = train[2]
    assert item["index"] == 2 and len(item["instances"]) == manifest["n_instances"].iloc[2]
    batch = train.collate_fn([train[0]])
    assert batch["instances"].shape[1] == manifest["n_instances"].max()  # padded to the largest bag
    first = manifest["first_instance"].iloc[2]
    assert item["members"].tolist() == list(range(first, first + len(item["instances"])))

    instances = module.predict_dataset("instances")
    table = module.sample_manifest("instances")
    assert len(instances) == len(table) == module.bags.n_instances
    one = instances[5]
    assert one["image"].shape == (3, 27, 27) and float(one["image"].min()) >= 0.0
    assert table["label"].iloc[5] == module.bags.instance_labels[5]
    with pytest.raises(ConfigError, match="no subset 'nope'"):
        module.predict_dataset("nope")


def test_feature_bags_and_generated_bags(data_dir: Path) -> None:
    module = colon(data_dir)
    before = module.fingerprint()
    n = module.bags.n_instances
    features = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    module.use_features(features, "test features")
    item = module.predict_dataset("test")[0]
    assert item["instances"].shape[1] == 4
    assert torch.equal(item["instances"][0], torch.from_numpy(features[item["members"][0]]))
    with pytest.raises(ConfigError, match="one row per instance"):
        module.use_features(features[:-1], "short")

    n_train = len(module.bag_ids["train"])
    module.add_generated_bags([np.array([0, 5, 7]), np.array([3])], source="test")
    loader = module.train_dataloader()
    assert len(loader.dataset) == n_train + 2
    assert loader.dataset.labels[-2:].tolist() == [0, 0]
    assert len(module.predict_dataset("train")) == n_train  # mining sees the dataset's bags only
    assert module.describe()["train"]["generated_negative_bags"] == 2
    # what the pipeline changes is in its stage fingerprints, not in the data's
    assert module.fingerprint() == before


def test_fingerprint_ignores_batch_sizes(data_dir: Path) -> None:
    assert (
        colon(data_dir, batch_size=1).fingerprint() == colon(data_dir, batch_size=4).fingerprint()
    )


def test_ucsb_module_counts(data_dir: Path, ucsb_tiny: Path) -> None:
    module = UcsbDataModule(
        fold=2,
        split={**SPLIT, "n_folds": 4, "val_fraction": 0.0},
        synthetic={"preset": "tiny"},
        synthetic_dir=str(data_dir),
        cache_dir=str(data_dir / "cache"),
        split_dir=str(data_dir / "splits"),
    )
    module.setup()
    info = module.describe()
    assert info["totals"]["images"] == 8 and info["totals"]["positive_bags"] == 4
    assert info["totals"]["key_instances"] > 0  # from the synthetic tumour masks
    assert not module.has_validation() and module.val_dataloader() == []
    assert info["test"]["bags"] == 2
    assert module.heatmap_style == "grid" and module.patch_size() == 32


def test_digits_bags_module(data_dir: Path) -> None:
    def make(**kwargs) -> DigitsBagsDataModule:
        module = DigitsBagsDataModule(
            fold=1,
            split={"val_fraction": 0.2},
            n_train_bags=20,
            n_test_bags=10,
            cache_dir=str(data_dir / "cache"),
            split_dir=str(data_dir / "splits"),
            **kwargs,
        )
        module.setup()
        return module

    module = make()
    info = module.describe()
    assert (info["train"]["bags"], info["val"]["bags"], info["test"]["bags"]) == (16, 4, 10)
    assert not module.is_synthetic and module.bags.instances.shape[1:] == (8, 8, 1)
    assert make(repeat=2).data_key() != module.data_key() == make().data_key()
    with pytest.raises(ConfigError, match="fold must be 1"):
        DigitsBagsDataModule(fold=2, split={})
