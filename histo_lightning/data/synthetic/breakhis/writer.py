"""Synthetic BreakHis, writing the tree: one PNG per image (rendered on the shared runner) and ``Folds.csv``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from histo_lightning.data.datasets.breakhis import FOLDS_FILE
from histo_lightning.data.synthetic.breakhis.cohort import (
    IMAGE_TAG,
    PatientSpec,
    SyntheticBreakHisConfig,
    build_patients,
    official_folds,
)
from histo_lightning.data.synthetic.breakhis.render import render_breakhis_image
from histo_lightning.data.synthetic.tree import SyntheticGenerator, run_tasks

# Fast lossless PNG: zlib level 1, Huffman-only (the sensor noise defeats LZ77 matching anyway).
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]


@dataclass(frozen=True)
class _ImageTask:
    """Everything a worker needs to render and write one image."""

    out_root: str
    patient: PatientSpec
    magnification: int
    seq: int
    height: int
    width: int
    seed: int


def image_rng(seed: int, patient_index: int, magnification: int, seq: int) -> np.random.Generator:
    """The random source of one image, independent of worker count and order."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, IMAGE_TAG, patient_index, magnification, seq])
    )


def _write_image(task: _ImageTask) -> None:
    """Render one image and write it as PNG (runs in worker processes)."""
    rng = image_rng(task.seed, task.patient.index, task.magnification, task.seq)
    rgb = render_breakhis_image(rng, task.patient, task.magnification, task.height, task.width)
    path = Path(task.out_root) / task.patient.relative_path(task.magnification, task.seq)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def _tasks(
    out_root: Path, patients: list[PatientSpec], config: SyntheticBreakHisConfig
) -> list[_ImageTask]:
    """One task per image, in a fixed order."""
    return [
        _ImageTask(str(out_root), p, mag, seq, config.height, config.width, config.seed)
        for p in patients
        for mag, seq in p.images()
    ]


def _write_folds_csv(
    path: Path, patients: list[PatientSpec], config: SyntheticBreakHisConfig
) -> None:
    """``Folds.csv`` with one ``fold,mag,grp,filename`` row per fold and image."""
    folds = official_folds(patients, config)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["fold", "mag", "grp", "filename"])
        for fold, test in folds.items():
            for p in patients:
                grp = "test" if p.index in test else "train"
                for mag, seq in p.images():
                    writer.writerow([fold, mag, grp, str(p.relative_path(mag, seq))])


def _write_tree(
    tmp: Path, config: SyntheticBreakHisConfig, workers: int, progress: bool
) -> dict[str, Any]:
    """Render every image into the (empty) folder ``tmp``, write ``Folds.csv``; the marker's counts."""
    patients = build_patients(config)
    for p in patients:
        for mag, _ in p.image_counts:
            (tmp / p.relative_path(mag, 1).parent).mkdir(parents=True, exist_ok=True)
    tasks = _tasks(tmp, patients, config)
    run_tasks(_write_image, tasks, workers, "Synthetic BreakHis", progress, batch_size=4)
    if config.write_folds_csv:
        _write_folds_csv(tmp / FOLDS_FILE, patients, config)
    return {"n_images": len(tasks), "n_patients": len(patients)}


#: the generator (dataset, display name, module, config, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator(
    "breakhis", "BreakHis", __package__, SyntheticBreakHisConfig, _write_tree
)
#: write a synthetic BreakHis tree at ``root`` atomically (byte-identical for any ``workers``)
generate_breakhis = GENERATOR.generate
#: the synthetic tree for a config at ``data_dir/synthetic/breakhis-<fingerprint>``, generated once
ensure_synthetic_breakhis = GENERATOR.ensure
