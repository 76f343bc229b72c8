"""Synthetic BreakHis, the tissue model: nuclear morphology from the patient's atypia and each subtype's
architecture (glands, nests, cords, mucin pools, fronds, clefts), laid out in microns on a field.

A :class:`Field` holds one image's scale, random source and compartment masks; the subtype's architecture
(:data:`ARCHITECTURE`) draws into it. Rendering the field into pixels is :mod:`.render`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from histo_lightning.data.synthetic.breakhis.cohort import PatientSpec
from histo_lightning.data.synthetic.he_render import (
    Blobs,
    Ellipses,
    draw_polylines,
    fill_polygons,
    fractal_noise,
    jittered_grid,
    make_nuclei,
    random_blobs,
    random_walk_paths,
    sample_in_mask,
    smooth_noise,
)

PX_PER_UM_AT_40X = 0.4  # 700 px at 40x span 1.75 mm; 10x more pixels per micron at 400x


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


def nuclear_look(patient: PatientSpec) -> _NuclearLook:
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
class Field:
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
    f: Field,
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
    f.nuclei.append(spindle_nuclei(f, myo, myo_tangent, diameter_um=6.0, intensity=1.1))
    if stratify > 0.05:
        ring = np.clip(outer - lumen, 0, 1)
        extra = sample_in_mask(f.rng, ring, f.px(f.look.spacing_um), 0.8, min(1.0, 2 * stratify))
        f.nuclei.append(f.epithelial_nuclei(extra))


def _random_blobs_covering(
    f: Field,
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
    f: Field,
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


def _add_cords(f: Field, gap_um: float, length_um: float, orientation: float) -> None:
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


def _add_mucin_pools(f: Field, coverage: float, pool_um: float, cluster_um: float) -> None:
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


def _add_fronds(f: Field, gap_um: float, core_um: float, epithelium_um: float) -> None:
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


def _add_clefts(f: Field, gap_um: float, length_um: float, slit_um: float) -> None:
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


def spindle_nuclei(
    f: Field, centres: np.ndarray, angle: np.ndarray, diameter_um: float, intensity: float
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


def region(f: Field, scale_um: float, fraction: float, octaves: int = 1) -> np.ndarray:
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


def _adenosis(f: Field) -> None:
    """Crowded small tubules in lobular clusters, sclerotic stroma."""
    clusters = region(f, 350.0, f.rng.uniform(0.55, 0.85))
    _add_glands(f, f.rng.uniform(16, 24), 2.3, 0.9, (1.0, 1.7), 0.15, region=clusters)
    f.stroma_cellularity = 0.8


def _fibroadenoma(f: Field) -> None:
    """Compressed, elongated slit-like ducts in abundant loose stroma."""
    _add_glands(f, f.rng.uniform(30, 50), 3.8, 0.65, (1.8, 3.2), 0.3, lumen_scale=0.55)
    f.stroma_cellularity = 1.4
    f.stroma_looseness = 0.6


def _phyllodes(f: Field) -> None:
    """Leaf-like clefts in markedly cellular stroma."""
    _add_clefts(f, gap_um=160.0, length_um=260.0, slit_um=f.rng.uniform(3, 10))
    f.stroma_cellularity = 1.8 + 0.8 * f.patient.atypia
    f.stroma_looseness = 0.3


def _tubular_adenoma(f: Field) -> None:
    """Tightly packed uniform small round tubules with scant stroma."""
    _add_glands(f, f.rng.uniform(18, 25), 2.15, 0.97, (1.0, 1.25), 0.08, lumen_scale=0.85)


def _ductal(f: Field) -> None:
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


def _lobular(f: Field) -> None:
    """Single-file cords and scattered small clusters in desmoplastic stroma."""
    orientation = f.rng.uniform(0, np.pi)
    _add_cords(
        f, gap_um=f.rng.uniform(18, 32), length_um=f.rng.uniform(80, 200), orientation=orientation
    )
    if f.rng.random() < 0.4:
        _add_nests(f, f.rng.uniform(20, 40), 0.3, 0.4)


def _mucinous(f: Field) -> None:
    """Mucin lakes with floating clusters."""
    _add_mucin_pools(f, f.rng.uniform(1.0, 2.0), f.rng.uniform(150, 300), f.rng.uniform(15, 35))


def _papillary(f: Field) -> None:
    """Branching fronds in a cystic space."""
    _add_fronds(f, gap_um=f.rng.uniform(55, 90), core_um=f.rng.uniform(10, 25), epithelium_um=22.0)


ARCHITECTURE: dict[str, Callable[[Field], None]] = {
    "A": _adenosis,
    "F": _fibroadenoma,
    "PT": _phyllodes,
    "TA": _tubular_adenoma,
    "DC": _ductal,
    "LC": _lobular,
    "MC": _mucinous,
    "PC": _papillary,
}


def hyperplasia(f: Field) -> None:
    """Benign epithelial proliferation filling spaces: solid foci in atypical benign patients."""
    a = f.patient.atypia
    if f.rng.random() < 1.5 * a:
        _add_nests(f, f.rng.uniform(30, 70), 0.6 * a, 0.2, cribriform=0.5)


# Rendering ---------------------------------------------------------------------------------
