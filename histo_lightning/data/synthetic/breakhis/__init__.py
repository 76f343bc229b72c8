"""Deterministic synthetic BreakHis: same on-disk layout as the real ``BreaKHis_v1`` release.

The tree written by :func:`generate_breakhis` is what the real BreakHis reader
(:mod:`histo_lightning.data.datasets.breakhis`) expects::

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

The generator is split by concern: :mod:`.cohort` (config, patients, names on disk, official folds),
:mod:`.tissue` (nuclear morphology and subtype architecture in microns), :mod:`.render` (a field of the
tissue model into pixels) and :mod:`.writer` (the tree, through the shared runner of
:mod:`histo_lightning.data.synthetic.tree`).
"""

from histo_lightning.data.synthetic.breakhis.cohort import (
    GENERATOR_VERSION,
    PatientSpec,
    SyntheticBreakHisConfig,
    build_patients,
    official_folds,
)
from histo_lightning.data.synthetic.breakhis.render import render_breakhis_image
from histo_lightning.data.synthetic.breakhis.writer import (
    GENERATOR,
    ensure_synthetic_breakhis,
    generate_breakhis,
    image_rng,
)

__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "PatientSpec",
    "SyntheticBreakHisConfig",
    "build_patients",
    "ensure_synthetic_breakhis",
    "generate_breakhis",
    "image_rng",
    "official_folds",
    "render_breakhis_image",
]
