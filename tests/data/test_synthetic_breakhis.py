"""The synthetic BreakHis generator: real on-disk layout, determinism, atomicity, reuse, and the
properties that make it useful (stain differs per patient, nuclei grow with magnification)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from histo_lightning.data.datasets.breakhis import FILENAME as FILENAME_RE
from histo_lightning.data.datasets.breakhis import PATIENT_DIR as PATIENT_DIR_RE
from histo_lightning.data.synthetic import breakhis as synth
from histo_lightning.data.synthetic.breakhis import (
    SyntheticBreakHisConfig,
    build_patients,
    ensure_synthetic_breakhis,
    generate_breakhis,
    image_rng,
    render_breakhis_image,
)
from histo_lightning.stores.store import INFO_FILE, LAST_USED

TINY = SyntheticBreakHisConfig(
    n_benign_patients=2,
    n_malignant_patients=4,
    images_per_magnification=2,
    height=96,
    width=144,
    n_official_folds=3,
)
SUBTYPE_CODES = {
    "adenosis": "A",
    "fibroadenoma": "F",
    "phyllodes_tumor": "PT",
    "tubular_adenoma": "TA",
    "ductal_carcinoma": "DC",
    "lobular_carcinoma": "LC",
    "mucinous_carcinoma": "MC",
    "papillary_carcinoma": "PC",
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic tree, generated once for the layout tests."""
    return generate_breakhis(tmp_path_factory.mktemp("gen") / "tiny", TINY, progress=False)


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file of the dataset tree (not the store's own record: cache.json, .last_used)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (INFO_FILE, LAST_USED)
    }


def test_layout_and_names(tiny_root: Path) -> None:
    pngs = _pngs(tiny_root)
    patients = build_patients(TINY)
    assert len(pngs) == sum(n for p in patients for _, n in p.image_counts)
    for path in pngs:
        rel = path.relative_to(tiny_root).parts
        assert rel[:4] == ("BreaKHis_v1", "histology_slides", "breast", rel[3])
        class_dir, sob, subtype, patient_dir, mag_dir, name = rel[3:]
        file_match = FILENAME_RE.match(name)
        dir_match = PATIENT_DIR_RE.match(patient_dir)
        assert file_match and dir_match, path
        assert sob == "SOB" and class_dir == {"B": "benign", "M": "malignant"}[file_match["cls"]]
        assert SUBTYPE_CODES[subtype] == file_match["subtype"] == dir_match["subtype"]
        assert mag_dir == f"{file_match['mag']}X"
        for key in ("cls", "year", "slide"):
            assert file_match[key] == dir_match[key]
    with Image.open(pngs[0]) as image:
        assert image.mode == "RGB" and image.size == (TINY.width, TINY.height)
    slides = {p.slide_id for p in patients}
    assert len(slides) == len(patients)
    assert {p.subtype_code for p in patients if p.malignant} == {"DC", "LC", "MC", "PC"}


def test_folds_csv(tiny_root: Path) -> None:
    with (tiny_root / "Folds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["fold", "mag", "grp", "filename"]
    n_images = len(_pngs(tiny_root))
    assert len(rows) == TINY.n_official_folds * n_images
    assert {r["fold"] for r in rows} == {str(f) for f in range(1, TINY.n_official_folds + 1)}
    for row in rows:
        assert row["filename"].startswith("BreaKHis_v1/histology_slides/breast/")
        assert (tiny_root / row["filename"]).is_file()
        assert row["mag"] == FILENAME_RE.match(Path(row["filename"]).name)["mag"]
    for fold in range(1, TINY.n_official_folds + 1):
        groups: dict[str, set[str]] = {}
        classes = {"train": set(), "test": set()}
        for row in (r for r in rows if r["fold"] == str(fold)):
            patient = Path(row["filename"]).parts[6]
            groups.setdefault(patient, set()).add(row["grp"])
            classes[row["grp"]].add(FILENAME_RE.match(Path(row["filename"]).name)["cls"])
        assert all(len(g) == 1 for g in groups.values()), "a patient in both train and test"
        assert classes == {"train": {"B", "M"}, "test": {"B", "M"}}


def test_marker(tiny_root: Path) -> None:
    marker = json.loads((tiny_root / "SYNTHETIC_DATA.json").read_text())
    assert marker["synthetic"] is True and marker["dataset"] == "breakhis"
    assert marker["generator"] == "histo_lightning.data.synthetic.breakhis"
    assert marker["generator_version"] == synth.GENERATOR_VERSION
    assert marker["config"] == json.loads(json.dumps(TINY.__dict__))
    assert marker["n_images"] == len(_pngs(tiny_root))
    assert marker["n_patients"] == 6
    assert "not BreakHis" in marker["note"]


@pytest.mark.slow  # generates the tiny tree again with 1 and 3 workers (~50 s)
def test_same_bytes_for_any_worker_count(tiny_root: Path, tmp_path: Path) -> None:
    again = generate_breakhis(tmp_path / "two_workers", TINY, workers=2, progress=False)
    assert _digests(again) == _digests(tiny_root)


def test_config_and_fingerprint() -> None:
    assert TINY.fingerprint() == replace(TINY).fingerprint()
    assert TINY.fingerprint() != replace(TINY, seed=1).fingerprint()
    with pytest.raises(ValueError):
        SyntheticBreakHisConfig(magnifications=(40, 50))
    with pytest.raises(ValueError):
        SyntheticBreakHisConfig(n_benign_patients=0)


def test_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = replace(TINY, n_benign_patients=1, n_malignant_patients=1, magnifications=(40,))
    root = generate_breakhis(tmp_path / "ds", small, progress=False)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(FileExistsError):
        generate_breakhis(root, small, progress=False)

    def crash(task: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth.writer, "_write_image", crash)
    with pytest.raises(RuntimeError):
        generate_breakhis(tmp_path / "crashed", small, progress=False)
    assert not (tmp_path / "crashed").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_ensure_generates_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = replace(TINY, n_benign_patients=1, n_malignant_patients=1, magnifications=(40, 400))
    with caplog.at_level(logging.INFO, logger="histo_lightning.data.synthetic"):
        root = ensure_synthetic_breakhis(tmp_path, small, progress=False)
        assert root == tmp_path / "synthetic" / f"breakhis-{small.fingerprint()}"
        mtimes = {p: os.stat(p).st_mtime_ns for p in root.rglob("*") if p.name != LAST_USED}
        assert ensure_synthetic_breakhis(tmp_path, small, progress=False) == root
    # nothing rewritten (only the store's usage marker is touched)
    assert {p: os.stat(p).st_mtime_ns for p in root.rglob("*") if p.name != LAST_USED} == mtimes
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Generating SYNTHETIC BreakHis (not real data)" in m for m in messages) == 1
    assert sum("Reusing SYNTHETIC BreakHis" in m for m in messages) == 1


def test_stain_differs_between_patients(tiny_root: Path) -> None:
    means: dict[str, list[np.ndarray]] = {}
    for path in _pngs(tiny_root):
        rgb = np.asarray(Image.open(path), dtype=np.float64)
        tissue = rgb.mean(axis=-1) < 215  # ignore glass and lumens
        means.setdefault(path.parts[-3], []).append(rgb[tissue].mean(axis=0))
    per_patient = np.array([np.mean(v, axis=0) for v in means.values()])
    spread = np.abs(per_patient[:, None] - per_patient[None]).max(axis=-1)
    assert spread.max() > 8.0  # colour channels differ by several grey levels

    patient = build_patients(TINY)[0]
    other_stain = build_patients(replace(TINY, seed=7))[0].stain
    same_tissue = [
        render_breakhis_image(image_rng(0, 0, 100, 1), p, 100, 96, 144).astype(np.float64)
        for p in (patient, replace(patient, stain=other_stain))
    ]
    assert np.abs(same_tissue[0].mean((0, 1)) - same_tissue[1].mean((0, 1))).max() > 3.0


def _median_blob_area(rgb: np.ndarray) -> float:
    """Median area (px) of dark connected components of the red channel: nuclei absorb red
    (hematoxylin), stroma (eosin) and glass do not."""
    red = cv2.GaussianBlur(rgb[..., 0].astype(np.float32), (0, 0), 1.0)
    dark = (red < 0.55 * np.percentile(red, 90)).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    areas = areas[areas >= 4]
    return float(np.median(areas)) if len(areas) else 0.0


def test_nuclei_larger_at_400x_than_40x() -> None:
    patients = build_patients(TINY)
    area = {
        mag: np.median(
            [
                _median_blob_area(
                    render_breakhis_image(image_rng(0, p.index, mag, 1), p, mag, 230, 350)
                )
                for p in patients
            ]
        )
        for mag in (40, 400)
    }
    assert area[400] > 10 * area[40]
