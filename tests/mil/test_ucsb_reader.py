"""The UCSB breast reader: names, roots, the 32 px grid, the HSV-Otsu filter, equalisation, the store."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from histo_lightning.data.datasets.ucsb import (
    IMAGE_DIR,
    UcsbPatching,
    build_ucsb_store,
    equalize_patches,
    grid_centres,
    grid_patches,
    hsv_otsu_foreground,
    image_bag,
    parse_ucsb_name,
    scan_ucsb,
)
from histo_lightning.data.synthetic.ucsb import TRUTH_DIR
from histo_lightning.errors import ConfigError, DatasetLayoutError


def test_names_give_the_label_for_both_extension_cases() -> None:
    benign = parse_ucsb_name("ytma10_010704_benign1_ccd.tif")
    assert (benign.tma, benign.date, benign.cls, benign.k, benign.label) == (
        10,
        "010704",
        "benign",
        1,
        0,
    )
    malignant = parse_ucsb_name("ytma49_111003_malignant12_ccd.TIF")
    assert (malignant.tma, malignant.cls, malignant.k, malignant.label) == (49, "malignant", 12, 1)
    for other in ("ytma10_010704_benign1.tif", "ytma10_0107_benign1_ccd.tif", "notes.txt"):
        assert parse_ucsb_name(other) is None


def _tissue(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """H&E-ish texture: pink with purple nuclei."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (220, 140, 190)
    for _ in range(120):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(image, (x, y), int(rng.integers(3, 6)), (90, 40, 130), -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _write(folder: Path, name: str, image: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, image, photometric="rgb", compression="packbits")
    return folder / name


def test_roots_sorting_and_layout_errors(tmp_path: Path) -> None:
    images = tmp_path / IMAGE_DIR
    _write(images, "ytma49_111003_malignant1_ccd.TIF", _tissue())
    _write(images, "ytma10_010704_benign2_ccd.tif", _tissue())
    _write(images, "ytma10_010704_benign1_ccd.tif", _tissue())
    (images / "Thumbs.db").write_bytes(b"x")  # ignored
    (tmp_path / "Breast Cancer Cells GroundTruth").mkdir()  # not used
    for root in (tmp_path, images):
        scan = scan_ucsb(root)
        assert scan.images["name"].tolist() == [
            "ytma10_010704_benign1_ccd",
            "ytma10_010704_benign2_ccd",
            "ytma49_111003_malignant1_ccd",
        ]
        assert scan.images["label"].tolist() == [0, 0, 1]
        assert scan.describe()["positive_bags"] == 1
    assert scan.images["origin"][0] == f"{IMAGE_DIR}/ytma10_010704_benign1_ccd.tif"
    _write(images, "slide7.tif", _tissue())
    with pytest.raises(DatasetLayoutError, match=r"slide7.tif: cannot read the label"):
        scan_ucsb(tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        scan_ucsb(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"holds neither '{IMAGE_DIR}/'"):
        scan_ucsb(tmp_path / "empty")


def test_grid_of_a_real_sized_image_is_28_by_24() -> None:
    image = np.arange(768 * 896 * 3, dtype=np.uint32).reshape(768, 896, 3).astype(np.uint8)
    patches = grid_patches(image)
    centres = grid_centres(768, 896)
    assert patches.shape == (672, 32, 32, 3) and len(centres) == 672
    # patch 29 = row 1, column 1 of the grid: top-left (32, 32), centre (48, 48)
    np.testing.assert_array_equal(patches[29], image[32:64, 32:64])
    assert centres[29].tolist() == [48, 48]
    assert centres[27].tolist() == [27 * 32 + 16, 16]


def test_hsv_otsu_filter_drops_a_blank_patch() -> None:
    image = _tissue(96, 128)
    image[32:64, 64:96] = 245  # one blank (glass) patch
    image[0:32, 0:32] = (250, 248, 252)  # near-white with a tint
    patches, centres, _ = image_bag(image, UcsbPatching(equalize=False))
    kept = {tuple(c) for c in centres.tolist()}
    assert (80, 48) not in kept and (16, 16) not in kept
    assert len(patches) == 12 - 2  # every tissue patch holds nuclei
    mask = hsv_otsu_foreground(image)
    assert not mask[32:64, 64:96].any() and not mask[:32, :32].any() and mask[64:].mean() > 0.2
    # `none` keeps every patch
    all_patches, _, _ = image_bag(image, UcsbPatching(background_filter="none", equalize=False))
    assert len(all_patches) == 12


@pytest.mark.parametrize("combine", ["majority", "all", "any"])
def test_every_combination_rule_drops_glass(combine: str) -> None:
    image = _tissue(64, 128)
    image[:, 64:] = 240
    mask = hsv_otsu_foreground(image, combine=combine)
    assert mask[:, :64].mean() > 0.3 and mask[:, 64:].mean() < 0.05


def test_equalisation_stretches_each_channel() -> None:
    rng = np.random.default_rng(0)
    dull = rng.integers(100, 140, size=(2, 32, 32, 3), dtype=np.uint8)
    out = equalize_patches(dull)
    assert out.shape == dull.shape and out.dtype == np.uint8
    for c in range(3):
        assert out[0, ..., c].max() == 255 and out[0, ..., c].min() < 20
        np.testing.assert_array_equal(out[1, ..., c], cv2.equalizeHist(dull[1, ..., c]))


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.background_filter"):
        UcsbPatching(background_filter="otsu")
    with pytest.raises(ConfigError, match=r"dataset\.filter_combine"):
        UcsbPatching(filter_combine="vote")
    with pytest.raises(ConfigError, match=r"dataset\.filter_channels"):
        UcsbPatching(filter_channels="hsx")


def test_an_image_the_filter_empties_is_an_error(tmp_path: Path) -> None:
    images = tmp_path / IMAGE_DIR
    _write(images, "ytma10_010704_benign1_ccd.tif", _tissue())
    _write(images, "ytma10_010704_benign2_ccd.tif", np.full((96, 128, 3), 250, np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"benign2_ccd.tif: the background filter"):
        build_ucsb_store(scan_ucsb(tmp_path), tmp_path / "cache")
    specks = np.full((96, 128, 3), 250, np.uint8)
    specks[5::16, 5::16] = (90, 40, 130)  # tissue in under a tenth of every patch
    _write(images, "ytma10_010704_benign2_ccd.tif", specks)
    with pytest.raises(DatasetLayoutError, match=r"benign2_ccd.tif: the background filter"):
        build_ucsb_store(scan_ucsb(tmp_path), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_synthetic_tree_reads_end_to_end_with_instance_labels(
    ucsb_tiny: Path, tmp_path: Path
) -> None:
    marker = json.loads((ucsb_tiny / "SYNTHETIC_DATA.json").read_text())
    files = sorted(p.name for p in (ucsb_tiny / IMAGE_DIR).iterdir())
    assert any(f.endswith(".TIF") for f in files) and any(f.endswith(".tif") for f in files)
    scan = scan_ucsb(ucsb_tiny)
    assert len(scan.images) == marker["n_images"] == 8
    assert scan.describe()["positive_bags"] == marker["n_malignant"]
    cache = tmp_path / "cache"
    plain = build_ucsb_store(
        scan, cache, UcsbPatching(background_filter="none", equalize=False), ucsb_tiny / TRUTH_DIR
    )
    assert (plain.bag_sizes == 48).all()  # 256×192 → 8 × 6 patches
    # key instances (tumour patches) only in malignant bags, and a minority there
    bag_of = plain.bag_of_instance()
    key = plain.instance_labels == 1
    assert set(plain.labels[bag_of[key]]) == {1}
    assert 0 < key.sum() < 0.5 * (plain.labels[bag_of] == 1).sum()
    # real UCSB has no instance labels
    unlabelled = build_ucsb_store(scan, cache, UcsbPatching(background_filter="none"))
    assert (unlabelled.instance_labels == -1).all()
    assert unlabelled.folder != plain.folder
    filtered = build_ucsb_store(scan, cache, UcsbPatching(), ucsb_tiny / TRUTH_DIR)
    assert filtered.n_instances < plain.n_instances
    made_by = json.loads((filtered.folder / "cache.json").read_text())["made_by"]
    assert made_by["background_filter"] == "hsv_otsu" and made_by["equalize"] is True
