"""Synthetic BreakHis, rendering: a field of the tissue model (:mod:`.tissue`) into an RGB image.

Field-level regions (lesion, fat, glass), soft compartment masks, hematoxylin and eosin concentration maps
with nuclei, the patient's stain matrix and camera blur/noise (:mod:`histo_lightning.data.synthetic.he_render`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histo_lightning.data.datasets.breakhis import MAGNIFICATIONS
from histo_lightning.data.synthetic.breakhis.cohort import PatientSpec
from histo_lightning.data.synthetic.breakhis.tissue import (
    ARCHITECTURE,
    Field,
    hyperplasia,
    nuclear_look,
    pixels_per_micron,
    region,
    spindle_nuclei,
)
from histo_lightning.data.synthetic.he_render import (
    Ellipses,
    apply_acquisition,
    empty_ellipses,
    fibrous_noise,
    jittered_grid,
    make_nuclei,
    render_nuclei,
    render_optical_density,
    sample_in_mask,
    smooth_noise,
    soften,
    voronoi_walls,
)


@dataclass(frozen=True)
class _Regions:
    """Field-level masks: lesion (subtype architecture), adipocyte interiors, tissue (vs glass)."""

    lesion: np.ndarray
    fat_cells: np.ndarray
    tissue: np.ndarray


def _regions(f: Field, magnification: int) -> _Regions:
    """Where the lesion, fat and slide background are in this field.

    Higher magnifications were taken inside the lesion more often (as the BreakHis
    pathologists zoomed into regions of interest), so their lesion fraction is higher.
    """
    full = f.rng.random() < 0.3 + 0.15 * MAGNIFICATIONS.index(magnification)
    fraction = f.rng.uniform(0.55, 0.95)
    lesion = np.ones(f.shape, np.float32) if full else region(f, 500.0, fraction, octaves=2)
    fat_cells = np.zeros(f.shape, np.float32)
    if f.rng.random() < 0.3:
        fat = region(f, 600.0, f.rng.uniform(0.15, 0.45), octaves=2) * (1.0 - lesion)
        seeds = jittered_grid(f.rng, f.shape, f.px(f.rng.uniform(60, 100)), 0.8, margin_px=60)
        fat_cells = fat * (1.0 - voronoi_walls(f.shape, seeds, max(1.0, f.px(2.0))))
    tissue = np.ones(f.shape, np.float32)
    if f.rng.random() < 0.35:
        tissue = 1.0 - region(f, 700.0, f.rng.uniform(0.03, 0.25), octaves=4)
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


def _compartments(f: Field, regions: _Regions) -> _Compartments:
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


def _stroma_eosin(f: Field, orientation: float) -> np.ndarray:
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


def _stromal_nuclei(f: Field, stroma: np.ndarray, orientation: float) -> Ellipses:
    """Fibroblasts (spindles along the fibres) and scattered lymphocytes in the stroma."""
    density = f.stroma_cellularity * f.patient.cellularity
    fibro = sample_in_mask(f.rng, stroma, f.px(26.0) / np.sqrt(density), 0.9, 0.8)
    plump = 1.0 + 0.6 * f.patient.atypia * (f.stroma_cellularity > 2.0)
    spindles = spindle_nuclei(
        f, fibro, orientation + f.rng.normal(0.0, 0.3, len(fibro)), 7.0 * plump, 0.75
    )
    lymph_where = stroma * region(f, 150.0, f.rng.uniform(0.05, 0.4))
    infiltrate = min(
        1.0, f.rng.uniform(0.05, 0.3) + 0.5 * f.patient.atypia
    )  # more TILs if atypical
    lymph = sample_in_mask(f.rng, lymph_where, f.px(16.0), 0.9, infiltrate)
    lymphocytes = make_nuclei(f.rng, lymph, f.px(6.5), 0.08, (0.85, 1.0), 1.25, 0.08, 0.1)
    return Ellipses.concat([spindles, lymphocytes])


def _epithelial_nuclei(f: Field, parts: _Compartments, regions: _Regions) -> Ellipses:
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


def _cytoplasm(f: Field, parts: _Compartments, centres: np.ndarray) -> tuple[np.ndarray, float]:
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


def _concentrations(f: Field, regions: _Regions) -> tuple[np.ndarray, np.ndarray]:
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
    f = Field(
        rng, (height, width), pixels_per_micron(magnification), patient, nuclear_look(patient)
    )
    regions = _regions(f, magnification)
    ARCHITECTURE[patient.subtype_code](f)
    if not patient.malignant:
        hyperplasia(f)
    hema, eosin = _concentrations(f, regions)
    h_gain, e_gain = np.exp(rng.normal(0.0, 0.06, size=2)).astype(np.float32)
    rgb = render_optical_density(hema * h_gain, eosin * e_gain, patient.stain)
    return apply_acquisition(rng, rgb)
