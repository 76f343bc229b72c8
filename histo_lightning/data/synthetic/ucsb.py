"""Deterministic synthetic UCSB breast cancer data in the exact distributed layout.

The tree written by :func:`generate_ucsb` is what :mod:`histo_lightning.data.datasets.ucsb` reads::

    <root>/Breast Cancer Cells/ytma{NN}_{MMDDYY}_{benign|malignant}{k}_ccd.tif   RGB TIFF (PackBits)
    <root>/Breast Cancer Cells/ytma49_..._ccd.TIF                                 upper-case extension
    <root>/SYNTHETIC_TRUTH/<stem>.png      tumour mask of every image (not in the real data)
    <root>/SYNTHETIC_DATA.json             marks the tree as synthetic, holds the config and counts

Images of TMA 49 get the upper-case ``.TIF`` extension (as ``ytma49_111003_malignant1_ccd.TIF`` of the
real set), the others ``.tif``. The real set has 58 images of 896×768, 32 benign and 26 malignant; the
``full`` preset writes the same, ``demo`` the same count at half the side, ``tiny`` a few small images.

What the method is about is built in (Li et al. §1, §3):

* **Malignant bags**: tumour nests (irregular, crowded, large pleomorphic vesicular nuclei with prominent
  nucleoli in amphophilic cytoplasm) cover a minority of the tissue (share ~ ``Beta(tumour_share)``,
  mean ≈ 0.22), so the key patches are a minority among stroma, benign ducts and fat.
* **Benign bags** hold look-alike hard negatives, more than malignant bags do: ducts with usual ductal
  hyperplasia (lumens filled with crowded, slightly enlarged but uniform nuclei) and dense lymphocyte
  aggregates.
* Background: the round TMA core's edge (white glass) crosses some images, fat vacuoles and tears are
  white, so the HSV-Otsu filter of §4.0.1 has something to remove.
* Each TMA (``ytma{NN}``) has its own stain, and every TMA holds both classes.

Everything is a function of the config: the same config gives byte-identical files. It is not the UCSB
dataset: numbers on it say nothing about the method's real performance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import tifffile

from histo_lightning.data.datasets.ucsb import (
    IMAGE_DIR,
    IMAGE_SIZE,
    N_BENIGN,
    N_MALIGNANT,
    SYNTHETIC_TRUTH_DIR,
)
from histo_lightning.data.synthetic.he_render import (
    Ellipses,
    StainStyle,
    apply_acquisition,
    fibrous_noise,
    fill_polygons,
    fractal_noise,
    make_nuclei,
    random_blobs,
    render_nuclei,
    render_optical_density,
    sample_in_mask,
    sample_stain_style,
    smooth_noise,
    soften,
)
from histo_lightning.data.synthetic.tree import SyntheticConfig, SyntheticGenerator, run_tasks

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PX_PER_UM = 2.0
TRUTH_DIR = SYNTHETIC_TRUTH_DIR
UPPER_CASE_TMA = 49
TMAS = ((10, "010704"), (12, "010804"), (23, "022103"), (49, "111003"), (55, "030603"))
_TMA_TAG, _IMAGE_TAG = 0x7A3A, 0x1A6F

PRESETS: dict[str, dict] = {
    # tests: 8 images of 256×192 (8 × 6 = 48 patches of 32 px), both extension cases
    "tiny": {"n_benign": 4, "n_malignant": 4, "image_size": (192, 256), "n_tmas": 4},
    # a CPU demo of minutes: the real 32 + 26 images at half the side (14 × 12 = 168 patches each)
    "demo": {"image_size": (384, 448)},
    # the real set's size: 58 images of 896×768 (672 patches each)
    "full": {},
}


@dataclass(frozen=True)
class SyntheticUcsbConfig(SyntheticConfig):
    """Parameters of a synthetic UCSB tree (all of them enter the fingerprint).

    Attributes:
        n_benign, n_malignant: images per class (the real set: 32 and 26).
        image_size: (height, width) in pixels (the real set: 768 × 896).
        n_tmas: number of tissue microarrays the images come from (each has its own stain).
        tumour_share: Beta(a, b) of the tissue share covered by tumour in a malignant image.
        lookalikes_benign: mean number of look-alike structures (hyperplastic ducts, lymphocyte
            aggregates) in a benign image, per 896×768 area.
        lookalikes_malignant: the same in a malignant image.
        core_edge_probability: share of images crossed by the edge of the TMA core (white glass).
        seed: master seed.
    """

    n_benign: int = N_BENIGN
    n_malignant: int = N_MALIGNANT
    image_size: tuple[int, int] = IMAGE_SIZE
    n_tmas: int = len(TMAS)
    tumour_share: tuple[float, float] = (2.0, 7.0)
    lookalikes_benign: float = 3.0
    lookalikes_malignant: float = 1.0
    core_edge_probability: float = 0.5
    seed: int = 0
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if self.n_benign < 1 or self.n_malignant < 1:
            raise ValueError("need at least one benign and one malignant image")
        if not 1 <= self.n_tmas <= len(TMAS):
            raise ValueError(f"n_tmas must be in 1…{len(TMAS)}")
        height, width = (int(v) for v in self.image_size)
        if height < 64 or width < 64:
            raise ValueError("image_size must be at least 64×64")
        object.__setattr__(self, "image_size", (height, width))
        object.__setattr__(self, "tumour_share", tuple(float(v) for v in self.tumour_share))

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> SyntheticUcsbConfig:
        """The named preset (``tiny``, ``demo`` or ``full``) with some fields overridden."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        fields = {**PRESETS[preset], **overrides}
        if "image_size" in fields:
            fields["image_size"] = tuple(fields["image_size"])
        return cls(**fields)


def _um(v: float) -> float:
    return v * PX_PER_UM


@dataclass(frozen=True)
class UcsbImageSpec:
    """One image: its name fields, TMA index and label."""

    tma: int
    date: str
    cls: str
    k: int
    tma_index: int
    index: int

    @property
    def name(self) -> str:
        ext = "TIF" if self.tma == UPPER_CASE_TMA else "tif"
        return f"ytma{self.tma}_{self.date}_{self.cls}{self.k}_ccd.{ext}"

    @property
    def malignant(self) -> bool:
        return self.cls == "malignant"


def build_images(config: SyntheticUcsbConfig) -> list[UcsbImageSpec]:
    """Every image: TMAs dealt round robin within each class; a pure function of ``config``."""
    tmas = TMAS[: config.n_tmas] if config.n_tmas > 3 else (TMAS[3], *TMAS[: config.n_tmas - 1])
    specs, counters = [], {}
    for cls, n in (("benign", config.n_benign), ("malignant", config.n_malignant)):
        for i in range(n):
            t = i % len(tmas)
            tma, date = tmas[t]
            counters[(tma, cls)] = counters.get((tma, cls), 0) + 1
            specs.append(UcsbImageSpec(tma, date, cls, counters[(tma, cls)], t, len(specs)))
    return specs


def tma_stain(seed: int, tma: int) -> StainStyle:
    """The stain of one tissue microarray."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TMA_TAG, tma]))
    return sample_stain_style(rng, od_sigma=0.07, gain_sigma=0.2, background_range=(232.0, 252.0))


# --------------------------------------------------------------------------------------------
# Rendering one image
# --------------------------------------------------------------------------------------------


def _blobs_in(
    rng: np.random.Generator, shape, n: int, radius_um: tuple[float, float], irregularity
):
    height, width = shape
    centres = np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], axis=1)
    radius = np.array([_um(rng.uniform(*radius_um)) for _ in range(n)])
    return random_blobs(rng, centres, radius, irregularity, elongation=(1.0, 1.6))


def render_ucsb_image(
    rng: np.random.Generator,
    shape: tuple[int, int],
    stain: StainStyle,
    malignant: bool,
    config: SyntheticUcsbConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB ``(H, W, 3)`` uint8 image and its ``(H, W)`` uint8 tumour mask (255 = tumour)."""
    height, width = shape
    scale = height * width / (IMAGE_SIZE[0] * IMAGE_SIZE[1])
    # tissue: inside the TMA core, minus fat vacuoles and tears
    tissue = np.ones(shape, np.float32)
    if rng.random() < config.core_edge_probability:
        radius = _um(rng.uniform(500.0, 800.0))
        angle = rng.uniform(0, 2 * np.pi)
        reach = rng.uniform(0.65, 0.9) * max(height, width) / 2
        cx = width / 2 + np.cos(angle) * (radius - reach)
        cy = height / 2 + np.sin(angle) * (radius - reach)
        tissue = fill_polygons(
            shape,
            random_blobs(rng, np.array([[cx, cy]]), np.array([radius]), 0.03).polygons(),
        )
    holes = (fractal_noise(rng, shape, _um(25.0)) > rng.uniform(1.6, 2.4)).astype(np.float32)
    tissue = soften(tissue * (1 - holes), _um(1.0))
    fibres = fibrous_noise(rng, shape, _um(2.0), rng.uniform(0, np.pi), waviness=1.5)
    eosin = 0.2 + 0.16 * fibres + 0.04 * smooth_noise(rng, shape, _um(40.0))
    hema = np.full(shape, 0.02, np.float32)
    parts: list[Ellipses] = []
    epithelium = np.zeros(shape, np.float32)

    # normal ducts: lumen, luminal cells, myoepithelial layer
    ducts = _blobs_in(rng, shape, int(rng.poisson(3.0 * scale)), (18.0, 40.0), 0.12)
    if len(ducts):
        duct = fill_polygons(shape, ducts.polygons(1.0))
        lumen = fill_polygons(shape, ducts.polygons(0.55))
        epithelium = np.maximum(epithelium, duct)
        luminal, tangent = ducts.ring_points(0.75, _um(7.0), rng)
        parts.append(
            make_nuclei(
                rng, luminal, _um(7.0), 0.1, (0.6, 0.9), 0.7, 0.12, 0.25, angle=tangent + np.pi / 2
            )
        )
        myo, tangent = ducts.ring_points(0.95, _um(9.0), rng)
        parts.append(
            make_nuclei(rng, myo, _um(5.5), 0.1, (0.25, 0.45), 0.9, 0.1, 0.1, angle=tangent)
        )
        eosin = eosin * (1 - duct) + duct * 0.3
        eosin = eosin * (1 - 0.85 * soften(lumen, _um(0.8)))

    # look-alike hard negatives: hyperplastic ducts and lymphocyte aggregates
    mean_look = (config.lookalikes_malignant if malignant else config.lookalikes_benign) * scale
    n_look = int(rng.poisson(mean_look))
    n_udh = int(rng.binomial(n_look, 0.5))
    if n_udh:
        udh = _blobs_in(rng, shape, n_udh, (22.0, 45.0), 0.15)
        filled = fill_polygons(shape, udh.polygons(1.0))
        epithelium = np.maximum(epithelium, filled)
        slits = (smooth_noise(rng, shape, _um(6.0)) > 1.6).astype(np.float32) * filled
        centres = sample_in_mask(rng, filled * (1 - slits), _um(8.0), 0.5)
        parts.append(
            make_nuclei(
                rng,
                centres,
                _um(8.5),
                0.12,
                (0.55, 0.9),
                0.75,
                0.12,
                0.3,
                fill=(0.5, 0.85),
                nucleolus_prob=0.25,
            )
        )
        eosin = eosin * (1 - filled) + filled * 0.3 * (1 - 0.8 * slits)
        myo, tangent = udh.ring_points(1.0, _um(9.0), rng)
        parts.append(
            make_nuclei(rng, myo, _um(5.5), 0.1, (0.25, 0.45), 0.9, 0.1, 0.1, angle=tangent)
        )
    for _ in range(n_look - n_udh):
        centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        spread = _um(rng.uniform(15.0, 35.0))
        n = int(rng.integers(40, 120))
        pts = centre + rng.normal(0, spread, (n, 2))
        parts.append(make_nuclei(rng, pts, _um(6.0), 0.08, (0.85, 1.0), 1.3, 0.08, 0.08))

    # tumour nests (malignant): a minority of the tissue
    tumour = np.zeros(shape, np.float32)
    if malignant:
        target = float(np.clip(rng.beta(*config.tumour_share), 0.04, 0.6)) * float(tissue.mean())
        for _ in range(40):
            if tumour.mean() >= target:
                break
            nest = _blobs_in(rng, shape, 1, (20.0, 60.0), 0.35)
            tumour = np.maximum(tumour, fill_polygons(shape, nest.polygons(1.0)))
        tumour *= tissue > 0.5
        centres = sample_in_mask(rng, tumour, _um(10.5), 0.5)
        parts.append(
            make_nuclei(
                rng,
                centres,
                _um(11.0),
                0.35,
                (0.55, 1.0),
                0.8,
                0.25,
                0.45,
                fill=(0.3, 0.75),
                nucleolus_prob=0.8,
                nucleolus_intensity=0.8,
            )
        )
        eosin = eosin * (1 - tumour) + tumour * 0.28
        hema = hema + 0.07 * tumour
        epithelium = np.maximum(epithelium, tumour)

    # stroma: fibroblasts and scattered lymphocytes
    stroma = (1 - epithelium) * tissue
    fibro = sample_in_mask(rng, stroma, _um(22.0), 0.9, 0.7)
    parts.append(make_nuclei(rng, fibro, _um(5.0), 0.15, (0.18, 0.38), 0.9, 0.15, 0.1))
    lymph = sample_in_mask(rng, stroma, _um(40.0), 0.9, 0.4)
    parts.append(make_nuclei(rng, lymph, _um(6.0), 0.08, (0.85, 1.0), 1.3, 0.08, 0.08))

    hema = hema + render_nuclei(rng, shape, Ellipses.concat(parts), _um(1.0))
    rgb = render_optical_density(hema * tissue, (eosin * tissue).astype(np.float32), stain)
    mask = ((tumour > 0.5) & (tissue > 0.5)).astype(np.uint8) * 255
    return apply_acquisition(rng, rgb), mask


# --------------------------------------------------------------------------------------------
# Writing the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageTask:
    root: str
    config: SyntheticUcsbConfig
    spec: UcsbImageSpec


def _write_image(task: _ImageTask) -> float:
    """Render and write one TIFF and its truth mask; the image's tumour share."""
    config, spec = task.config, task.spec
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _IMAGE_TAG, spec.index]))
    stain = tma_stain(config.seed, spec.tma)
    rgb, mask = render_ucsb_image(rng, config.image_size, stain, spec.malignant, config)
    root = Path(task.root)
    tifffile.imwrite(root / IMAGE_DIR / spec.name, rgb, photometric="rgb", compression="packbits")
    stem = spec.name.rsplit(".", 1)[0]
    if not cv2.imwrite(str(root / TRUTH_DIR / f"{stem}.png"), mask):
        raise OSError(f"could not write the truth mask of {spec.name}")
    return float((mask > 0).mean())


def _write_tree(
    tmp: Path, config: SyntheticUcsbConfig, workers: int, progress: bool
) -> dict[str, Any]:
    """Render every image into the (empty) folder ``tmp``; the marker's counts."""
    (tmp / IMAGE_DIR).mkdir()
    (tmp / TRUTH_DIR).mkdir()
    specs = build_images(config)
    tasks = [_ImageTask(str(tmp), config, spec) for spec in specs]
    tumour_share = run_tasks(_write_image, tasks, workers, "Synthetic UCSB", progress)
    return {
        "n_images": len(specs),
        "n_benign": config.n_benign,
        "n_malignant": config.n_malignant,
        "mean_tumour_share_malignant": round(
            float(np.mean([s for s, spec in zip(tumour_share, specs) if spec.malignant])), 4
        ),
        "truth": f"{TRUTH_DIR}/<stem>.png: 255 where tumour (not part of the real dataset)",
    }


#: the generator (dataset, display name, module, config from a preset, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator(
    "ucsb", "the UCSB breast cancer set", __name__, SyntheticUcsbConfig.from_preset, _write_tree
)
#: write a synthetic UCSB tree at ``root`` atomically (see the module docstring) and return it
generate_ucsb = GENERATOR.generate
#: the synthetic tree for a config at ``data_dir/synthetic/ucsb-<fingerprint>``, generated once
ensure_synthetic_ucsb = GENERATOR.ensure


__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "PRESETS",
    "TRUTH_DIR",
    "SyntheticUcsbConfig",
    "build_images",
    "ensure_synthetic_ucsb",
    "generate_ucsb",
    "render_ucsb_image",
]
