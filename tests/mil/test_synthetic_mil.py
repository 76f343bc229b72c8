"""The synthetic Colon and UCSB twins: exact layouts, determinism, and what the method is about."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from histo_lightning.data.datasets.colon import CLASSIFICATION_DIR, RELEASE_DIR, scan_colon
from histo_lightning.data.datasets.ucsb import IMAGE_DIR, scan_ucsb
from histo_lightning.data.synthetic.colon import (
    DETECTION_DIR,
    TRUTH_FILE,
    SyntheticColonConfig,
    build_images,
    generate_colon,
)
from histo_lightning.data.synthetic.tree import MARKER_FILE
from histo_lightning.data.synthetic.ucsb import SyntheticUcsbConfig, generate_ucsb
from histo_lightning.stores.store import INFO_FILE, LAST_USED


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the dataset tree (not the store's own record: cache.json, .last_used)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (INFO_FILE, LAST_USED)
    }


def test_colon_twin_is_the_release_layout(colon_tiny: Path) -> None:
    folder = colon_tiny / RELEASE_DIR / CLASSIFICATION_DIR / "img1"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "img1.bmp",
        "img1_epithelial.mat",
        "img1_fibroblast.mat",
        "img1_inflammatory.mat",
        "img1_others.mat",
    ]
    assert (folder / "img1.bmp").read_bytes()[:2] == b"BM"
    assert (colon_tiny / RELEASE_DIR / DETECTION_DIR / "img1" / "img1_detection.mat").is_file()
    marker = json.loads((colon_tiny / MARKER_FILE).read_text())
    assert marker["synthetic"] is True and marker["dataset"] == "colon"
    # negative images store the release's empty 0×2 uint8 epithelial array
    scan = scan_colon(colon_tiny)
    negative = scan.images.loc[scan.images["label"] == 0, "name"].iloc[0]
    empty = scipy.io.loadmat(
        str(colon_tiny / RELEASE_DIR / CLASSIFICATION_DIR / negative / f"{negative}_epithelial.mat")
    )["detection"]
    assert empty.shape == (0, 2) and empty.dtype == np.uint8
    full = scipy.io.loadmat(str(folder / "img1_fibroblast.mat"))["detection"]
    assert full.dtype == np.float64 and full.shape[1] == 2 and full.min() >= 1.0  # 1-based


def test_colon_twin_is_deterministic(tmp_path: Path) -> None:
    config = SyntheticColonConfig.from_preset("tiny", n_images=3)
    first = _files(generate_colon(tmp_path / "a", config, progress=False))
    second = _files(generate_colon(tmp_path / "b", config, progress=False))
    assert first == second
    other = _files(
        generate_colon(
            tmp_path / "c",
            SyntheticColonConfig.from_preset("tiny", n_images=3, seed=1),
            progress=False,
        )
    )
    assert other.keys() == first.keys() and other != first


def test_colon_key_instances_are_a_minority_and_lookalikes_in_negative_bags(
    colon_tiny: Path,
) -> None:
    truth = pd.read_csv(colon_tiny / TRUTH_FILE)
    classified = truth[truth["classified"] == 1]
    positive = classified[classified["label"] == 1]
    negative = classified[classified["label"] == 0]
    assert (negative["cls"] != "epithelial").all()
    assert 0 < (positive["cls"] == "epithelial").mean() < 0.5
    # look-alikes (hard negatives) are labelled non-epithelial and more frequent in negative bags
    look = classified["kind"].str.startswith("lookalike")
    assert set(classified.loc[look, "cls"]) <= {"fibroblast", "others"}
    assert look[classified["label"] == 0].mean() > look[classified["label"] == 1].mean() > 0
    # a share of the rendered nuclei is unclassified (Detection/ only)
    assert 0.1 < (truth["classified"] == 0).mean() < 0.4


def test_colon_bag_sizes_spread_like_the_release() -> None:
    specs = build_images(SyntheticColonConfig.from_preset("full"))
    config = SyntheticColonConfig()
    rendered = np.array(
        [
            s.n_epithelial
            + s.n_fibroblast
            + s.n_inflammatory
            + s.n_others
            + s.n_lookalike_single
            + s.n_lookalike_arc
            for s in specs
        ]
    )
    classified = rendered * (1 - config.unclassified_fraction)
    assert 180 < classified.mean() < 270  # release: 224 per image
    assert classified.std() > 60 and classified.max() > 2.5 * classified.min()
    positives = [s for s in specs if s.positive]
    share = np.array([s.n_epithelial for s in positives]) / rendered[[s.positive for s in specs]]
    assert share.mean() < 0.35 and share.min() < 0.1


def test_ucsb_twin_names_and_determinism(ucsb_tiny: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in (ucsb_tiny / IMAGE_DIR).iterdir())
    assert "ytma49_111003_benign1_ccd.TIF" in names and "ytma10_010704_benign1_ccd.tif" in names
    scan = scan_ucsb(ucsb_tiny)
    assert scan.describe()["positive_bags"] == 4 and scan.describe()["negative_bags"] == 4
    config = SyntheticUcsbConfig.from_preset("tiny", n_benign=1, n_malignant=1)
    first = _files(generate_ucsb(tmp_path / "a", config, progress=False))
    assert first == _files(generate_ucsb(tmp_path / "b", config, progress=False))
    assert json.loads(first[MARKER_FILE])["synthetic"] is True


def test_colon_truth_joins_the_store_instances_exactly(colon_tiny: Path, tmp_path: Path) -> None:
    from histo_lightning.data.datasets.colon import build_colon_store

    scan = scan_colon(colon_tiny)
    store = build_colon_store(scan, tmp_path / "cache")
    truth = pd.read_csv(colon_tiny / TRUTH_FILE)
    truth = truth[truth["classified"] == 1]
    bag_of = store.bag_of_instance()
    keys = {(store.names[b], int(x), int(y)) for b, (x, y) in zip(bag_of, store.coords.tolist())}
    truth_keys = set(zip(truth["image"], truth["col"], truth["row"]))
    assert truth_keys == keys
    epithelial = truth[truth["cls"] == "epithelial"]
    key_coords = {
        (store.names[b], int(x), int(y))
        for b, (x, y), k in zip(bag_of, store.coords.tolist(), store.instance_labels)
        if k == 1
    }
    assert set(zip(epithelial["image"], epithelial["col"], epithelial["row"])) == key_coords
