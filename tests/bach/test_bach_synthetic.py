"""Synthetic BACH: the exact layout at full size, marked synthetic, deterministic, read by the real reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histo_lightning.data.datasets.bach import CLASS_NAMES, bach_preprocess, scan_bach
from histo_lightning.data.synthetic.bach import (
    IMAGE_SHAPE,
    TRUTH_FILE,
    SyntheticBachConfig,
    ensure_synthetic_bach,
    render_bach_image,
)
from histo_lightning.data.synthetic.tree import MARKER_FILE
from histo_lightning.methods.rakhlin.multicrop import ViewSettings, image_descriptors, image_tensor
from histo_lightning.stores.image_store import MemmapImageCache


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SyntheticBachConfig.from_preset("tiny")
    return ensure_synthetic_bach(tmp_path_factory.mktemp("data"), config, progress=False)


def test_tree_is_the_bach_layout_and_reads_back(tiny_tree: Path) -> None:
    found = scan_bach(tiny_tree)
    assert found.describe()["per_class"] == {"Normal": 1, "Benign": 1, "InSitu": 1, "Invasive": 1}
    assert found.ground_truth is not None  # labels were checked against the CSV it wrote
    assert found.labelled["origin"].tolist() == [
        "ICIAR2018_BACH_Challenge/Photos/Normal/n001.tif",
        "ICIAR2018_BACH_Challenge/Photos/Benign/b001.tif",
        "ICIAR2018_BACH_Challenge/Photos/InSitu/is001.tif",
        "ICIAR2018_BACH_Challenge/Photos/Invasive/iv001.tif",
    ]
    assert found.test["image"].tolist() == ["test0.tif"]
    csv = tiny_tree / "ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv"
    assert csv.read_text().splitlines()[0] == "b001.tif,Benign"
    for path in [*found.labelled["path"], *found.test["path"]]:
        with Image.open(path) as image:
            assert image.format == "TIFF" and image.mode == "RGB"
            assert image.size == (2048, 1536)  # BACH's size, kept
    marker = json.loads((tiny_tree / MARKER_FILE).read_text())
    assert (
        marker["synthetic"] is True and marker["n_labelled"] == 4 and "not BACH" in marker["note"]
    )
    truth = pd.read_csv(tiny_tree / TRUTH_FILE)
    assert truth["image"].tolist() == ["test0.tif"] and truth["label"][0] in CLASS_NAMES


def test_reused_not_regenerated(tiny_tree: Path) -> None:
    stamp = (tiny_tree / MARKER_FILE).stat().st_mtime_ns
    config = SyntheticBachConfig.from_preset("tiny")
    assert ensure_synthetic_bach(tiny_tree.parent.parent, config, progress=False) == tiny_tree
    assert (tiny_tree / MARKER_FILE).stat().st_mtime_ns == stamp


def test_rendering_is_deterministic_and_stains_vary() -> None:
    first = render_bach_image(np.random.default_rng([7, 2]), 2)
    again = render_bach_image(np.random.default_rng([7, 2]), 2)
    other = render_bach_image(np.random.default_rng([8, 2]), 2)
    assert first.shape == (*IMAGE_SHAPE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    # another image of the same class has another stain: its background (brightest tissue) differs
    assert np.abs(first.mean((0, 1)) - other.mean((0, 1))).max() > 2.0


def test_cache_then_descriptors_on_a_synthetic_image(tiny_tree: Path, tmp_path: Path) -> None:
    """Reader → half-scale + Macenko cache (1024×768) → 400 px views → encoder → Eq. 1, end to end."""
    found = scan_bach(tiny_tree)
    preprocess = bach_preprocess()
    paths = [Path(p) for p in found.labelled["path"][:2]]
    cache = MemmapImageCache.build_or_open(
        paths, found.root, tmp_path, "bach", preprocess=preprocess, preprocess_key=preprocess.key()
    )
    assert cache.shapes.tolist() == [[768, 1024]] * 2 and not cache.bad
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 7, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()  # fmt: skip
    settings = ViewSettings(n_augmentations=2, n_crops=3)
    rows = image_descriptors(
        image_tensor(cache[0]), found.labelled["patient"][0], encoder, settings, 400
    )
    assert rows.shape == (2, 4) and torch.isfinite(rows).all() and (rows >= 0).all()
    assert not torch.allclose(rows[0], rows[1])  # two augmentations, two descriptors
