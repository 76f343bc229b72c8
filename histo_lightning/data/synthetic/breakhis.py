"""Deterministic synthetic BreakHis: same on-disk layout as the real ``BreaKHis_v1`` release.

The tree written by :func:`generate_breakhis` is what the real BreakHis reader expects::

    <root>/BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/
        SOB_B_A_14-22549AB/{40X,100X,200X,400X}/SOB_B_A-14-22549AB-40-001.png
    <root>/Folds.csv            # fold,mag,grp,filename (independent 70/30 patient-wise splits)
    <root>/SYNTHETIC_DATA.json  # marks the tree as synthetic, holds the generator config

Images are rendered from a tissue model in microns, so one patient looks the same at every
magnification, only the field of view changes (40x: ~1.75 x 1.15 mm, 400x: ~175 x 115 um).
Each patient has a latent "atypia" score drawn from overlapping benign/malignant
distributions; it drives nuclear size, pleomorphism, hyperchromasia, nucleoli, density and
disorganisation. Each subtype adds its architecture (adenosis: crowded small tubules;
fibroadenoma: compressed ducts in loose stroma; phyllodes: leaf-like clefts in cellular stroma;
tubular adenoma: packed tubules; ductal: nests and sheets; lobular: single-file cords;
mucinous: mucin pools with floating clusters; papillary: fronds). Each patient also has its own
stain matrix. None of this is real data: results on it say nothing about real performance.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from joblib import Parallel, delayed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from histo_lightning.data.synthetic.he_render import (
    Blobs,
    Ellipses,
    StainStyle,
    apply_acquisition,
    draw_polylines,
    empty_ellipses,
    fibrous_noise,
    fill_polygons,
    fractal_noise,
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
from histo_lightning.data.synthetic.tree import (
    MARKER_FILE,
    config_fingerprint,
    ensure_tree,
    marker_matches,
    write_tree_atomically,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1

BENIGN_SUBTYPES: tuple[tuple[str, str], ...] = (
    ("adenosis", "A"),
    ("fibroadenoma", "F"),
    ("phyllodes_tumor", "PT"),
    ("tubular_adenoma", "TA"),
)
MALIGNANT_SUBTYPES: tuple[tuple[str, str], ...] = (
    ("ductal_carcinoma", "DC"),
    ("lobular_carcinoma", "LC"),
    ("mucinous_carcinoma", "MC"),
    ("papillary_carcinoma", "PC"),
)
# Patients per subtype in the real release; subtypes beyond the first of each are drawn with
# these weights, so DC dominates the malignant class as it does in BreakHis.
_REAL_PATIENTS_PER_SUBTYPE = {
    "A": 4,
    "F": 10,
    "PT": 3,
    "TA": 7,
    "DC": 38,
    "LC": 5,
    "MC": 9,
    "PC": 6,
}

FILENAME_RE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>A|F|PT|TA|DC|LC|MC|PC)-(?P<year>\d{2})-(?P<slide>[0-9A-Z]+)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$"
)
PATIENT_DIR_RE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>A|F|PT|TA|DC|LC|MC|PC)_(?P<year>\d{2})-(?P<slide>[0-9A-Z]+)$"
)

DATASET_DIR = PurePosixPath("BreaKHis_v1/histology_slides/breast")
FOLDS_FILE = "Folds.csv"
VALID_MAGNIFICATIONS = (40, 100, 200, 400)
PX_PER_UM_AT_40X = 0.4  # 700 px at 40x span 1.75 mm; 10x more pixels per micron at 400x

# SeedSequence domain tags, so patient, image and fold streams never collide.
_PATIENT_TAG, _IMAGE_TAG, _FOLD_TAG, _COHORT_TAG = 0x50A7, 0x1A6E, 0xF01D, 0xC0F7
# Fast lossless PNG: zlib level 1, Huffman-only (the sensor noise defeats LZ77 matching anyway).
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]


@dataclass(frozen=True)
class SyntheticBreakHisConfig:
    """Parameters of a synthetic BreakHis tree (all of them enter the fingerprint).

    Attributes:
        n_benign_patients: benign patients (real: 24).
        n_malignant_patients: malignant patients (real: 58).
        images_per_magnification: mean images per patient and magnification; each
            (patient, magnification) gets ``round(mean * U(0.75, 1.25))``, at least 1.
        magnifications: subset of (40, 100, 200, 400).
        height: image height in pixels (real: 460).
        width: image width in pixels (real: 700).
        seed: master seed; everything is a function of the config.
        n_official_folds: folds written to ``Folds.csv``.
        official_test_fraction: fraction of patients per class in each fold's test set.
        write_folds_csv: write ``Folds.csv``.
    """

    n_benign_patients: int = 6
    n_malignant_patients: int = 14
    images_per_magnification: int = 8
    magnifications: tuple[int, ...] = (40, 100, 200, 400)
    height: int = 460
    width: int = 700
    seed: int = 0
    n_official_folds: int = 5
    official_test_fraction: float = 0.3
    write_folds_csv: bool = True

    def __post_init__(self) -> None:
        """Reject configurations that cannot produce a valid tree."""
        if self.n_benign_patients < 1 or self.n_malignant_patients < 1:
            raise ValueError("need at least one benign and one malignant patient")
        if self.images_per_magnification < 1:
            raise ValueError("images_per_magnification must be >= 1")
        mags = tuple(self.magnifications)
        if not mags or len(set(mags)) != len(mags) or set(mags) - set(VALID_MAGNIFICATIONS):
            raise ValueError(f"magnifications must be distinct values of {VALID_MAGNIFICATIONS}")
        if self.height < 32 or self.width < 32:
            raise ValueError("height and width must be >= 32 pixels")
        if self.n_official_folds < 1 or not 0.0 < self.official_test_fraction < 1.0:
            raise ValueError("need n_official_folds >= 1 and 0 < official_test_fraction < 1")
        object.__setattr__(self, "magnifications", tuple(int(m) for m in mags))

    def to_json_dict(self) -> dict:
        """The fields as JSON-compatible values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def fingerprint(self) -> str:
        """Short stable hex hash of all fields and :data:`GENERATOR_VERSION`."""
        return config_fingerprint(self.to_json_dict(), GENERATOR_VERSION)


@dataclass(frozen=True)
class PatientSpec:
    """One synthetic patient: identity (names on disk) and latent tissue/stain parameters.

    Attributes:
        index: position in the cohort (seeds this patient's images).
        malignant: class.
        subtype: subtype folder name, e.g. ``"ductal_carcinoma"``.
        subtype_code: ``A, F, PT, TA, DC, LC, MC`` or ``PC``.
        year: two-digit year in the names.
        slide_id: slide identifier, unique per patient, e.g. ``"22549AB"``.
        atypia: latent 0..1 score driving nuclear atypia, density and disorganisation.
        nuclear_scale: patient multiplier on nuclear size.
        cellularity: patient multiplier on cell density.
        structure_scale: patient multiplier on gland / nest / pool sizes.
        stroma_eosin: eosin concentration of this patient's collagen.
        stain: the patient's stain matrix, gains and white level.
        image_counts: ``(magnification, n_images)`` pairs.
    """

    index: int
    malignant: bool
    subtype: str
    subtype_code: str
    year: int
    slide_id: str
    atypia: float
    nuclear_scale: float
    cellularity: float
    structure_scale: float
    stroma_eosin: float
    stain: StainStyle
    image_counts: tuple[tuple[int, int], ...]

    @property
    def class_name(self) -> str:
        """``"benign"`` or ``"malignant"`` (the class folder name)."""
        return "malignant" if self.malignant else "benign"

    @property
    def class_code(self) -> str:
        """``"B"`` or ``"M"``."""
        return "M" if self.malignant else "B"

    @property
    def folder_name(self) -> str:
        """Patient folder, e.g. ``SOB_B_A_14-22549AB``."""
        return f"SOB_{self.class_code}_{self.subtype_code}_{self.year:02d}-{self.slide_id}"

    def file_name(self, magnification: int, seq: int) -> str:
        """Image file name, e.g. ``SOB_B_A-14-22549AB-40-001.png`` (seq counts from 1)."""
        return (
            f"SOB_{self.class_code}_{self.subtype_code}-{self.year:02d}-{self.slide_id}"
            f"-{magnification}-{seq:03d}.png"
        )

    def relative_path(self, magnification: int, seq: int) -> PurePosixPath:
        """Image path relative to the dataset root (as written in ``Folds.csv``)."""
        return (
            DATASET_DIR
            / self.class_name
            / "SOB"
            / self.subtype
            / self.folder_name
            / f"{magnification}X"
            / self.file_name(magnification, seq)
        )

    def images(self) -> Iterator[tuple[int, int]]:
        """All ``(magnification, seq)`` pairs of this patient."""
        for mag, count in self.image_counts:
            for seq in range(1, count + 1):
                yield mag, seq


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


def build_patients(config: SyntheticBreakHisConfig) -> list[PatientSpec]:
    """The cohort: benign patients first, then malignant; a pure function of ``config``."""
    cohort_rng = np.random.default_rng(np.random.SeedSequence([config.seed, _COHORT_TAG]))
    n_total = config.n_benign_patients + config.n_malignant_patients
    numbers = cohort_rng.choice(np.arange(10000, 100000), size=n_total, replace=False)
    codes = _assign_subtypes(cohort_rng, config.n_benign_patients, BENIGN_SUBTYPES) + (
        _assign_subtypes(cohort_rng, config.n_malignant_patients, MALIGNANT_SUBTYPES)
    )
    return [
        _make_patient(
            config, index, index >= config.n_benign_patients, codes[index], numbers[index]
        )
        for index in range(n_total)
    ]


def _assign_subtypes(
    rng: np.random.Generator, n: int, subtypes: tuple[tuple[str, str], ...]
) -> list[tuple[str, str]]:
    """Subtypes for ``n`` patients: every subtype once (shuffled), then real-frequency draws."""
    first = [subtypes[i] for i in rng.permutation(len(subtypes))]
    weights = np.array([_REAL_PATIENTS_PER_SUBTYPE[code] for _, code in subtypes], dtype=float)
    rest = rng.choice(len(subtypes), size=max(0, n - len(subtypes)), p=weights / weights.sum())
    return (first + [subtypes[i] for i in rest])[:n]


def _make_patient(
    config: SyntheticBreakHisConfig,
    index: int,
    malignant: bool,
    subtype: tuple[str, str],
    number: int,
) -> PatientSpec:
    """Draw one patient's latent parameters from its own seed stream."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _PATIENT_TAG, index]))
    letters = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=int(rng.integers(0, 3))))
    atypia = rng.normal(0.7, 0.15) if malignant else rng.normal(0.3, 0.12)
    lo, hi = 0.75 * config.images_per_magnification, 1.25 * config.images_per_magnification
    counts = tuple((mag, max(1, round(rng.uniform(lo, hi)))) for mag in config.magnifications)
    return PatientSpec(
        index=index,
        malignant=malignant,
        subtype=subtype[0],
        subtype_code=subtype[1],
        year=int(rng.choice([13, 14, 14, 15])),
        slide_id=f"{number}{letters}",
        atypia=float(np.clip(atypia, 0.02, 0.98)),
        nuclear_scale=float(np.exp(rng.normal(0.0, 0.07))),
        cellularity=float(np.exp(rng.normal(0.0, 0.12))),
        structure_scale=float(np.exp(rng.normal(0.0, 0.15))),
        stroma_eosin=float(rng.uniform(0.38, 0.62)),
        stain=sample_stain_style(rng),
        image_counts=counts,
    )


# --------------------------------------------------------------------------------------------
# Tissue model
# --------------------------------------------------------------------------------------------


def pixels_per_micron(magnification: int) -> float:
    """Scale of the tissue model: 0.4 px/um at 40x, growing linearly with magnification."""
    return PX_PER_UM_AT_40X * magnification / 40.0


@dataclass(frozen=True)
class _NuclearLook:
    """Epithelial nuclear morphology of a patient (sizes in microns)."""

    diameter_um: float
    size_cv: float
    aspect: tuple[float, float]
    intensity: float
    intensity_cv: float
    texture: float
    fill: tuple[float, float]
    nucleolus_prob: float
    spacing_um: float
    jitter: float


# Subtype tweaks of the atypia-driven look: (size factor, pleomorphism factor).
_SUBTYPE_LOOK = {"LC": (0.85, 0.5), "MC": (0.95, 0.8), "PC": (0.95, 0.8), "PT": (1.0, 0.8)}


def _nuclear_look(patient: PatientSpec) -> _NuclearLook:
    """Map the latent atypia (0 = bland, 1 = high grade) to nuclear morphology."""
    a = patient.atypia
    size_factor, pleo_factor = _SUBTYPE_LOOK.get(patient.subtype_code, (1.0, 1.0))
    diameter = (5.0 + 10.0 * a) * patient.nuclear_scale * size_factor
    return _NuclearLook(
        diameter_um=diameter,
        size_cv=(0.06 + 0.30 * a) * pleo_factor,
        aspect=(0.78 - 0.25 * a, 1.0),
        intensity=0.5 + 0.9 * a,
        intensity_cv=0.06 + 0.22 * a,
        texture=0.08 + 0.4 * a,
        fill=(1.0 - 0.65 * a, 1.0),
        nucleolus_prob=0.04 + 0.85 * a**2,
        spacing_um=(11.0 - 1.0 * a) / np.sqrt(patient.cellularity),  # crowding with atypia
        jitter=0.3 + 0.35 * a,
    )


@dataclass
class _Field:
    """Working state of one image: scale, random source and compartment masks (float32 0/1).

    ``epithelium`` holds gland/cord epithelium whose nuclei were placed explicitly, ``solid``
    sheets/nests/clusters filled with nuclei on a jittered grid at the end.
    """

    rng: np.random.Generator
    shape: tuple[int, int]
    scale: float
    patient: PatientSpec
    look: _NuclearLook
    epithelium: np.ndarray = field(init=False)
    solid: np.ndarray = field(init=False)
    lumen: np.ndarray = field(init=False)
    mucin: np.ndarray = field(init=False)
    necrosis: np.ndarray = field(init=False)
    nuclei: list[Ellipses] = field(default_factory=list)
    stroma_cellularity: float = 1.0
    stroma_looseness: float = 0.0

    def __post_init__(self) -> None:
        """Start with all-stroma compartments."""
        for name in ("epithelium", "solid", "lumen", "mucin", "necrosis"):
            setattr(self, name, np.zeros(self.shape, dtype=np.float32))

    def px(self, microns: float) -> float:
        """Microns to pixels at this magnification."""
        return microns * self.scale

    @property
    def area_px(self) -> float:
        """Field area in pixels."""
        return float(self.shape[0] * self.shape[1])

    def epithelial_nuclei(self, centres: np.ndarray, angle: np.ndarray | None = None) -> Ellipses:
        """Nuclei with the patient's look at ``centres`` (random orientation unless ``angle``)."""
        lk = self.look
        return make_nuclei(
            self.rng,
            centres,
            diameter_px=self.px(lk.diameter_um),
            size_cv=lk.size_cv,
            aspect=lk.aspect,
            intensity=lk.intensity,
            intensity_cv=lk.intensity_cv,
            texture=lk.texture,
            fill=lk.fill,
            nucleolus_prob=lk.nucleolus_prob,
            angle=angle,
        )

    def mask_at(self, mask: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Values of ``mask`` at ``(x, y)`` points (clamped to the image)."""
        x = np.clip(points[:, 0].astype(np.int32), 0, self.shape[1] - 1)
        y = np.clip(points[:, 1].astype(np.int32), 0, self.shape[0] - 1)
        return mask[y, x]


def _add_glands(
    f: _Field,
    radius_um: float,
    spacing_factor: float,
    keep_prob: float,
    elongation: tuple[float, float],
    irregularity: float,
    region: np.ndarray | None = None,
    lumen_scale: float = 1.0,
) -> None:
    """Glands/tubules: epithelial rings around lumens, lined by luminal and myoepithelial nuclei.

    Atypia thickens the epithelium (stratification) and shrinks the lumen.
    """
    r_px = f.px(radius_um * f.patient.structure_scale)
    centres = jittered_grid(f.rng, f.shape, r_px * spacing_factor, 0.7, margin_px=2.5 * r_px)
    keep = f.rng.random(len(centres)) < keep_prob
    if region is not None:
        keep &= f.mask_at(region, centres) > 0.5
    if not keep.any():
        return
    centres = centres[keep]
    blobs = random_blobs(
        f.rng, centres, r_px * np.exp(f.rng.normal(0, 0.2, len(centres))), irregularity, elongation
    )
    stratify = max(0.0, f.patient.atypia - 0.3)
    cell_um = f.look.spacing_um * (0.9 + 1.5 * stratify)
    lumen_frac = float(np.clip((1.0 - cell_um / radius_um) * lumen_scale, 0.12, 0.85))
    outer = fill_polygons(f.shape, blobs.polygons(1.0))
    lumen = fill_polygons(f.shape, blobs.polygons(lumen_frac))
    f.epithelium = np.maximum(f.epithelium, outer)
    f.lumen = np.maximum(f.lumen, lumen)
    mid = lumen_frac + (1.0 - lumen_frac) * 0.45
    pts, tangent = blobs.ring_points(mid, f.px(f.look.spacing_um), f.rng)
    f.nuclei.append(f.epithelial_nuclei(pts, angle=tangent + np.pi / 2))
    myo, myo_tangent = blobs.ring_points(0.94, f.px(f.look.spacing_um * 2.2), f.rng)
    f.nuclei.append(_spindle_nuclei(f, myo, myo_tangent, diameter_um=6.0, intensity=1.1))
    if stratify > 0.05:
        ring = np.clip(outer - lumen, 0, 1)
        extra = sample_in_mask(f.rng, ring, f.px(f.look.spacing_um), 0.8, min(1.0, 2 * stratify))
        f.nuclei.append(f.epithelial_nuclei(extra))


def _random_blobs_covering(
    f: _Field,
    radius_um: float,
    coverage: float,
    irregularity: float,
) -> Blobs:
    """Irregular blobs of mean radius ``radius_um`` at uniform random centres (may be empty).

    ``coverage`` is the expected number of blobs covering a point (area fraction
    ``1 - exp(-coverage)``).
    """
    r_px = f.px(radius_um * f.patient.structure_scale)
    height, width = f.shape
    n = int(f.rng.poisson(coverage * (height + 2 * r_px) * (width + 2 * r_px) / (np.pi * r_px**2)))
    centres = np.stack(
        [f.rng.uniform(-r_px, width + r_px, n), f.rng.uniform(-r_px, height + r_px, n)], axis=1
    )
    radii = r_px * np.exp(f.rng.normal(0.0, 0.3, len(centres)))
    return random_blobs(f.rng, centres, radii, irregularity, (1.0, 1.6), n_harmonics=6)


def _add_nests(
    f: _Field,
    radius_um: float,
    coverage: float,
    irregularity: float,
    cribriform: float = 0.0,
    necrosis: float = 0.0,
) -> None:
    """Solid nests/sheets of tumour cells, optionally with cribriform lumens and central necrosis."""
    blobs = _random_blobs_covering(f, radius_um, coverage, irregularity)
    if len(blobs) == 0:
        return
    nest = fill_polygons(f.shape, blobs.polygons(1.0, 64))
    f.solid = np.maximum(f.solid, nest)
    if cribriform > 0:
        holes = sample_in_mask(f.rng, nest, f.px(32.0), 0.8, cribriform)
        hole_blobs = random_blobs(f.rng, holes, f.px(f.rng.uniform(5, 11, len(holes))), 0.1)
        f.lumen = np.maximum(f.lumen, fill_polygons(f.shape, hole_blobs.polygons()))
    big = (blobs.radius > f.px(70.0)) & (f.rng.random(len(blobs)) < necrosis)
    if big.any():
        f.necrosis = np.maximum(
            f.necrosis, fill_polygons(f.shape, blobs.subset(big).polygons(0.35))
        )


def _add_cords(f: _Field, gap_um: float, length_um: float, orientation: float) -> None:
    """Single-file cords of cells (lobular "Indian file") infiltrating the stroma."""
    spacing = f.px(f.look.diameter_um * 1.6)
    n_steps = max(2, round(f.px(length_um) / spacing))
    expected = f.area_px / (f.px(gap_um) * f.px(length_um))
    n = max(2, int(f.rng.poisson(expected)))
    margin = f.px(length_um) / 2
    height, width = f.shape
    starts = np.stack([f.rng.uniform(-margin, width, n), f.rng.uniform(-margin, height, n)], axis=1)
    heading = orientation + f.rng.normal(0.0, 0.35, n)
    paths = random_walk_paths(f.rng, starts, heading, n_steps, spacing, 0.18)
    f.epithelium = np.maximum(
        f.epithelium, draw_polylines(f.shape, list(paths), f.px(f.look.diameter_um * 1.4))
    )
    centres = paths.reshape(-1, 2)
    centres = centres + f.rng.normal(0.0, spacing * 0.1, centres.shape)
    angles = np.repeat(heading, paths.shape[1]) + f.rng.normal(0.0, 0.3, len(centres))
    present = f.rng.random(len(centres)) < 0.8  # discohesive: gaps along the cords
    f.nuclei.append(f.epithelial_nuclei(centres[present], angle=angles[present]))


def _add_mucin_pools(f: _Field, coverage: float, pool_um: float, cluster_um: float) -> None:
    """Pale mucin lakes with small tumour-cell clusters floating in them."""
    pools = fill_polygons(
        f.shape, _random_blobs_covering(f, pool_um, coverage, 0.3).polygons(1.0, 64)
    )
    f.mucin = np.maximum(f.mucin, pools)
    seeds = sample_in_mask(f.rng, pools, f.px(cluster_um * 3.5), 0.9, 0.55)
    if len(seeds) == 0:
        return
    radii = f.px(cluster_um * f.patient.structure_scale) * np.exp(f.rng.normal(0, 0.35, len(seeds)))
    clusters = fill_polygons(f.shape, random_blobs(f.rng, seeds, radii, 0.35).polygons())
    f.solid = np.maximum(f.solid, clusters)
    f.mucin = f.mucin * (1.0 - clusters)


def _add_fronds(f: _Field, gap_um: float, core_um: float, epithelium_um: float) -> None:
    """Papillary fronds: branching fibrovascular cores lined by stratified epithelium, with
    the rest of the lesion an open cystic space."""
    step = f.px(12.0)
    length_px = f.px(450.0)
    expected = f.area_px / (f.px(gap_um) * length_px)
    n = max(2, int(f.rng.poisson(expected)))
    height, width = f.shape
    starts = np.stack([f.rng.uniform(0, width, n), f.rng.uniform(0, height, n)], axis=1)
    trunks = random_walk_paths(
        f.rng, starts, f.rng.uniform(0, 2 * np.pi, n), max(3, round(length_px / step)), step, 0.15
    )
    pick = f.rng.integers(1, trunks.shape[1] - 1, size=2 * n)
    owner = np.repeat(np.arange(n), 2)
    seg = trunks[owner, pick] - trunks[owner, pick - 1]
    side = f.rng.choice([-1.0, 1.0], size=2 * n)
    heading = np.arctan2(seg[:, 1], seg[:, 0]) + side * f.rng.uniform(0.5, 1.2, 2 * n)
    branches = random_walk_paths(
        f.rng, trunks[owner, pick], heading, max(2, trunks.shape[1] // 2), step, 0.2
    )
    lines = list(trunks) + list(branches)
    core_px = f.px(core_um * f.patient.structure_scale)
    core = draw_polylines(f.shape, lines, core_px)
    band = draw_polylines(f.shape, lines, core_px + 2 * f.px(epithelium_um))
    f.solid = np.maximum(f.solid, np.clip(band - core, 0, 1))
    f.lumen = np.maximum(f.lumen, 1.0 - band)


def _add_clefts(f: _Field, gap_um: float, length_um: float, slit_um: float) -> None:
    """Phyllodes clefts: long curved slit lumens lined by a layer of epithelium on each side."""
    spacing = f.px(f.look.spacing_um * 0.85)
    n_steps = max(3, round(f.px(length_um) / spacing))
    n = max(1, int(f.rng.poisson(f.area_px / (f.px(gap_um) * f.px(length_um)))))
    height, width = f.shape
    margin = f.px(length_um) / 2
    starts = np.stack([f.rng.uniform(-margin, width, n), f.rng.uniform(-margin, height, n)], axis=1)
    heading = f.rng.uniform(0, np.pi, n)
    paths = random_walk_paths(f.rng, starts, heading, n_steps, spacing, 0.1)
    slit_px = max(1.0, f.px(slit_um))
    cell_px = f.px(f.look.spacing_um)
    f.lumen = np.maximum(f.lumen, draw_polylines(f.shape, list(paths), slit_px))
    f.epithelium = np.maximum(
        f.epithelium, draw_polylines(f.shape, list(paths), slit_px + 2 * cell_px)
    )
    seg = np.diff(paths, axis=1)
    direction = np.arctan2(seg[..., 1], seg[..., 0]).reshape(-1)
    base = paths[:, :-1].reshape(-1, 2)
    normal = np.stack([-np.sin(direction), np.cos(direction)], axis=1)
    offset = (slit_px + cell_px) / 2
    centres = np.concatenate([base + normal * offset, base - normal * offset])
    f.nuclei.append(
        f.epithelial_nuclei(np.asarray(centres), angle=np.tile(direction, 2) + np.pi / 2)
    )


def _spindle_nuclei(
    f: _Field, centres: np.ndarray, angle: np.ndarray, diameter_um: float, intensity: float
) -> Ellipses:
    """Elongated dark nuclei (fibroblasts, myoepithelium) oriented along ``angle``."""
    return make_nuclei(
        f.rng,
        centres,
        diameter_px=f.px(diameter_um),
        size_cv=0.12,
        aspect=(0.2, 0.4),
        intensity=intensity,
        intensity_cv=0.1,
        texture=0.15,
        angle=angle,
    )


# Subtype architecture ----------------------------------------------------------------------


def _region(f: _Field, scale_um: float, fraction: float, octaves: int = 1) -> np.ndarray:
    """Binary mask covering about ``fraction`` of the field in patches of ~scale_um (at most
    0.6 field widths); more ``octaves`` give more ragged outlines."""
    scale = min(f.px(scale_um), 0.6 * max(f.shape))
    noise = (
        fractal_noise(f.rng, f.shape, scale, octaves)
        if octaves > 1
        else smooth_noise(f.rng, f.shape, scale)
    )
    threshold = np.quantile(noise[::3, ::3], 1.0 - fraction)
    return (noise > threshold).astype(np.float32)


def _adenosis(f: _Field) -> None:
    """Crowded small tubules in lobular clusters, sclerotic stroma."""
    clusters = _region(f, 350.0, f.rng.uniform(0.55, 0.85))
    _add_glands(f, f.rng.uniform(16, 24), 2.3, 0.9, (1.0, 1.7), 0.15, region=clusters)
    f.stroma_cellularity = 0.8


def _fibroadenoma(f: _Field) -> None:
    """Compressed, elongated slit-like ducts in abundant loose stroma."""
    _add_glands(f, f.rng.uniform(30, 50), 3.8, 0.65, (1.8, 3.2), 0.3, lumen_scale=0.55)
    f.stroma_cellularity = 1.4
    f.stroma_looseness = 0.6


def _phyllodes(f: _Field) -> None:
    """Leaf-like clefts in markedly cellular stroma."""
    _add_clefts(f, gap_um=160.0, length_um=260.0, slit_um=f.rng.uniform(3, 10))
    f.stroma_cellularity = 1.8 + 0.8 * f.patient.atypia
    f.stroma_looseness = 0.3


def _tubular_adenoma(f: _Field) -> None:
    """Tightly packed uniform small round tubules with scant stroma."""
    _add_glands(f, f.rng.uniform(18, 25), 2.15, 0.97, (1.0, 1.25), 0.08, lumen_scale=0.85)


def _ductal(f: _Field) -> None:
    """Irregular nests and sheets; tubules/cribriform at low grade, necrosis at high grade."""
    a = f.patient.atypia
    _add_nests(
        f,
        f.rng.uniform(80, 200),
        f.rng.uniform(2.0, 3.5),
        0.35,
        cribriform=max(0.0, 0.7 - a) * 0.8,
        necrosis=max(0.0, a - 0.6) * 1.2,
    )
    if f.rng.random() < 1.0 - a:
        _add_glands(f, f.rng.uniform(18, 28), 3.0, 1.0 - a, (1.0, 1.8), 0.35, lumen_scale=0.8)


def _lobular(f: _Field) -> None:
    """Single-file cords and scattered small clusters in desmoplastic stroma."""
    orientation = f.rng.uniform(0, np.pi)
    _add_cords(
        f, gap_um=f.rng.uniform(18, 32), length_um=f.rng.uniform(80, 200), orientation=orientation
    )
    if f.rng.random() < 0.4:
        _add_nests(f, f.rng.uniform(20, 40), 0.3, 0.4)


def _mucinous(f: _Field) -> None:
    """Mucin lakes with floating clusters."""
    _add_mucin_pools(f, f.rng.uniform(1.0, 2.0), f.rng.uniform(150, 300), f.rng.uniform(15, 35))


def _papillary(f: _Field) -> None:
    """Branching fronds in a cystic space."""
    _add_fronds(f, gap_um=f.rng.uniform(55, 90), core_um=f.rng.uniform(10, 25), epithelium_um=22.0)


_ARCHITECTURE: dict[str, Callable[[_Field], None]] = {
    "A": _adenosis,
    "F": _fibroadenoma,
    "PT": _phyllodes,
    "TA": _tubular_adenoma,
    "DC": _ductal,
    "LC": _lobular,
    "MC": _mucinous,
    "PC": _papillary,
}


def _hyperplasia(f: _Field) -> None:
    """Benign epithelial proliferation filling spaces: solid foci in atypical benign patients."""
    a = f.patient.atypia
    if f.rng.random() < 1.5 * a:
        _add_nests(f, f.rng.uniform(30, 70), 0.6 * a, 0.2, cribriform=0.5)


# Rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regions:
    """Field-level masks: lesion (subtype architecture), adipocyte interiors, tissue (vs glass)."""

    lesion: np.ndarray
    fat_cells: np.ndarray
    tissue: np.ndarray


def _regions(f: _Field, magnification: int) -> _Regions:
    """Where the lesion, fat and slide background are in this field.

    Higher magnifications were taken inside the lesion more often (as the BreakHis
    pathologists zoomed into regions of interest), so their lesion fraction is higher.
    """
    full = f.rng.random() < 0.3 + 0.15 * VALID_MAGNIFICATIONS.index(magnification)
    fraction = f.rng.uniform(0.55, 0.95)
    lesion = np.ones(f.shape, np.float32) if full else _region(f, 500.0, fraction, octaves=2)
    fat_cells = np.zeros(f.shape, np.float32)
    if f.rng.random() < 0.3:
        fat = _region(f, 600.0, f.rng.uniform(0.15, 0.45), octaves=2) * (1.0 - lesion)
        seeds = jittered_grid(f.rng, f.shape, f.px(f.rng.uniform(60, 100)), 0.8, margin_px=60)
        fat_cells = fat * (1.0 - voronoi_walls(f.shape, seeds, max(1.0, f.px(2.0))))
    tissue = np.ones(f.shape, np.float32)
    if f.rng.random() < 0.35:
        tissue = 1.0 - _region(f, 700.0, f.rng.uniform(0.03, 0.25), octaves=4)
    return _Regions(lesion, fat_cells, tissue)


@dataclass(frozen=True)
class _Compartments:
    """Soft (anti-aliased) compartment masks of a field, restricted to the lesion/tissue."""

    epithelium: np.ndarray
    lumen: np.ndarray
    mucin: np.ndarray
    necrosis: np.ndarray
    fat: np.ndarray

    @property
    def stroma(self) -> np.ndarray:
        """Binary float32 mask of what is left: stroma."""
        covered = np.maximum.reduce(
            [self.epithelium, self.lumen, self.mucin, self.necrosis, self.fat]
        )
        return (covered < 0.5).astype(np.float32)


def _compartments(f: _Field, regions: _Regions) -> _Compartments:
    """Soften the architecture masks and clip them to the lesion; glass counts as lumen."""
    edge = max(0.5, f.px(0.7))
    lesion = regions.lesion
    return _Compartments(
        epithelium=soften(np.clip(np.maximum(f.epithelium, f.solid) * lesion, 0, 1), edge),
        lumen=soften(np.maximum(f.lumen * lesion, 1.0 - regions.tissue), edge),
        mucin=soften(f.mucin * lesion, f.px(3.0)),
        necrosis=soften(f.necrosis * lesion, edge),
        fat=soften(regions.fat_cells, edge),
    )


def _stroma_eosin(f: _Field, orientation: float) -> np.ndarray:
    """Collagen eosin concentration: broad wavy bundles split by pale clefts, with fine fibrils;
    looser (paler, less fibrous) when the subtype's stroma is myxoid."""
    bundles = fibrous_noise(
        f.rng, f.shape, f.px(f.rng.uniform(4.0, 8.0)), orientation, contrast=4.0, bias=0.8
    )
    contrast = 0.75 * (1.0 - f.stroma_looseness)
    desmoplasia = 0.85 + 0.3 * f.patient.atypia  # denser, pinker collagen around atypical lesions
    base = f.patient.stroma_eosin * desmoplasia * (1.0 - 0.45 * f.stroma_looseness)
    mottle = smooth_noise(f.rng, f.shape, f.px(40.0))
    texture = 1.0 - contrast + contrast * bundles
    if f.px(1.0) >= 1.5:  # fibrils ~1 um wide are resolved from 200x on
        texture *= 0.8 + 0.35 * fibrous_noise(f.rng, f.shape, f.px(1.0), orientation, 0.5)
    return np.clip(base * (texture + 0.08 * mottle), 0.03, None)


def _stromal_nuclei(f: _Field, stroma: np.ndarray, orientation: float) -> Ellipses:
    """Fibroblasts (spindles along the fibres) and scattered lymphocytes in the stroma."""
    density = f.stroma_cellularity * f.patient.cellularity
    fibro = sample_in_mask(f.rng, stroma, f.px(26.0) / np.sqrt(density), 0.9, 0.8)
    plump = 1.0 + 0.6 * f.patient.atypia * (f.stroma_cellularity > 2.0)
    spindles = _spindle_nuclei(
        f, fibro, orientation + f.rng.normal(0.0, 0.3, len(fibro)), 7.0 * plump, 0.75
    )
    lymph_where = stroma * _region(f, 150.0, f.rng.uniform(0.05, 0.4))
    infiltrate = min(
        1.0, f.rng.uniform(0.05, 0.3) + 0.5 * f.patient.atypia
    )  # more TILs if atypical
    lymph = sample_in_mask(f.rng, lymph_where, f.px(16.0), 0.9, infiltrate)
    lymphocytes = make_nuclei(f.rng, lymph, f.px(6.5), 0.08, (0.85, 1.0), 1.25, 0.08, 0.1)
    return Ellipses.concat([spindles, lymphocytes])


def _epithelial_nuclei(f: _Field, parts: _Compartments, regions: _Regions) -> Ellipses:
    """Nuclei of all epithelium: those placed by the architecture plus sheets filling ``solid``.

    Nuclei outside the lesion or in a lumen are dropped.
    """
    solid = f.solid * regions.lesion
    solid = (solid > 0.5) & (parts.lumen < 0.5) & (parts.necrosis < 0.5) & (parts.mucin < 0.5)
    sheet = sample_in_mask(f.rng, solid.astype(np.float32), f.px(f.look.spacing_um), f.look.jitter)
    nuclei = Ellipses.concat([*f.nuclei, f.epithelial_nuclei(sheet)])
    keep = f.mask_at(regions.lesion, nuclei.centres) > 0.5
    keep &= f.mask_at(parts.lumen, nuclei.centres) < 0.5
    return nuclei.subset(keep)


def _cytoplasm(f: _Field, parts: _Compartments, centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Eosin map of epithelial cytoplasm (paler than collagen) with faint cell borders, and
    the cytoplasm's hematoxylin (amphophilia grows with atypia)."""
    eosin = 0.24 + 0.05 * smooth_noise(f.rng, f.shape, f.px(25.0))
    if f.scale >= 1.5 and len(centres):
        borders = voronoi_walls(f.shape, centres, max(1.0, f.px(0.6)))
        eosin = eosin + 0.12 * borders * parts.epithelium
    return eosin, 0.05 + 0.15 * f.patient.atypia


def _blend(base: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> None:
    """In place: ``base = base + mask * (value - base)`` (paint ``value`` where mask is 1)."""
    base += mask * (value - base)


def _concentrations(f: _Field, regions: _Regions) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentration maps of the field (nuclei included)."""
    parts = _compartments(f, regions)
    orientation = f.rng.uniform(0.0, np.pi)
    epithelial = _epithelial_nuclei(f, parts, regions)
    eosin = _stroma_eosin(f, orientation)
    hema = np.full(f.shape, 0.03, np.float32)
    cyto_e, cyto_h = _cytoplasm(f, parts, epithelial.centres)
    _blend(eosin, parts.epithelium, cyto_e)
    _blend(hema, parts.epithelium, cyto_h)
    debris = empty_ellipses()
    if parts.necrosis.any():
        _blend(eosin, parts.necrosis, 0.55 + 0.1 * smooth_noise(f.rng, f.shape, f.px(4.0)))
        _blend(hema, parts.necrosis, 0.15)
        fragments = sample_in_mask(f.rng, parts.necrosis, f.px(9.0), 1.0, 0.5)
        debris = make_nuclei(f.rng, fragments, f.px(2.5), 0.4, (0.5, 1.0), 1.1, 0.2, 0.0)
    if parts.mucin.any():
        wisps = 0.5 + 0.5 * np.abs(smooth_noise(f.rng, f.shape, f.px(15.0)))
        _blend(eosin, parts.mucin, 0.06 * wisps)
        _blend(hema, parts.mucin, 0.11 * wisps)
    _blend(eosin, parts.lumen, 0.03 * f.rng.random())
    _blend(hema, parts.lumen, 0.0)
    _blend(eosin, parts.fat, 0.0)
    _blend(hema, parts.fat, 0.0)
    nuclei = Ellipses.concat([epithelial, _stromal_nuclei(f, parts.stroma, orientation), debris])
    hema += render_nuclei(f.rng, f.shape, nuclei, f.px(1.3)) * (1.0 - 0.9 * parts.lumen)
    return hema * regions.tissue, eosin * regions.tissue


def render_breakhis_image(
    rng: np.random.Generator, patient: PatientSpec, magnification: int, height: int, width: int
) -> np.ndarray:
    """One RGB (height, width, 3) uint8 field of view of ``patient`` at ``magnification``.

    The subtype's architecture is laid out in microns (so it scales with magnification),
    embedded in stroma with optional fat and slide background, populated with nuclei whose
    morphology follows the patient's atypia, stained with the patient's stain matrix (plus a
    small per-image variation) and passed through camera blur/noise.
    """
    f = _Field(
        rng, (height, width), pixels_per_micron(magnification), patient, _nuclear_look(patient)
    )
    regions = _regions(f, magnification)
    _ARCHITECTURE[patient.subtype_code](f)
    if not patient.malignant:
        _hyperplasia(f)
    hema, eosin = _concentrations(f, regions)
    h_gain, e_gain = np.exp(rng.normal(0.0, 0.06, size=2)).astype(np.float32)
    rgb = render_optical_density(hema * h_gain, eosin * e_gain, patient.stain)
    return apply_acquisition(rng, rgb)


# --------------------------------------------------------------------------------------------
# Writing the tree
# --------------------------------------------------------------------------------------------


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
        np.random.SeedSequence([seed, _IMAGE_TAG, patient_index, magnification, seq])
    )


def _write_image(task: _ImageTask) -> None:
    """Render one image and write it as PNG (runs in worker processes)."""
    rng = image_rng(task.seed, task.patient.index, task.magnification, task.seq)
    rgb = render_breakhis_image(rng, task.patient, task.magnification, task.height, task.width)
    path = Path(task.out_root) / task.patient.relative_path(task.magnification, task.seq)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def _init_worker() -> None:
    """Keep each worker single-threaded (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


def _tasks(
    out_root: Path, patients: list[PatientSpec], config: SyntheticBreakHisConfig
) -> list[_ImageTask]:
    """One task per image, in a fixed order."""
    return [
        _ImageTask(str(out_root), p, mag, seq, config.height, config.width, config.seed)
        for p in patients
        for mag, seq in p.images()
    ]


def _write_image_single_threaded(task: _ImageTask) -> None:
    """Worker entry: one OpenCV thread per worker (the workers provide the parallelism)."""
    _init_worker()
    _write_image(task)


def _run_tasks(tasks: list[_ImageTask], workers: int, progress: bool) -> None:
    """Render all images in-process or on joblib's loky workers, with an optional rich progress bar.

    loky rather than a ``multiprocessing`` pool: generation also runs inside Hydra launcher workers
    (joblib/loky, submitit) and DDP ranks, where a spawn pool cannot start its children (inside a loky
    worker the default start method is ``loky``, which spawned children cannot resolve, and the pool
    respawns them forever).
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("Synthetic BreakHis", total=len(tasks))
        if workers <= 1:
            for task in tasks:
                _write_image(task)
                bar.advance(job)
            return
        parallel = Parallel(
            n_jobs=workers, backend="loky", return_as="generator_unordered", batch_size=4
        )
        for _ in parallel(delayed(_write_image_single_threaded)(task) for task in tasks):
            bar.advance(job)


def official_folds(
    patients: list[PatientSpec], config: SyntheticBreakHisConfig
) -> dict[int, set[int]]:
    """Test patient indices per fold: independent class-stratified random patient splits.

    Each class contributes ``round(fraction * n)`` test patients, at least one and (when the
    class has two or more patients) at most ``n - 1``, so train and test both hold both classes.
    """
    folds: dict[int, set[int]] = {}
    for fold in range(1, config.n_official_folds + 1):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, _FOLD_TAG, fold]))
        test: set[int] = set()
        for malignant in (False, True):
            ids = [p.index for p in patients if p.malignant == malignant]
            n_test = max(1, round(config.official_test_fraction * len(ids)))
            n_test = min(n_test, max(1, len(ids) - 1))
            test.update(int(i) for i in rng.choice(ids, size=n_test, replace=False))
        folds[fold] = test
    return folds


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


def _marker(config: SyntheticBreakHisConfig, patients: list[PatientSpec], n_images: int) -> dict:
    """Content of ``SYNTHETIC_DATA.json``."""
    return {
        "synthetic": True,
        "dataset": "breakhis",
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "config": config.to_json_dict(),
        "n_images": n_images,
        "n_patients": len(patients),
        "note": "Synthetic data generated by histo-lightning; not BreakHis. "
        "Numbers on it say nothing about real performance.",
    }


def generate_breakhis(
    root: str | Path,
    config: SyntheticBreakHisConfig,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a synthetic BreakHis tree at ``root`` atomically and return ``root``.

    Everything is written into a temporary sibling ``<root>.tmp-<uuid>`` that is renamed to
    ``root`` at the end (removed on failure), so ``root`` is either absent or complete.
    Output is byte-identical for any ``workers``.

    Raises:
        FileExistsError: ``root`` already exists.
    """
    return write_tree_atomically(Path(root), _tree_writer(config, workers, progress))


def _tree_writer(
    config: SyntheticBreakHisConfig, workers: int, progress: bool
) -> Callable[[Path], None]:
    """The function that writes the whole tree into a (temporary) folder."""

    def write(tmp: Path) -> None:
        patients = build_patients(config)
        for p in patients:
            for mag, _ in p.image_counts:
                (tmp / p.relative_path(mag, 1).parent).mkdir(parents=True, exist_ok=True)
        tasks = _tasks(tmp, patients, config)
        _run_tasks(tasks, workers, progress)
        if config.write_folds_csv:
            _write_folds_csv(tmp / FOLDS_FILE, patients, config)
        marker = json.dumps(_marker(config, patients, len(tasks)), indent=2)
        (tmp / MARKER_FILE).write_text(marker + "\n")

    return write


def _is_complete(root: Path, config: SyntheticBreakHisConfig) -> bool:
    """Whether ``root`` holds a finished tree generated from ``config``."""
    return marker_matches(root, GENERATOR_VERSION, config.to_json_dict())


def ensure_synthetic_breakhis(
    data_dir: str | Path,
    config: SyntheticBreakHisConfig,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """The synthetic tree for ``config`` under ``data_dir``, generating it once if needed.

    The tree lives at ``data_dir/synthetic/breakhis-<fingerprint>``. Generation runs under a
    file lock (``<root>.lock``), so concurrent processes (DDP ranks, parallel sweep jobs) build
    it once and the others reuse it; leftovers of crashed runs (``<root>.tmp-*``) are removed.

    Raises:
        FileExistsError: ``root`` exists but is not a tree generated from ``config``.
    """
    root = Path(data_dir) / "synthetic" / f"breakhis-{config.fingerprint()}"
    return ensure_tree(
        root,
        lambda r: _is_complete(r, config),
        _tree_writer(config, workers, progress),
        "SYNTHETIC BreakHis",
    )
