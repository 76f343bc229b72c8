"""The TUPAC16 reader on its real layout, the prediction writers, the synthetic generator and Macenko."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from histo_lightning.data.datasets.tupac16 import (
    read_ground_truth,
    scan_test_set,
    scan_tupac16,
)
from histo_lightning.data.stain import MacenkoNormalizer
from histo_lightning.data.synthetic.tupac16 import SyntheticTupacConfig, ensure_synthetic_tupac16
from histo_lightning.errors import DatasetLayoutError
from histo_lightning.methods.chsnet.outputs import write_challenge_csv, write_geojson


def _write_hpf(root: Path, case: str, name: str, csv: str | None, size: int = 64) -> None:
    image = root / "mitoses_image_data" / case / f"{name}.tif"
    image.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image), np.full((size, size, 3), 200, np.uint8))
    if csv is not None:
        label = root / "mitoses_ground_truth" / case / f"{name}.csv"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(csv)


def test_reader_cases_hpfs_points_and_missing_or_empty_csv(tmp_path: Path) -> None:
    _write_hpf(tmp_path, "01", "01", "10,20\n30,40\n")
    _write_hpf(tmp_path, "01", "02", None)  # no CSV: no mitosis
    _write_hpf(tmp_path, "30", "01", "")  # empty CSV: no mitosis
    _write_hpf(tmp_path, "55", "03", "row,col\n5,6,0.9\n")  # header and a confidence column
    (tmp_path / "mitoses-test-image-data" / "07").mkdir(parents=True)
    cv2.imwrite(
        str(tmp_path / "mitoses-test-image-data" / "07" / "01.tif"), np.zeros((8, 8, 3), np.uint8)
    )
    hpfs, mitoses = scan_tupac16(tmp_path)
    assert hpfs[["case", "name"]].values.tolist() == [
        ["01", "01"],
        ["01", "02"],
        ["30", "01"],
        ["55", "03"],
    ]
    assert hpfs["centre"].tolist() == [0, 0, 1, 2]
    assert hpfs["n_mitoses"].tolist() == [2, 0, 0, 1]
    np.testing.assert_array_equal(mitoses[0], [[10, 20], [30, 40]])  # (row, col)
    assert mitoses[1].shape == (0, 2) and mitoses[2].shape == (0, 2)
    np.testing.assert_array_equal(mitoses[3], [[5, 6]])
    test = scan_test_set(tmp_path)
    assert test[["case", "name"]].values.tolist() == [["07", "01"]]


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"mitoses_image_data.*dataset=tupac16_synthetic"):
        scan_tupac16(tmp_path / "nope")
    tmp_path.joinpath("mitoses_image_data").mkdir()
    with pytest.raises(DatasetLayoutError, match="no HPF images"):
        scan_tupac16(tmp_path)
    _write_hpf(tmp_path, "02", "01", "1,2\nabc,3\n")
    with pytest.raises(DatasetLayoutError, match=r"02/01\.csv:2: expected 'row,col'"):
        scan_tupac16(tmp_path)
    bad = tmp_path / "mitoses_ground_truth" / "02" / "09.csv"
    bad.write_text("1,2\n")
    (tmp_path / "mitoses_ground_truth" / "02" / "01.csv").write_text("1,2\n")
    with pytest.raises(DatasetLayoutError, match=r"09\.csv has no image"):
        scan_tupac16(tmp_path)


def test_prediction_writers(tmp_path: Path) -> None:
    points, scores = np.array([[10.4, 20.6], [300.0, 5.0]]), np.array([0.9, 0.87654])
    path = write_challenge_csv(tmp_path / "preds" / "03" / "01.csv", points, scores)
    assert path.read_text() == "10,21,0.9000\n300,5,0.8765\n"
    assert read_ground_truth(path).tolist() == [[10, 21], [300, 5]]  # the same row,col convention
    geo = json.loads(write_geojson(tmp_path / "a.geojson", points, scores).read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    first = geo["features"][0]
    assert first["geometry"] == {"type": "Point", "coordinates": [20.6, 10.4]}  # QuPath: x = col
    assert first["properties"]["objectType"] == "annotation"
    assert not list(tmp_path.rglob("*.tmp*"))


def test_synthetic_tupac16_layout_and_determinism(data_dir: Path, tmp_path: Path) -> None:
    config = SyntheticTupacConfig.from_preset("tiny")
    root = ensure_synthetic_tupac16(data_dir, config, progress=False)
    marker = json.loads((root / "SYNTHETIC_DATA.json").read_text())
    assert marker["synthetic"] is True and marker["config"] == config.to_json_dict()
    hpfs, mitoses = scan_tupac16(root)  # the real reader reads it
    assert hpfs["case"].nunique() == config.n_cases and len(hpfs) > config.n_cases
    assert set(hpfs["centre"]) == {0, 1, 2}  # cases from all three centres
    assert (hpfs["label_path"] == "").any()  # some HPFs have no CSV ...
    csvs = [Path(p) for p in hpfs["label_path"] if p]
    assert any(p.stat().st_size == 0 for p in csvs)  # ... some an empty one
    assert sum(len(m) for m in mitoses.values()) > 0
    assert len(scan_test_set(root)) == config.n_test_cases
    truth = pd.read_csv(root / "SYNTHETIC_TRUTH.csv")
    train = truth[truth["split"] == "train"]
    assert {"telophase", "apoptotic", "lymphocytes", "pyknotic"} <= set(train["kind"])
    # unannotated mitoses exist (label noise) and the CSVs hold exactly the annotated ones
    assert ((train["mitosis"] == 1) & (train["annotated"] == 0)).any()
    assert (train["annotated"] == 1).sum() == sum(len(m) for m in mitoses.values())
    # deterministic: generated again elsewhere, byte-identical images and labels
    again = ensure_synthetic_tupac16(tmp_path, config, progress=False)
    for path in sorted(root.rglob("*.tif"))[:3] + sorted(root.rglob("*.csv"))[:3]:
        assert path.read_bytes() == (again / path.relative_to(root)).read_bytes()


def test_macenko_maps_different_stains_towards_one_target() -> None:
    rng = np.random.default_rng(0)
    normalizer = MacenkoNormalizer()
    # two "centres": the same tissue rendered with different stain vectors (Beer-Lambert)
    concentrations = rng.gamma(2.0, 0.4, size=(2, 64 * 64))
    inputs, outputs = [], []
    for stains in (
        np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]),
        np.array([[0.50, 0.80, 0.33], [0.20, 0.90, 0.38]]),
    ):
        stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
        od = concentrations.T @ stains
        image = np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8).reshape(64, 64, 3)
        inputs.append(image.astype(float))
        outputs.append(normalizer(image).astype(float))
    before = np.abs(inputs[0] - inputs[1]).mean()
    after = np.abs(outputs[0] - outputs[1]).mean()
    assert outputs[0].shape == (64, 64, 3)
    assert after < before / 3, (before, after)  # the same tissue looks alike after normalisation
    # batched in torch: one call normalises a batch
    batch = torch.from_numpy(np.stack([outputs[0], outputs[1]]).astype(np.uint8))
    assert normalizer.normalize(batch).shape == batch.shape
