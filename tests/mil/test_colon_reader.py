"""The Colon (CRCHistoPhenotypes) reader: .mat files, coordinate order, ordering, bags, errors, store."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from histo_lightning.data.datasets.colon import (
    RELEASE_DIR,
    build_colon_store,
    colon_bags,
    cut_patches,
    read_detection_mat,
    scan_colon,
)
from histo_lightning.errors import DatasetLayoutError
from tests.mil.conftest import write_colon_image


def _image(height: int = 40, width: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)


def test_empty_class_is_the_release_0x2_uint8_array(tmp_path: Path) -> None:
    path = tmp_path / "img1_epithelial.mat"
    scipy.io.savemat(str(path), {"detection": np.zeros((0, 2), np.uint8)})
    assert scipy.io.loadmat(str(path))["detection"].dtype == np.uint8  # what the release holds
    points = read_detection_mat(path)
    assert points.shape == (0, 2) and points.dtype == np.float64


def test_mat_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"missing .*img3_others\.mat"):
        read_detection_mat(tmp_path / "img3_others.mat")
    scipy.io.savemat(str(tmp_path / "wrong.mat"), {"points": np.ones((2, 2))})
    with pytest.raises(DatasetLayoutError, match=r"wrong.mat has no variable 'detection'"):
        read_detection_mat(tmp_path / "wrong.mat")
    scipy.io.savemat(str(tmp_path / "three.mat"), {"detection": np.ones((4, 3))})
    with pytest.raises(DatasetLayoutError, match=r"shape \(4, 3\); expected K×2"):
        read_detection_mat(tmp_path / "three.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a matlab file at all")
    with pytest.raises(DatasetLayoutError, match=r"junk\.mat is not a readable MATLAB file"):
        read_detection_mat(tmp_path / "junk.mat")


def test_nucleus_at_a_known_pixel_x_is_column_y_is_row_one_based(tmp_path: Path) -> None:
    image = np.full((40, 50, 3), 128, np.uint8)
    image[10, 30] = (255, 0, 0)  # row 10, column 30 (0-based)
    # MATLAB 1-based x = column + 1 = 31, y = row + 1 = 11, with a sub-pixel offset
    write_colon_image(tmp_path, 1, image, {"epithelial": [[31.2, 10.8]]})
    scan = scan_colon(tmp_path)
    assert scan.nuclei[["x", "y"]].to_numpy().tolist() == [[30, 10]]
    bag = next(colon_bags(scan, patch_size=27))
    assert bag.instances.shape == (1, 27, 27, 3)
    assert tuple(bag.instances[0, 13, 13]) == (255, 0, 0)  # the centre of the patch
    assert bag.coords.tolist() == [[30, 10]]
    assert bag.label == 1 and bag.instance_labels.tolist() == [1]


def test_images_are_ordered_by_number_and_labelled_by_epithelium(tmp_path: Path) -> None:
    for number in (1, 2, 10, 11, 100):
        points = {"fibroblast": [[5.0, 5.0], [20.0, 20.0]]}
        if number in (2, 100):
            points["epithelial"] = [[10.0, 12.0]]
        write_colon_image(tmp_path, number, _image(), points)
    scan = scan_colon(tmp_path / RELEASE_DIR)  # the release folder itself is accepted too
    assert scan.images["name"].tolist() == ["img1", "img2", "img10", "img11", "img100"]
    assert scan.images["label"].tolist() == [0, 1, 0, 0, 1]
    counts = scan.describe()
    assert counts["images"] == 5 and counts["positive_bags"] == 2
    assert counts["instances"] == 12 and counts["key_instances"] == 2
    assert scan.images["origin"].tolist()[0] == "Classification/img1/img1.bmp"


def test_instance_labels_mark_only_epithelial_nuclei(tmp_path: Path) -> None:
    write_colon_image(
        tmp_path,
        1,
        _image(),
        {
            "epithelial": [[10.0, 10.0]],
            "fibroblast": [[20.0, 20.0]],
            "inflammatory": [[30.0, 30.0]],
            "others": [[40.0, 5.0]],
        },
    )
    bag = next(colon_bags(scan_colon(tmp_path)))
    assert bag.instance_labels.tolist() == [1, 0, 0, 0]
    assert len(bag.instances) == 4


def test_border_patches_are_reflected_or_white(tmp_path: Path) -> None:
    image = _image()
    centre = np.array([[0, 0]], np.int32)  # the top-left pixel
    reflected = cut_patches(image, centre, 27, "reflect")[0]
    # BORDER_REFLECT_101: patch row 13 - d is image row d
    np.testing.assert_array_equal(reflected[13:, 13:], image[:14, :14])
    np.testing.assert_array_equal(reflected[12, 13:], image[1, :14])
    np.testing.assert_array_equal(reflected[13, 12], image[0, 1])
    white = cut_patches(image, centre, 27, "constant")[0]
    assert (white[:13] == 255).all() and (white[:, :13] == 255).all()
    np.testing.assert_array_equal(white[13:, 13:], image[:14, :14])
    corner = cut_patches(image, np.array([[49, 39]], np.int32), 27, "replicate")[0]
    assert (corner[13:, 13:] == image[39, 49]).all()


def test_layout_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        scan_colon(tmp_path / "nowhere")
    tmp_path.joinpath("wrong").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"holds neither {RELEASE_DIR}/Classification/"):
        scan_colon(tmp_path / "wrong")
    folder = write_colon_image(tmp_path, 1, _image(), {"epithelial": [[3.0, 3.0]]})
    (folder / "img1_others.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing .*img1/img1_others.mat"):
        scan_colon(tmp_path)
    for error in (DatasetLayoutError,):
        try:
            scan_colon(tmp_path)
        except error as err:
            assert "\n" not in str(err)


def test_nucleus_outside_the_image_is_a_layout_error(tmp_path: Path) -> None:
    write_colon_image(tmp_path, 1, _image(40, 50), {"others": [[3.0, 3.0], [52.0, 10.0]]})
    with pytest.raises(DatasetLayoutError, match=r"\(52, 10\) lies outside the 50×40 image"):
        scan_colon(tmp_path)


def test_image_without_nuclei_is_an_error_or_skipped(tmp_path: Path) -> None:
    write_colon_image(tmp_path, 1, _image(), {"epithelial": [[3.0, 3.0]]})
    write_colon_image(tmp_path, 2, _image(), {})  # all four classes empty
    with pytest.raises(DatasetLayoutError, match=r"img2: no classified nucleus .*empty_bags=skip"):
        scan_colon(tmp_path)
    scan = scan_colon(tmp_path, empty_bags="skip")
    assert scan.images["name"].tolist() == ["img1"]
    assert [Path(b.path).name for b in scan.skipped] == ["img2.bmp"]


def test_synthetic_tree_reads_end_to_end_into_a_store_built_once(
    colon_tiny: Path, tmp_path: Path
) -> None:
    scan = scan_colon(colon_tiny)
    marker = json.loads((colon_tiny / "SYNTHETIC_DATA.json").read_text())
    assert len(scan.images) == marker["n_images"] == 12
    assert len(scan.nuclei) == marker["n_nuclei_classified"]
    assert scan.images["name"].tolist() == [f"img{n}" for n in range(1, 13)]
    assert scan.images["label"].sum() == marker["n_positive_images"]

    cache = tmp_path / "cache"
    store = build_colon_store(scan, cache)
    assert store.n_instances == len(scan.nuclei) and len(store) == 12
    assert store.instances.shape[1:] == (27, 27, 3) and store.instances.dtype == np.uint8
    assert (store.bag_sizes == scan.images["n_nuclei"].to_numpy()).all()
    assert store.labels.tolist() == scan.images["label"].tolist()
    assert int(store.instance_labels.sum()) == marker["classified_per_class"]["epithelial"]
    # one memory-mapped array, never a file per patch
    assert sorted(p.name for p in store.folder.iterdir()) == [
        ".last_used",
        "cache.json",
        "index.npz",
        "instances.u8",
        "manifest.json",
    ]
    meta = json.loads((store.folder / "cache.json").read_text())
    assert meta["kind"] == "instances" and meta["made_by"]["patch_size"] == 27
    assert {"created", "format_version"} <= set(meta)
    # the instances are the patches of the images
    first = next(colon_bags(scan))
    np.testing.assert_array_equal(store.bag_instances(0), first.instances)
    # reused, and keyed by what made it
    assert build_colon_store(scan, cache).folder == store.folder
    assert build_colon_store(scan, cache, border="constant").folder != store.folder
    assert build_colon_store(scan, cache, patch_size=25).instances.shape[1:] == (25, 25, 3)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._instances is None
    np.testing.assert_array_equal(clone.bag_instances(3), store.bag_instances(3))
    assert not list(cache.glob(".*tmp"))


def test_a_failing_build_leaves_no_store(tmp_path: Path) -> None:
    write_colon_image(tmp_path, 1, _image(), {"epithelial": [[3.0, 3.0]]})
    scan = scan_colon(tmp_path)
    Path(scan.images.loc[0, "path"]).write_bytes(b"BM broken")
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match=r"img1\.bmp"):
        build_colon_store(scan, cache)
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]
