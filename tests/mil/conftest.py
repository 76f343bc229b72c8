"""Fixtures of the MIL tests: tiny synthetic Colon and UCSB trees (generated once per session) and
helpers that write hand-made trees in the real layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from histo_lightning.data.datasets.colon import CLASSIFICATION_DIR, NUCLEUS_CLASSES, RELEASE_DIR
from histo_lightning.data.synthetic.colon import SyntheticColonConfig, ensure_synthetic_colon
from histo_lightning.data.synthetic.ucsb import SyntheticUcsbConfig, ensure_synthetic_ucsb


@pytest.fixture(scope="session")
def colon_tiny(data_dir: Path) -> Path:
    return ensure_synthetic_colon(
        data_dir, SyntheticColonConfig.from_preset("tiny"), progress=False
    )


@pytest.fixture(scope="session")
def ucsb_tiny(data_dir: Path) -> Path:
    return ensure_synthetic_ucsb(data_dir, SyntheticUcsbConfig.from_preset("tiny"), progress=False)


def write_colon_image(
    root: Path, number: int, image: np.ndarray, points: dict[str, np.ndarray]
) -> Path:
    """``imgN`` under ``root/<release>/Classification`` with the given 1-based (x, y) points per class;
    classes not in ``points`` get the release's empty 0×2 uint8 array."""
    folder = root / RELEASE_DIR / CLASSIFICATION_DIR / f"img{number}"
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"img{number}.bmp"), np.ascontiguousarray(image[..., ::-1]))
    for cls in NUCLEUS_CLASSES:
        value = points.get(cls)
        value = np.zeros((0, 2), np.uint8) if value is None else np.asarray(value, np.float64)
        scipy.io.savemat(str(folder / f"img{number}_{cls}.mat"), {"detection": value})
    return folder
