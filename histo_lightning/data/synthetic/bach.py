"""Deterministic synthetic BACH microscopy images, written in the exact BACH layout.

The tree written by :func:`generate_bach` is what :mod:`histo_lightning.data.datasets.bach` reads::

    <root>/ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/{n,b,is,iv}NNN.tif
    <root>/ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv     "b001.tif,Benign", no header
    <root>/ICIAR2018_BACH_Challenge_TestDataset/Photos/test0.tif …         unlabelled
    <root>/SYNTHETIC_DATA.json      marks the tree as synthetic, holds the config
    <root>/SYNTHETIC_TRUTH.csv      the classes of the test images (not in BACH)

Every image is 2048×1536 RGB (uncompressed TIFF, 9.4 MB) at 0.42 µm/px (200×), like BACH's. The four
classes differ by the architecture a pathologist reads, not by colour:

* **Normal**: lobules (terminal duct-lobular units: clusters of small round acini in loose, pale
  intralobular stroma) and a few ducts, all lined by two cell layers (cuboidal luminal cells, flat
  myoepithelial cells) with open lumens, in dense collagen and fat.
* **Benign** (fibroadenoma-like proliferation): many elongated, compressed, slit-like ducts with bland
  two-layered epithelium, some with intraluminal hyperplasia, in abundant cellular, pale-bluish stroma.
* **InSitu** (ductal carcinoma in situ): a few large round ducts filled by atypical cells (large,
  pleomorphic, vesicular nuclei with nucleoli) in solid, cribriform or comedo (central necrosis)
  patterns, each still bounded by myoepithelial cells and a basement membrane; none outside.
* **Invasive**: the same atypical cells in ragged nests, cords and single files scattered through
  dense desmoplastic stroma, with retraction clefts and no myoepithelial rim or basement membrane.

Every image has its own stain (H&E matrix, dye strengths, white level) and camera noise, drawn from the
same distribution for all classes, so colour says nothing about the class and stain normalisation
matters. Everything is a function of the config: the same config gives byte-identical files. It is not
BACH: numbers on it say nothing about the method's real performance.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from histo_lightning.data.datasets.bach import (
    CLASS_NAMES,
    CLASS_PREFIXES,
    GROUND_TRUTH_FILE,
    PHOTOS_DIR,
    TEST_DIR,
    TRAIN_DIR,
)
from histo_lightning.data.synthetic.he_render import (
    Blobs,
    Ellipses,
    apply_acquisition,
    draw_polylines,
    fibrous_noise,
    fill_polygons,
    fractal_noise,
    jittered_grid,
    make_nuclei,
    points_inside,
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
IMAGE_SHAPE = (1536, 2048)  # (height, width) of every BACH microscopy image
PX_PER_UM = 1.0 / 0.42
TRUTH_FILE = "SYNTHETIC_TRUTH.csv"
_IMAGE_TAG, _TEST_TAG = 0xBAC4, 0x7E57
_TIFF_PARAMS = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # uncompressed, like BACH's

PRESETS: dict[str, dict] = {
    # tests: one image per class and one test image (5 full-size images, seconds)
    "tiny": {"images_per_class": 1, "n_test": 1},
    # the rakhlin demo: 20 per class (8 images in each of 10 stratified test folds), 20 unlabelled
    # test images (5 per class); about 2 minutes to render on 2 cores
    "demo": {"images_per_class": 20, "n_test": 20},
}


@dataclass(frozen=True)
class SyntheticBachConfig(SyntheticConfig):
    """Parameters of a synthetic BACH tree (all of them enter the fingerprint).

    Attributes:
        images_per_class: labelled images per class (BACH: 100), named ``n001`` … per class.
        n_test: unlabelled test images ``test0 …`` (BACH: 100), classes balanced, truth in
            ``SYNTHETIC_TRUTH.csv``.
        ground_truth_csv: write ``Photos/microscopy_ground_truth.csv`` (BACH ships it).
        seed: master seed.
    """

    images_per_class: int = 20
    n_test: int = 20
    ground_truth_csv: bool = True
    seed: int = 0
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if not 1 <= self.images_per_class <= 999 or not 0 <= self.n_test <= 9999:
            raise ValueError("need 1 <= images_per_class <= 999 and 0 <= n_test")

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> SyntheticBachConfig:
        """The named preset (``tiny`` or ``demo``) with some fields overridden."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------------------------
# Tissue pieces (concentration maps: hematoxylin ``h``, eosin ``e``)
# --------------------------------------------------------------------------------------------


def _um(v: float) -> float:
    return v * PX_PER_UM


@dataclass
class _Tissue:
    """Concentration maps under construction, and the nuclei to stamp at the end."""

    h: np.ndarray
    e: np.ndarray
    nuclei: list[Ellipses]

    @classmethod
    def empty(cls) -> _Tissue:
        return cls(np.zeros(IMAGE_SHAPE, np.float32), np.zeros(IMAGE_SHAPE, np.float32), [])

    def paint(self, mask: np.ndarray, h: float | np.ndarray, e: float | np.ndarray) -> None:
        """Replace the maps by ``(h, e)`` where ``mask`` is 1 (soft edges blend)."""
        keep = 1.0 - mask
        self.h = self.h * keep + mask * h
        self.e = self.e * keep + mask * e


def _stroma(rng: np.random.Generator, density: float, cellular: float) -> _Tissue:
    """Wavy collagen bundles (``density`` 0 = loose/myxoid … 1 = dense/desmoplastic) with fibroblasts."""
    orientation = rng.uniform(0, np.pi)
    fibres = fibrous_noise(rng, IMAGE_SHAPE, _um(3.5), orientation, waviness=1.2, bias=0.2)
    tissue = _Tissue.empty()
    tissue.e = (0.16 + 0.14 * density) + (0.10 + 0.22 * density) * fibres
    tissue.h = np.full(IMAGE_SHAPE, 0.03 + 0.05 * (1 - density), np.float32)
    everywhere = np.ones(IMAGE_SHAPE, np.float32)
    points = sample_in_mask(rng, everywhere, _um(34.0 - 16.0 * cellular), 0.9, 0.5 + 0.4 * cellular)
    tissue.nuclei.append(
        make_nuclei(
            rng,
            points,
            _um(6.5),
            0.15,
            (0.2 + 0.3 * cellular, 0.45 + 0.3 * cellular),
            0.85,
            0.15,
            0.1,
            angle=orientation + rng.normal(0.0, 0.4, len(points)),
        )
    )
    return tissue


def _lymphocytes(rng: np.random.Generator, mask: np.ndarray, spacing_um: float, keep: float):
    points = sample_in_mask(rng, mask, _um(spacing_um), 0.9, keep)
    return make_nuclei(rng, points, _um(6.0), 0.08, (0.85, 1.0), 1.3, 0.08, 0.08)


def _fat(rng: np.random.Generator, tissue: _Tissue, fraction: float) -> np.ndarray:
    """Adipose tissue over about ``fraction`` of the image: empty cells with thin eosin walls."""
    field = fractal_noise(rng, IMAGE_SHAPE, _um(220.0))
    threshold = float(np.quantile(field[::8, ::8], 1.0 - fraction))
    region = soften((field > threshold).astype(np.float32), _um(3.0))
    seeds = jittered_grid(rng, IMAGE_SHAPE, _um(75.0), 0.6, margin_px=64)
    walls = voronoi_walls(IMAGE_SHAPE, seeds, _um(1.6))
    tissue.paint(region, 0.015 * walls, 0.45 * walls)
    tissue.nuclei = [n.subset(_outside(n, region)) for n in tissue.nuclei]
    return region


def _outside(nuclei: Ellipses, region: np.ndarray, below: float = 0.5) -> np.ndarray:
    x = np.clip(nuclei.centres[:, 0].astype(int), 0, IMAGE_SHAPE[1] - 1)
    y = np.clip(nuclei.centres[:, 1].astype(int), 0, IMAGE_SHAPE[0] - 1)
    return region[y, x] < below


def _blob_mask(blobs: Blobs, scale: float = 1.0) -> np.ndarray:
    return (
        fill_polygons(IMAGE_SHAPE, blobs.polygons(scale))
        if len(blobs)
        else np.zeros(IMAGE_SHAPE, np.float32)
    )


def _place_blobs(
    rng: np.random.Generator,
    n: int,
    radius_um: tuple[float, float],
    region: np.ndarray | None = None,
    gap_um: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` discs (centres ``(k, 2)`` x, y and radii, px) at least ``gap_um`` apart, centred in
    ``region`` (anywhere in the field by default: a disc may be cut by the border, as in a real field)."""
    centres: list[np.ndarray] = []
    radii: list[float] = []
    height, width = IMAGE_SHAPE
    for _ in range(40 * n):
        if len(centres) == n:
            break
        r = _um(rng.uniform(*radius_um))
        c = rng.uniform([0, 0], [width, height])
        if region is not None and region[int(c[1]), int(c[0])] < 0.5:
            continue
        if all(np.hypot(*(c - q)) > r + s + _um(gap_um) for q, s in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    return np.array(centres, dtype=np.float64).reshape(-1, 2), np.array(radii, dtype=np.float64)


def _two_layer_glands(
    rng: np.random.Generator,
    tissue: _Tissue,
    glands: Blobs,
    lumen_scale: np.ndarray,
    hyperplasia: np.ndarray | None = None,
) -> None:
    """Benign glands: cuboidal luminal cells around an open lumen, flat myoepithelial cells outside."""
    outer = soften(_blob_mask(glands), _um(0.8))
    _keep_nuclei(tissue, outer)  # stromal and fat nuclei do not sit inside glands
    tissue.paint(outer, 0.05, 0.24)  # epithelial cytoplasm
    for i in range(len(glands)):
        one = glands.subset(np.array([i]))
        lumen = soften(_blob_mask(one, float(lumen_scale[i])), _um(0.8))
        tissue.paint(lumen, 0.0, 0.04 * rng.random())  # empty or faint secretion
        middle = (1.0 + float(lumen_scale[i])) / 2
        luminal, tangent = one.ring_points(middle, _um(7.0), rng)
        tissue.nuclei.append(
            make_nuclei(
                rng,
                luminal,
                _um(7.0),
                0.1,
                (0.6, 0.9),
                0.85,
                0.12,
                0.2,
                fill=(0.75, 1.0),
                angle=tangent + np.pi / 2,
            )
        )
        myo, tangent = one.ring_points(0.96, _um(13.0), rng)
        tissue.nuclei.append(
            make_nuclei(rng, myo, _um(7.0), 0.1, (0.2, 0.35), 1.0, 0.1, 0.05, angle=tangent)
        )
        if hyperplasia is not None and hyperplasia[i]:
            inside = _blob_mask(one, float(lumen_scale[i]) * 0.95)
            tissue.paint(soften(inside, _um(1.0)), 0.05, 0.2)
            points = sample_in_mask(rng, inside, _um(9.0), 0.5, 0.75)
            tissue.nuclei.append(
                make_nuclei(rng, points, _um(7.0), 0.12, (0.45, 0.75), 0.8, 0.12, 0.2)
            )


def _atypical_nuclei(rng: np.random.Generator, points: np.ndarray) -> Ellipses:
    """Carcinoma cells: large, pleomorphic, vesicular, coarse chromatin, frequent nucleoli."""
    return make_nuclei(
        rng,
        points,
        _um(10.5),
        0.28,
        (0.55, 0.95),
        0.95,
        0.25,
        0.45,
        fill=(0.35, 0.8),
        nucleolus_prob=0.6,
        nucleolus_intensity=0.7,
    )


def _keep_nuclei(tissue: _Tissue, region: np.ndarray) -> None:
    """Drop the nuclei collected so far that lie in ``region`` (e.g. stroma nuclei under a tumour)."""
    tissue.nuclei = [n.subset(_outside(n, region, 0.3)) for n in tissue.nuclei]


# --------------------------------------------------------------------------------------------
# The four classes
# --------------------------------------------------------------------------------------------


def _normal(rng: np.random.Generator) -> _Tissue:
    tissue = _stroma(rng, density=0.9, cellular=0.2)
    tissue.nuclei.append(_lymphocytes(rng, np.ones(IMAGE_SHAPE, np.float32), 60.0, 0.2))
    fat = _fat(rng, tissue, rng.uniform(0.15, 0.4))
    lobule_centres, lobule_radii = _place_blobs(
        rng, int(rng.integers(1, 4)), (140.0, 230.0), region=1.0 - fat, gap_um=40.0
    )
    lobules = random_blobs(rng, lobule_centres, lobule_radii, 0.25, (1.0, 1.4))
    lobule_mask = soften(_blob_mask(lobules), _um(12.0))
    loose = 0.12 + 0.06 * smooth_noise(rng, IMAGE_SHAPE, _um(15.0))
    tissue.paint(lobule_mask, 0.07, np.clip(loose, 0.05, None))
    _keep_nuclei(tissue, _blob_mask(lobules, 0.95))
    tissue.nuclei.append(  # intralobular stroma: cellular, loose
        make_nuclei(
            rng,
            sample_in_mask(rng, lobule_mask, _um(20.0), 0.9, 0.6),
            _um(6.5),
            0.12,
            (0.4, 0.8),
            0.8,
            0.12,
            0.1,
        )
    )
    acinus_points = sample_in_mask(rng, _blob_mask(lobules, 0.9), _um(48.0), 0.35, 0.9)
    acini = random_blobs(
        rng, acinus_points, _um(1.0) * rng.uniform(14.0, 21.0, len(acinus_points)), 0.1
    )
    duct_centres, duct_radii = _place_blobs(
        rng, int(rng.integers(1, 3)), (35.0, 65.0), region=1.0 - lobule_mask - fat
    )
    ducts = random_blobs(rng, duct_centres, duct_radii, 0.12, (1.0, 1.8))
    glands = _concat_blobs([acini, ducts])
    lumen = np.concatenate([rng.uniform(0.35, 0.5, len(acini)), rng.uniform(0.6, 0.72, len(ducts))])
    _two_layer_glands(rng, tissue, glands, lumen)
    return tissue


def _benign(rng: np.random.Generator) -> _Tissue:
    tissue = _stroma(rng, density=0.25, cellular=0.9)
    tissue.h = tissue.h + 0.03 * np.clip(smooth_noise(rng, IMAGE_SHAPE, _um(40.0)), 0, None)
    tissue.nuclei.append(_lymphocytes(rng, np.ones(IMAGE_SHAPE, np.float32), 80.0, 0.15))
    # discs of the ducts' long semi-axes, so that elongated ducts do not cross each other
    centres, reach = _place_blobs(rng, int(rng.integers(22, 36)), (45.0, 120.0), gap_um=4.0)
    ducts = random_blobs(rng, centres, reach, rng.uniform(0.12, 0.25), (1.5, 2.8))
    ducts = replace(ducts, radius=reach / ducts.elongation / 1.15)  # 1.15: room for the wobble
    lumen = rng.uniform(0.3, 0.55, len(ducts))
    hyperplasia = rng.random(len(ducts)) < 0.25
    _two_layer_glands(rng, tissue, ducts, lumen, hyperplasia)
    return tissue


def _in_situ(rng: np.random.Generator) -> _Tissue:
    tissue = _stroma(rng, density=0.75, cellular=0.35)
    centres, radii = _place_blobs(rng, int(rng.integers(3, 8)), (85.0, 190.0), gap_um=35.0)
    ducts = random_blobs(rng, centres, radii, 0.05, (1.0, 1.35))
    periductal = soften(_blob_mask(ducts, 1.18), _um(8.0))
    tissue.nuclei.append(_lymphocytes(rng, periductal, 22.0, 0.35))  # periductal inflammation
    outer = _blob_mask(ducts)
    _keep_nuclei(tissue, outer)
    membrane = soften(_blob_mask(ducts, 1.025), _um(0.8)) - soften(outer, _um(0.8))
    tissue.paint(np.clip(membrane, 0, 1), 0.02, 0.62)  # basement membrane
    tissue.paint(soften(outer, _um(0.8)), 0.06, 0.3)  # carcinoma cell cytoplasm
    for i in range(len(ducts)):
        duct = ducts.subset(np.array([i]))
        inside = _blob_mask(duct, 0.95)
        pattern = rng.choice(["solid", "cribriform", "comedo"], p=[0.45, 0.3, 0.25])
        if pattern == "cribriform":
            holes, hole_r = _place_blobs(rng, int(rng.integers(5, 14)), (7.0, 14.0), inside, 8.0)
            hole_mask = _blob_mask(random_blobs(rng, holes, hole_r, 0.05))
            tissue.paint(soften(hole_mask, _um(0.8)), 0.0, 0.03)
            inside = inside * (1.0 - cv2.dilate(hole_mask, np.ones((5, 5), np.uint8)))
        elif pattern == "comedo":
            necrosis = _blob_mask(duct, rng.uniform(0.35, 0.55))
            debris = sample_in_mask(rng, necrosis, _um(6.0), 0.9, 0.5)
            granular = 0.42 + 0.1 * smooth_noise(rng, IMAGE_SHAPE, _um(2.0))
            tissue.paint(soften(necrosis, _um(2.0)), 0.08, granular)
            tissue.nuclei.append(make_nuclei(rng, debris, _um(2.5), 0.4, (0.6, 1.0), 1.6, 0.2, 0.0))
            inside = inside * (1.0 - cv2.dilate(necrosis, np.ones((9, 9), np.uint8)))
        tissue.nuclei.append(_atypical_nuclei(rng, sample_in_mask(rng, inside, _um(11.5), 0.45)))
        myo, tangent = duct.ring_points(0.985, _um(14.0), rng)
        tissue.nuclei.append(
            make_nuclei(rng, myo, _um(7.0), 0.1, (0.2, 0.35), 1.0, 0.1, 0.05, angle=tangent)
        )
    return tissue


def _invasive(rng: np.random.Generator) -> _Tissue:
    tissue = _stroma(rng, density=1.0, cellular=0.5)
    tissue.nuclei.append(_lymphocytes(rng, np.ones(IMAGE_SHAPE, np.float32), 55.0, 0.2))
    height, width = IMAGE_SHAPE
    centres = jittered_grid(rng, IMAGE_SHAPE, _um(rng.uniform(90.0, 130.0)), 0.9)
    centres = centres[points_inside(centres, IMAGE_SHAPE)]
    centres = centres[rng.random(len(centres)) < rng.uniform(0.55, 0.85)]
    nests = random_blobs(
        rng, centres, _um(1.0) * rng.uniform(12.0, 42.0, len(centres)), 0.4, (1.0, 2.2)
    )
    n_cords = int(rng.integers(6, 16))
    starts = rng.uniform([0, 0], [width, height], size=(n_cords, 2))
    paths = random_walk_paths(rng, starts, rng.uniform(0, 2 * np.pi, n_cords), 14, _um(14.0), 0.35)
    cords = draw_polylines(IMAGE_SHAPE, list(paths), _um(rng.uniform(11.0, 18.0)))
    tumour = np.clip(_blob_mask(nests) + cords, 0, 1)
    cleft = np.clip(_blob_mask(nests, 1.12) - _blob_mask(nests), 0, 1)
    cleft *= (rng.random(len(nests)) < 0.5)[_blob_labels(nests)]  # retraction around half the nests
    _keep_nuclei(tissue, np.clip(tumour + cleft, 0, 1))
    tissue.paint(soften(cleft, _um(1.0)), 0.0, 0.02)
    tissue.paint(soften(tumour, _um(0.8)), 0.06, 0.28)
    cells = sample_in_mask(rng, tumour, _um(11.5), 0.45)
    stroma = (1.0 - np.clip(tumour + cleft, 0, 1)).astype(np.float32)
    singles = sample_in_mask(rng, stroma, _um(38.0), 0.9, 0.25)  # single infiltrating cells
    tissue.nuclei.append(_atypical_nuclei(rng, np.concatenate([cells, singles])))
    return tissue


def _blob_labels(blobs: Blobs) -> np.ndarray:
    """Per pixel, the index of the blob whose enlarged outline covers it (0 elsewhere)."""
    labels = np.zeros(IMAGE_SHAPE, np.int32)
    for i, polygon in enumerate(blobs.polygons(1.12)):
        cv2.fillPoly(labels, [np.round(polygon).astype(np.int32)], i)
    return labels


def _concat_blobs(parts: list[Blobs]) -> Blobs:
    fields = ("centres", "radius", "elongation", "angle", "amps", "phases")
    return Blobs(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


_RENDERERS = (_normal, _benign, _in_situ, _invasive)


def render_bach_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """One ``(1536, 2048, 3)`` uint8 RGB image of class ``label`` (0 Normal … 3 Invasive)."""
    tissue = _RENDERERS[label](rng)
    stain = sample_stain_style(rng, od_sigma=0.06, gain_sigma=0.2, background_range=(226.0, 250.0))
    nuclei = Ellipses.concat([n for n in tissue.nuclei if len(n)])
    hema = tissue.h + render_nuclei(rng, IMAGE_SHAPE, nuclei, _um(1.2))
    rgb = render_optical_density(np.clip(hema, 0, None), np.clip(tissue.e, 0, None), stain)
    return apply_acquisition(rng, rgb)


# --------------------------------------------------------------------------------------------
# Writing the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageTask:
    path: str
    label: int
    tag: int
    number: int
    seed: int


def _write_image(task: _ImageTask) -> None:
    rng = np.random.default_rng(
        np.random.SeedSequence([task.seed, task.tag, task.label, task.number])
    )
    rgb = render_bach_image(rng, task.label)
    path = Path(task.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), _TIFF_PARAMS):
        raise OSError(f"could not write {path}")


def _test_labels(config: SyntheticBachConfig) -> list[int]:
    """Balanced classes for the test images, in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _TEST_TAG]))
    return rng.permutation(np.arange(config.n_test) % 4).tolist()


def _tasks(root: Path, config: SyntheticBachConfig) -> list[_ImageTask]:
    photos = root / TRAIN_DIR / PHOTOS_DIR
    tasks = [
        _ImageTask(str(photos / name / f"{prefix}{i:03d}.tif"), label, _IMAGE_TAG, i, config.seed)
        for label, (name, prefix) in enumerate(zip(CLASS_NAMES, CLASS_PREFIXES))
        for i in range(1, config.images_per_class + 1)
    ]
    test = root / TEST_DIR / PHOTOS_DIR
    tasks += [
        _ImageTask(str(test / f"test{i}.tif"), label, _TEST_TAG, i, config.seed)
        for i, label in enumerate(_test_labels(config))
    ]
    return tasks


def _write_tree(tmp: Path, config: SyntheticBachConfig, workers: int, progress: bool) -> dict:
    """Render every image into the (empty) folder ``tmp``, write the CSVs; the marker's entries."""
    tasks = _tasks(tmp, config)
    (tmp / TEST_DIR / PHOTOS_DIR).mkdir(parents=True, exist_ok=True)
    run_tasks(_write_image, tasks, workers, "Synthetic BACH", progress)
    labelled = [t for t in tasks if t.tag == _IMAGE_TAG]
    if config.ground_truth_csv:
        lines = sorted(f"{Path(t.path).name},{CLASS_NAMES[t.label]}" for t in labelled)
        (tmp / TRAIN_DIR / PHOTOS_DIR / GROUND_TRUTH_FILE).write_text("\n".join(lines) + "\n")
    with (tmp / TRUTH_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "label"])
        for t in tasks:
            if t.tag == _TEST_TAG:
                writer.writerow([Path(t.path).name, CLASS_NAMES[t.label]])
    return {
        "n_labelled": len(labelled),
        "n_test": len(tasks) - len(labelled),
        "image_size": [IMAGE_SHAPE[1], IMAGE_SHAPE[0]],
        "microns_per_pixel": 0.42,
    }


#: the generator (dataset, display name, module, config from a preset, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator(
    "bach", "BACH", __name__, SyntheticBachConfig.from_preset, _write_tree
)
#: write a synthetic BACH tree at ``root`` atomically (temporary sibling renamed at the end)
generate_bach = GENERATOR.generate
#: the synthetic BACH tree for a config at ``data_dir/synthetic/bach-<fingerprint>``, generated once
ensure_synthetic_bach = GENERATOR.ensure


__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "IMAGE_SHAPE",
    "PRESETS",
    "TRUTH_FILE",
    "SyntheticBachConfig",
    "ensure_synthetic_bach",
    "generate_bach",
    "render_bach_image",
]
