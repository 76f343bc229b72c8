"""Deterministic synthetic PAIP 2019: liver whole slides with tumour masks, in the exact PAIP layout.

The tree written by :func:`generate_paip` is what the real PAIP reader expects::

    <root>/Training_phase_1/001/01_01_0100.svs          # pyramidal tiled slide (Aperio SVS, MPP set)
    <root>/Training_phase_1/001/01_01_0100_viable.tif   # full-resolution 0/1 mask of viable tumour
    <root>/Training_phase_1/001/01_01_0100_whole.tif    # full-resolution 0/1 mask of the whole tumour
    ...
    <root>/Training_phase_2/013/01_01_0112.svs          # later phases follow the same naming
    <root>/SYNTHETIC_DATA.json                          # marks the tree as synthetic, holds the config

Slides are JPEG-tiled (256×256) pyramids (downsamples 1, 4, 16) with an Aperio image description carrying
``MPP`` and ``AppMag`` (openslide reports ``openslide.mpp-x``), or, with ``slide_format="tiff"``, generic
tiled TIFFs ``<id>.tif`` whose resolution tags give the pixel size. Masks are single-level, tiled,
deflate-compressed ``uint8`` images of 0/1, like PAIP's.

Each slide is a section of liver at 20× (0.5 µm/px): glass background, one or two tissue fragments
(found by Otsu on saturation), normal parenchyma (hepatocyte plates of polygonal eosinophilic cells with
round vesicular nuclei, sinusoids, central veins and portal tracts) and one to three tumour nodules
(hepatocellular carcinoma: crowded, basophilic trabeculae of larger, darker, pleomorphic nuclei with
nucleoli, pseudoglands), each surrounded by a fibrous capsule and holding necrosis. The whole-tumour mask
is the nodules with their capsules, the viable mask that minus capsule and necrosis. A per-slide tumour
grade scales how different tumour looks from normal (low-grade slides are hard), and every slide has its
own stain. None of this is real data: results on it say nothing about real performance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import tifffile

from histo_lightning.data.datasets.paip import mask_name, phase_dir
from histo_lightning.data.synthetic.he_render import (
    Ellipses,
    apply_acquisition,
    draw_polylines,
    fibrous_noise,
    fill_polygons,
    jittered_grid,
    make_nuclei,
    random_blobs,
    random_walk_paths,
    render_nuclei,
    render_optical_density,
    sample_in_mask,
    sample_stain_style,
    smooth_noise,
    soften,
    voronoi_walls,
)
from histo_lightning.data.synthetic.tree import SyntheticConfig, SyntheticGenerator, run_tasks

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
TILE = 256
PYRAMID_DOWNSAMPLES = (1, 4, 16)
_SLIDE_TAG, _COHORT_TAG = 0x511D, 0xC0F7


@dataclass(frozen=True)
class SyntheticPaipConfig(SyntheticConfig):
    """Parameters of a synthetic PAIP tree (all of them enter the fingerprint).

    Attributes:
        n_slides: slides (real PAIP 2019 training set: 50).
        height, width: level-0 size in pixels (real slides: tens of thousands).
        mpp: microns per pixel at level 0 (PAIP: 20× Aperio, about 0.5).
        phase_split: fraction of the slides under ``Training_phase_1`` (the rest under ``Training_phase_2``).
        slide_format: ``svs`` (Aperio) or ``tiff`` (generic tiled TIFF with resolution tags).
        jpeg_quality: JPEG quality of the slide tiles.
        seed: master seed; everything is a function of the config.
    """

    n_slides: int = 20
    height: int = 3072
    width: int = 3072
    mpp: float = 0.5
    phase_split: float = 0.6
    slide_format: str = "svs"
    jpeg_quality: int = 90
    seed: int = 0
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if self.n_slides < 1:
            raise ValueError("n_slides must be >= 1")
        if min(self.height, self.width) < 512:
            raise ValueError("height and width must be >= 512 pixels")
        if self.slide_format not in ("svs", "tiff"):
            raise ValueError("slide_format must be 'svs' or 'tiff'")
        if not 0.0 <= self.phase_split <= 1.0 or not 0.2 < self.mpp < 5.0:
            raise ValueError("phase_split must be in [0, 1] and mpp in (0.2, 5)")


@dataclass(frozen=True)
class SlideSpec:
    """One synthetic slide: its names on disk and its latent look."""

    index: int
    slide_id: str  # e.g. 01_01_0100
    phase: str  # Training_phase_1 / Training_phase_2
    case: str  # the case folder, e.g. 001
    grade: float  # 0 (tumour close to normal) … 1 (clearly atypical)

    def folder(self) -> Path:
        return Path(self.phase) / self.case

    def slide_name(self, slide_format: str) -> str:
        return f"{self.slide_id}.{'svs' if slide_format == 'svs' else 'tif'}"


def build_slides(config: SyntheticPaipConfig) -> list[SlideSpec]:
    """The cohort, a pure function of ``config``."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _COHORT_TAG]))
    n_first = round(config.phase_split * config.n_slides)
    return [
        SlideSpec(
            index=i,
            slide_id=f"01_01_{100 + i:04d}",
            phase=phase_dir(1 if i < n_first else 2),
            case=f"{i + 1:03d}",
            grade=float(np.clip(rng.beta(2.0, 1.6), 0.1, 1.0)),
        )
        for i in range(config.n_slides)
    ]


# ---- rendering ---------------------------------------------------------------------------------------------
def _blob_mask(
    rng: np.random.Generator,
    shape: tuple[int, int],
    centres: np.ndarray,
    radii: np.ndarray,
    irregularity: float,
    warp_px: float,
) -> np.ndarray:
    """Filled irregular blobs, their outline roughened by smooth noise (float32 0/1)."""
    blobs = random_blobs(rng, centres, radii, irregularity, (1.0, 1.4), n_harmonics=6)
    mask = fill_polygons(shape, blobs.polygons(1.0, 256))
    if warp_px <= 0:
        return mask
    distance = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((mask < 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    signed = distance - outside
    rough = smooth_noise(rng, shape, warp_px * 2.0) * np.float32(warp_px)
    return (signed + rough > 0).astype(np.float32)


@dataclass
class _SlideLayout:
    tissue: np.ndarray
    whole: np.ndarray
    viable: np.ndarray
    capsule: np.ndarray
    necrosis: np.ndarray


def _layout(rng: np.random.Generator, shape: tuple[int, int], px_per_um: float) -> _SlideLayout:
    height, width = shape
    size = min(height, width)
    n_fragments = int(rng.choice([1, 1, 2]))
    if n_fragments == 1:
        centres = np.array([[width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55)]])
        radii = np.array([size * rng.uniform(0.36, 0.42)])
    else:
        centres = np.array(
            [
                [width * 0.32, height * rng.uniform(0.35, 0.65)],
                [width * 0.72, height * rng.uniform(0.35, 0.65)],
            ]
        )
        radii = size * rng.uniform(0.22, 0.27, size=2)
    tissue = _blob_mask(rng, shape, centres, radii, 0.25, size * 0.02)
    # tumour nodules inside the tissue, away from its edge
    inside = cv2.distanceTransform((tissue > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    n_nodules = int(rng.integers(1, 4))
    whole = np.zeros(shape, np.float32)
    necrosis = np.zeros(shape, np.float32)
    for _ in range(n_nodules):
        radius = size * rng.uniform(0.15, 0.25)
        candidates = np.argwhere(inside > radius * 0.5)
        if not len(candidates):
            continue
        cy, cx = candidates[rng.integers(len(candidates))]
        nodule = _blob_mask(
            rng, shape, np.array([[cx, cy]]), np.array([radius]), 0.2, radius * 0.05
        )
        whole = np.maximum(whole, nodule)
        if rng.random() < 0.6:
            n_foci = int(rng.integers(1, 3))
            offsets = rng.normal(0.0, 0.3 * radius, size=(n_foci, 2))
            foci = _blob_mask(
                rng,
                shape,
                np.array([[cx, cy]]) + offsets,
                radius * rng.uniform(0.08, 0.2, size=n_foci),
                0.35,
                radius * 0.04,
            )
            necrosis = np.maximum(necrosis, foci * nodule)
    if not whole.any():  # always at least one nodule
        cy, cx = np.unravel_index(np.argmax(inside), shape)
        radius = max(8.0, 0.8 * float(inside.max()))
        whole = _blob_mask(rng, shape, np.array([[cx, cy]]), np.array([radius]), 0.2, 0.0)
    whole *= tissue
    capsule_px = max(2, round(rng.uniform(15.0, 30.0) * px_per_um))
    inner = cv2.erode(
        (whole > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=capsule_px
    )
    capsule = whole - inner.astype(np.float32)
    viable = np.clip(inner.astype(np.float32) - necrosis, 0, 1)
    return _SlideLayout(tissue, whole, viable, capsule, necrosis * whole)


def _cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing_px: float,
    region: np.ndarray,
) -> np.ndarray:
    """Seeds of polygonal cells on a jittered grid inside ``region``."""
    return sample_in_mask(rng, region, spacing_px, 0.55)


def _plates(
    rng: np.random.Generator, shape: tuple[int, int], gap_px: float, width_px: float
) -> np.ndarray:
    """Sinusoid/trabecula gaps: wavy polylines about ``gap_px`` apart, ``width_px`` wide (float32 0/1)."""
    starts = jittered_grid(rng, shape, gap_px * 2.5, 0.8, margin_px=gap_px * 3)
    directions = rng.uniform(0, 2 * np.pi, size=len(starts))
    steps = max(4, int(gap_px * 3 / max(gap_px * 0.25, 1.0)))
    paths = random_walk_paths(rng, starts, directions, steps, gap_px * 0.25, 0.25)
    return draw_polylines(shape, list(paths), width_px)


def render_slide(
    rng: np.random.Generator, spec: SlideSpec, config: SyntheticPaipConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb uint8 (H, W, 3), viable 0/1 uint8, whole 0/1 uint8)`` of one slide at level 0."""
    shape = (config.height, config.width)
    um = 1.0 / config.mpp  # pixels per micron
    lay = _layout(rng, shape, um)
    g = spec.grade
    parenchyma = np.clip(lay.tissue - lay.whole, 0, 1)
    tumour = lay.viable

    # portal tracts (fibrous islands) and central veins in the parenchyma
    n_portal = max(1, int(parenchyma.sum() / (um * 500) ** 2))
    portal_pts = sample_in_mask(rng, parenchyma, um * 400, 0.9, min(1.0, n_portal / 4))
    portal = (
        _blob_mask(rng, shape, portal_pts, um * rng.uniform(40, 90, len(portal_pts)), 0.3, um * 6)
        * parenchyma
        if len(portal_pts)
        else np.zeros(shape, np.float32)
    )
    vein_pts = sample_in_mask(rng, parenchyma, um * 300, 0.9, 0.6)
    veins = (
        _blob_mask(rng, shape, vein_pts, um * rng.uniform(15, 30, len(vein_pts)), 0.15, 0.0)
        * parenchyma
        if len(vein_pts)
        else np.zeros(shape, np.float32)
    )
    hepatic = np.clip(parenchyma - portal - veins, 0, 1)

    # sinusoids between hepatocyte plates (normal) and wider gaps between thick trabeculae (tumour)
    sinusoid = _plates(rng, shape, um * 22, um * 3.0) * hepatic
    trabecula_gap = _plates(rng, shape, um * (22 + 30 * g), um * (3.5 + 3.0 * g)) * tumour
    pseudo_pts = sample_in_mask(rng, tumour, um * 60, 0.9, 0.15 + 0.5 * g)
    pseudoglands = (
        fill_polygons(
            shape,
            random_blobs(rng, pseudo_pts, um * rng.uniform(4, 9, len(pseudo_pts)), 0.1).polygons(),
        )
        * tumour
        if len(pseudo_pts)
        else np.zeros(shape, np.float32)
    )
    lumen = np.clip(sinusoid + trabecula_gap + pseudoglands + veins, 0, 1)

    # cells: hepatocytes (regular, large, pink) and tumour cells (crowded, smaller cytoplasm, basophilic)
    hep_seeds = _cells(rng, shape, um * 24, hepatic)
    tum_seeds = _cells(rng, shape, um * (22 - 8 * g), tumour)
    walls = voronoi_walls(shape, np.concatenate([hep_seeds, tum_seeds]), um * 1.2)

    hema = np.full(shape, 0.02, np.float32)
    eosin = np.zeros(shape, np.float32)
    granular = 0.06 * smooth_noise(rng, shape, um * 1.5)
    eosin += hepatic * (0.62 + granular - 0.25 * walls)
    eosin += tumour * (0.52 - 0.2 * g + granular - 0.2 * walls)
    hema += tumour * (0.06 + 0.1 * g)
    fibres = fibrous_noise(rng, shape, um * 4, rng.uniform(0, np.pi), contrast=3.0, bias=0.4)
    collagen = np.clip(portal + lay.capsule, 0, 1)
    eosin += collagen * (0.55 + 0.35 * fibres)
    eosin += lay.necrosis * (0.5 + 0.08 * smooth_noise(rng, shape, um * 6))
    hema += lay.necrosis * 0.12
    eosin *= 1.0 - 0.95 * lumen
    hema *= 1.0 - 0.9 * lumen

    hepatocyte_nuclei = make_nuclei(
        rng, hep_seeds, um * 7.5, 0.08, (0.85, 1.0), 0.75, 0.08, 0.15, (0.45, 0.65), 0.25
    )
    binucleate = hep_seeds[rng.random(len(hep_seeds)) < 0.08]
    binucleate = binucleate + rng.normal(0, um * 3, binucleate.shape)
    tumour_nuclei = make_nuclei(
        rng,
        tum_seeds,
        um * (8.0 + 5.0 * g),
        0.1 + 0.25 * g,
        (0.65, 1.0),
        0.85 + 0.6 * g,
        0.1 + 0.2 * g,
        0.2 + 0.35 * g,
        (0.55 + 0.3 * g, 0.95),
        0.2 + 0.6 * g,
    )
    lining_pts = sample_in_mask(rng, np.clip(sinusoid + trabecula_gap, 0, 1), um * 18, 0.9, 0.7)
    lining = make_nuclei(rng, lining_pts, um * 6, 0.12, (0.25, 0.45), 1.0, 0.1, 0.1)
    stroma_pts = sample_in_mask(rng, collagen, um * 22, 0.9, 0.8)
    stroma = make_nuclei(rng, stroma_pts, um * 7, 0.15, (0.2, 0.4), 1.0, 0.1, 0.1)
    lymph_pts = sample_in_mask(rng, portal, um * 12, 0.9, 0.5)
    lymph = make_nuclei(rng, lymph_pts, um * 6.5, 0.08, (0.85, 1.0), 1.3, 0.08, 0.1)
    debris_pts = sample_in_mask(rng, lay.necrosis, um * 10, 1.0, 0.5)
    debris = make_nuclei(rng, debris_pts, um * 2.5, 0.4, (0.5, 1.0), 1.1, 0.2, 0.0)
    nuclei = Ellipses.concat(
        [
            hepatocyte_nuclei,
            make_nuclei(
                rng, binucleate, um * 7.0, 0.08, (0.85, 1.0), 0.75, 0.08, 0.15, (0.45, 0.65)
            ),
            tumour_nuclei,
            lining,
            stroma,
            lymph,
            debris,
        ]
    )
    hema += render_nuclei(rng, shape, nuclei, um * 1.2) * (1.0 - 0.9 * lumen)
    tissue_soft = soften(lay.tissue, um * 1.0)
    style = sample_stain_style(rng)
    rgb = render_optical_density(hema * tissue_soft, eosin * tissue_soft, style)
    rgb = apply_acquisition(rng, rgb, max_blur_px=0.7)
    return rgb, (lay.viable > 0.5).astype(np.uint8), (lay.whole > 0.5).astype(np.uint8)


# ---- writing -----------------------------------------------------------------------------------------------
def _pyramid(rgb: np.ndarray) -> list[np.ndarray]:
    levels = [rgb]
    for d in PYRAMID_DOWNSAMPLES[1:]:
        h, w = rgb.shape[0] // d, rgb.shape[1] // d
        if min(h, w) < 16:
            break
        levels.append(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
    return levels


def write_slide(path: Path, rgb: np.ndarray, mpp: float, slide_format: str, quality: int) -> None:
    """A JPEG-tiled pyramid: Aperio SVS (description with MPP) or generic TIFF (resolution tags)."""
    height, width = rgb.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(_pyramid(rgb)):
            scale = width / level.shape[1]
            options = {
                "tile": (TILE, TILE),
                "compression": "jpeg",
                "compressionargs": {"level": quality},
                "photometric": "rgb",
                "subfiletype": 0 if i == 0 else 1,
                "metadata": None,
            }
            if slide_format == "svs":
                header = f"Aperio Image Library v12.0.15 (histo-lightning synthetic)\r\n{width}x{height} "
                size = (
                    f"[0,0 {width}x{height}] ({TILE}x{TILE})"
                    if i == 0
                    else f"-> {level.shape[1]}x{level.shape[0]}"
                )
                options["description"] = (
                    f"{header}{size} JPEG/RGB Q={quality}|AppMag = 20|MPP = {mpp:.4f}|Synthetic = 1"
                )
            else:
                pixels_per_cm = 1e4 / (mpp * scale)
                options["resolution"] = (pixels_per_cm, pixels_per_cm)
                options["resolutionunit"] = "CENTIMETER"
            tif.write(level, **options)
            if i == 0 and slide_format == "svs":  # Aperio: a stripped thumbnail as the second image
                thumb = cv2.resize(
                    rgb, (max(1, width // 32), max(1, height // 32)), interpolation=cv2.INTER_AREA
                )
                tif.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    subfiletype=1,
                    metadata=None,
                    description="Aperio Image Library v12.0.15 (histo-lightning synthetic)\r\nthumbnail",
                )


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A full-resolution 0/1 ``uint8`` mask, tiled and deflate-compressed (as PAIP's ``_viable.tif``)."""
    tifffile.imwrite(
        path, mask, tile=(TILE, TILE), compression="zlib", photometric="minisblack", metadata=None
    )


def slide_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SLIDE_TAG, index]))


def _write_one(out_root: str, config: SyntheticPaipConfig, spec: SlideSpec) -> None:
    rgb, viable, whole = render_slide(slide_rng(config.seed, spec.index), spec, config)
    folder = Path(out_root) / spec.folder()
    folder.mkdir(parents=True, exist_ok=True)
    write_slide(
        folder / spec.slide_name(config.slide_format),
        rgb,
        config.mpp,
        config.slide_format,
        config.jpeg_quality,
    )
    write_mask(folder / mask_name(spec.slide_id, "viable"), viable)
    write_mask(folder / mask_name(spec.slide_id, "whole"), whole)


def _write_tree(
    tmp: Path, config: SyntheticPaipConfig, workers: int, progress: bool
) -> dict[str, Any]:
    """Render and write every slide and its masks into the (empty) folder ``tmp``; the marker's slides."""
    slides = build_slides(config)
    run_tasks(
        partial(_write_one, str(tmp), config), slides, workers, "Synthetic PAIP slides", progress
    )
    return {"slides": [asdict(s) for s in slides]}


#: the generator (dataset, display name, module, config, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator("paip2019", "PAIP 2019", __name__, SyntheticPaipConfig, _write_tree)
#: write a synthetic PAIP tree at ``root`` atomically (temporary sibling renamed at the end)
generate_paip = GENERATOR.generate
#: the synthetic PAIP tree for a config under ``data_dir/synthetic/paip2019-<fingerprint>``, generated once
ensure_synthetic_paip = GENERATOR.ensure
