"""The patch index of mitosis data: positives around each mitosis, negatives by IoA (CHS-Net §3.4, §4.2.1).

**Patch index** (CHS-Net §3.4 and §4.2.1). Patches are never files: a patch is a row
``(hpf, cy, cx, angle, label, original)`` of an index over the HPFs, which are held once in a
memory-mapped cache (stain-normalised). ``cy, cx`` is the patch centre in HPF pixels (the patch covers
rows ``cy-64 … cy+63``), ``angle`` a rotation in degrees. *Positives* (§3.4.1, §3.4.2, §4.2.1): a
128×128 patch centred on every annotated mitosis (set S1), augmented *in the source image* so no patch
has blank areas: ``n_translations`` (5) translated copies, each moved by a random length up to
``max_translation`` (16 px) in a random direction (rounded to whole pixels), and every patch (original and
translated) rotated ``n_rotations`` (6) times by random angles, each rotated patch cut from the original
map around its centre (:func:`~histo_lightning.data.sampling.patching.extract_patch`), so its corners hold the
surrounding tissue, not blank. That is (1 + 5) × (1 + 6) = 42 patches per mitosis; the paper's
1522 → 65082 is 42.8 per mitosis. *Negatives* (§3.4.1 Eq. 8, §4.2.1 third step): a 128×128 window
traverses each HPF from the upper left corner with stride 64 (window origins ``0, 64, …`` up to the last
that fits). With S2 the 64×64 boxes centred on the mitoses (the "green box that can contain the whole
mitotic cell"), a window whose IoA ``area(S2 box ∩ window) / area(window)`` is below 0.0625 for every S2
box is a negative; otherwise it is ignored (neither positive nor negative). Since the window is 128×128,
IoA ≥ 0.0625 means an overlap of at least 1024 px², e.g. a mitosis closer than 80 px (horizontally, when
vertically aligned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from histo_lightning.data.sampling.patching import centred_boxes, ioa, window_origins

PATCH_SIZE = 128
INDEX_COLUMNS = ("hpf", "cy", "cx", "angle", "label", "original")


@dataclass(frozen=True)
class PatchSampling:
    """The patch settings of §3.4 / §4.2.1 (the defaults are the paper's)."""

    patch_size: int = PATCH_SIZE
    negative_stride: int = 64
    ioa_box: int = 64
    ioa_threshold: float = 0.0625
    n_translations: int = 5
    max_translation: float = 16.0
    n_rotations: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_size != PATCH_SIZE:
            raise ValueError(
                "CHS-Net patches are 128 x 128 (the network builds 64 x 64 views of them)"
            )
        if self.negative_stride < 1 or self.ioa_box < 1 or not 0 < self.ioa_threshold <= 1:
            raise ValueError("negative_stride and ioa_box must be >= 1 and ioa_threshold in (0, 1]")
        if self.n_translations < 0 or self.n_rotations < 0 or self.max_translation < 0:
            raise ValueError("n_translations, n_rotations and max_translation must be >= 0")


def negative_windows(
    height: int, width: int, mitoses: np.ndarray, sampling: PatchSampling
) -> tuple[np.ndarray, int]:
    """Origins ``(K, 2)`` of the negative windows of one HPF and the number of ignored windows."""
    origins = window_origins(height, width, sampling.patch_size, sampling.negative_stride)
    if len(mitoses) == 0 or len(origins) == 0:
        return origins, 0
    windows = np.concatenate([origins, origins + sampling.patch_size], axis=1)
    overlap = ioa(windows, centred_boxes(mitoses, sampling.ioa_box))
    keep = (overlap < sampling.ioa_threshold).all(axis=1)
    return origins[keep], int((~keep).sum())


def positive_samples(
    mitoses: np.ndarray, sampling: PatchSampling, rng: np.random.Generator
) -> np.ndarray:
    """``(K, 4)`` rows ``(cy, cx, angle, original)`` of the augmented positives of one HPF's mitoses."""
    rows = []
    for cy, cx in np.asarray(mitoses, dtype=np.float64).reshape(-1, 2):
        length = rng.uniform(0.0, sampling.max_translation, sampling.n_translations)
        direction = rng.uniform(0.0, 2 * np.pi, sampling.n_translations)
        shifts = np.round(np.stack([length * np.sin(direction), length * np.cos(direction)], 1))
        centres = np.concatenate([[[cy, cx]], np.array([cy, cx]) + shifts])
        for k, (y, x) in enumerate(centres):
            angles = rng.uniform(0.0, 360.0, sampling.n_rotations)
            rows.append((y, x, 0.0, float(k == 0)))
            rows.extend((y, x, float(a), 0.0) for a in angles)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def build_patch_index(
    shapes: np.ndarray, mitoses: list[np.ndarray], sampling: PatchSampling
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The patch index of all HPFs and counts ``{"positives", "mitoses", "negatives", "ignored"}``.

    Args:
        shapes: ``(n_hpfs, 2)`` heights and widths.
        mitoses: per HPF, the ``(K, 2)`` annotated ``(row, col)`` points.
        sampling: the settings. Positives of HPF ``i`` use the random stream ``(seed, i)``, so an HPF's
            positives do not change when other HPFs are added or dropped.
    """
    half = sampling.patch_size / 2
    parts, counts = [], {"positives": 0, "mitoses": 0, "negatives": 0, "ignored": 0}
    for i, ((height, width), points) in enumerate(zip(shapes, mitoses)):
        rng = np.random.default_rng(np.random.SeedSequence([sampling.seed, i]))
        positives = positive_samples(points, sampling, rng)
        origins, ignored = negative_windows(int(height), int(width), points, sampling)
        negatives = np.concatenate(
            [origins + half, np.zeros((len(origins), 1)), np.ones((len(origins), 1))], axis=1
        )
        for rows, label in ((positives, 1), (negatives, 0)):
            frame = pd.DataFrame(rows, columns=["cy", "cx", "angle", "original"])
            frame.insert(0, "hpf", i)
            frame["label"] = label
            parts.append(frame)
        counts["mitoses"] += len(points)
        counts["positives"] += len(positives)
        counts["negatives"] += len(origins)
        counts["ignored"] += ignored
    index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
    index = index.astype(
        {
            "hpf": np.int32,
            "cy": np.float32,
            "cx": np.float32,
            "angle": np.float32,
            "label": np.int64,
        }
    )
    index["original"] = index["original"].astype(bool)
    return index[list(INDEX_COLUMNS)], counts


__all__ = [
    "INDEX_COLUMNS",
    "PATCH_SIZE",
    "PatchSampling",
    "build_patch_index",
    "negative_windows",
    "positive_samples",
]
