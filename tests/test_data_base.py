"""The data-module contract (docs/CONTRACTS.md C1) on every dataset: fingerprint, validation, predict sets."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from histo_lightning.data.base import MANIFEST_COLUMNS, DataContract
from histo_lightning.data.datasets.breakhis import BreakHisDataModule
from histo_lightning.data.datasets.paip import PaipDataModule
from histo_lightning.data.datasets.tupac16 import Tupac16DataModule
from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.runner import run_pipeline
from tests.conftest import SMOKE

# the same tree as conftest's TINY_SYNTHETIC (generated once per session, shared with the other tests)
BREAKHIS_TINY = {"n_benign_patients": 3, "n_malignant_patients": 5, "images_per_magnification": 2}
SPLIT = {"scheme": "patient_kfold", "n_folds": 3, "val_fraction": 0.2}


def _breakhis(data_dir: Path, **kwargs) -> BreakHisDataModule:
    settings = {
        "fold": 1,
        "split": SPLIT,
        "synthetic": BREAKHIS_TINY,
        "synthetic_dir": str(data_dir),
        "class_names": ["benign", "malignant"],
        "num_classes": 2,
        "cache_dir": str(data_dir / "cache"),
        "split_dir": str(data_dir / "splits"),
        "num_workers": 0,
        "prepare_workers": 1,
        **kwargs,
    }
    return BreakHisDataModule(**settings)


def _tupac(data_dir: Path, **kwargs) -> Tupac16DataModule:
    settings = {
        "fold": 1,
        "split": {"scheme": "patient_kfold", "n_folds": 5, "val_fraction": 0.2},
        "synthetic": {"preset": "tiny"},
        "synthetic_dir": str(data_dir),
        "cache_dir": str(data_dir / "cache"),
        "split_dir": str(data_dir / "splits"),
        "num_workers": 0,
        "prepare_workers": 1,
        **kwargs,
    }
    return Tupac16DataModule(**settings)


def test_every_data_module_satisfies_the_contract(data_dir: Path) -> None:
    paip = PaipDataModule(
        fold=1,
        split={"scheme": "holdout"},
        synthetic={"n_slides": 4},
        synthetic_dir=str(data_dir),
        class_names=["normal", "tumour"],
        num_classes=2,
    )
    for module in (_breakhis(data_dir), _tupac(data_dir), paip):
        assert isinstance(module, DataContract)
    assert paip.name.startswith("paip2019_synthetic-")


def test_breakhis_fingerprint_follows_the_samples_not_the_loaders(data_dir: Path) -> None:
    base = _breakhis(data_dir).fingerprint()
    assert len(base) == 16 and int(base, 16) >= 0
    # loader settings do not change what the samples are
    assert (
        _breakhis(data_dir, batch_size=3, eval_batch_size=5, pin_memory=True).fingerprint() == base
    )
    # the fold, the magnifications, the transforms and the pairing do
    others = [
        _breakhis(data_dir, fold=2),
        _breakhis(data_dir, magnifications=[40, 100]),
        _breakhis(data_dir, split={**SPLIT, "val_fraction": 0.0}),
        _breakhis(data_dir, train_transforms=A.Compose([A.HorizontalFlip(p=0.5)])),
        _breakhis(data_dir, pairing="triplet"),
    ]
    prints = [m.fingerprint() for m in others]
    assert base not in prints and len(set(prints)) == len(prints)


def test_tupac16_fingerprint_follows_patch_sampling(data_dir: Path) -> None:
    base = _tupac(data_dir).fingerprint()
    assert _tupac(data_dir, batch_size=7, eval_batch_size=9).fingerprint() == base
    assert _tupac(data_dir, fold=2).fingerprint() != base
    assert _tupac(data_dir, sampling={"n_rotations": 2}).fingerprint() != base
    assert _tupac(data_dir, val_positives="all").fingerprint() != base


def test_has_validation_and_an_empty_validation_set(data_dir: Path) -> None:
    with_val = _breakhis(data_dir)
    with_val.setup("fit")
    assert with_val.has_validation() and len(with_val.val_dataloader()) > 0
    without = _breakhis(data_dir, split={**SPLIT, "val_fraction": 0.0})
    without.setup("fit")
    assert not without.has_validation()
    assert without.val_dataloader() == []  # Lightning skips validation
    tupac = _tupac(data_dir, split={"scheme": "patient_kfold", "n_folds": 5, "val_fraction": 0.0})
    tupac.setup("fit")
    assert not tupac.has_validation() and tupac.val_dataloader() == []


def test_fit_without_validation_set(make_cfg) -> None:
    cfg = make_cfg(
        ["experiment=breakhis_baseline", *SMOKE, "split.val_fraction=0", "optimized_metric=null"]
    )
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    assert "test/acc" in json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "run_info.json").read_text())
    assert info["data"]["n_images"]["val"] == 0
    assert info["data"]["n_patients"]["val"] == 0 and info["data"]["n_patients"]["train"] > 0
    assert len(info["data"]["fingerprint"]) == 16


@pytest.mark.parametrize("subset", ["train", "val", "test"])
def test_predict_dataset_and_manifest_agree(data_dir: Path, subset: str) -> None:
    for module in (_breakhis(data_dir), _tupac(data_dir)):
        module.setup("predict")
        dataset = module.predict_dataset(subset)
        manifest = module.sample_manifest(subset)
        assert isinstance(manifest, pd.DataFrame)
        assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
        assert len(manifest) == len(dataset) > 0
        assert manifest["index"].tolist() == list(range(len(dataset)))
        for i in (0, len(dataset) - 1):
            item = dataset[i]
            assert item["index"] == i and item["label"] == manifest["label"].iloc[i]
        origin = manifest["origin"].iloc[0]
        assert not origin.startswith("/") and (module.root / origin).is_file()
        patients = set(manifest["patient"])
        assert patients <= set(module.fold_members()[subset])


def test_breakhis_manifest_rows_are_the_table_rows(data_dir: Path) -> None:
    module = _breakhis(data_dir)
    module.setup("predict")
    manifest = module.sample_manifest("test")
    table = module.table.iloc[manifest["table_row"]]
    assert (manifest["origin"].to_numpy() == module.relative_origin(table["path"])).all()
    # the test loader's items carry table rows, the predict set's items manifest rows
    batch = next(iter(module.test_dataloader()))
    assert batch["index"].tolist() == manifest["table_row"].tolist()[: len(batch["index"])]


def test_drop_last_auto_drops_only_a_batch_of_one(data_dir: Path) -> None:
    module = _breakhis(data_dir)
    module.setup("fit")
    n_train = len(module.datasets["train"])
    assert n_train > 3
    module.batch_size = n_train - 1  # the last batch would hold one image
    assert module.train_dataloader().drop_last
    module.batch_size = n_train - 2
    assert not module.train_dataloader().drop_last
    always = _breakhis(data_dir, drop_last=True)
    always.setup("fit")
    always.batch_size = n_train - 2
    assert always.train_dataloader().drop_last
    with pytest.raises(ConfigError, match=r"dataset\.drop_last"):
        _breakhis(data_dir, drop_last="sometimes")


def test_root_and_synthetic_settings_are_checked(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset=breakhis_synthetic generates its own data"):
        _breakhis(data_dir, root=str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"dataset\.root is not set: point it at the folder holding"
    ):
        _breakhis(data_dir, synthetic=None)
    with pytest.raises(ConfigError, match=r"dataset\.synthetic: .*n_patients"):
        _ = _breakhis(data_dir, synthetic={"n_patients": 3}).name
    with pytest.raises(ConfigError, match=r"dataset\.on_corrupt=.maybe."):
        _tupac(data_dir, on_corrupt="maybe")


def test_corrupt_policy_is_shared(data_dir: Path) -> None:
    from histo_lightning.errors import CorruptImageError
    from histo_lightning.stores.image_store import BadImage

    bad = [BadImage("/x/a.tif", "truncated"), BadImage("/x/b.tif", "empty")]
    with pytest.raises(
        CorruptImageError, match=r"unreadable HPF /x/a.tif: truncated \(and 1 more\)"
    ):
        _tupac(data_dir).apply_corrupt_policy(bad)
    skipping = _tupac(data_dir, on_corrupt="skip")
    skipping.apply_corrupt_policy(bad)
    skipping.apply_corrupt_policy(bad[:1])
    assert [b.path for b in skipping.skipped] == ["/x/a.tif", "/x/b.tif"]
    assert np.array_equal(
        skipping.relative_origin(pd.Series(["/elsewhere/c.tif"])), ["/elsewhere/c.tif"]
    )
