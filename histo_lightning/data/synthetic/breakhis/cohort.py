"""Synthetic BreakHis, the cohort: the config, the patients (names on disk, latent tissue and stain
parameters) and the dataset's own folds. Everything is a pure function of the config.

Names and folders come from the BreakHis reader (:mod:`histo_lightning.data.datasets.breakhis`), so the generator
writes exactly what the reader parses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar

import numpy as np

from histo_lightning.data.datasets.breakhis import (
    CLASS_SUBTYPES,
    MAGNIFICATIONS,
    SUBTYPES,
    image_path,
    patient_folder,
)
from histo_lightning.data.datasets.breakhis import file_name as breakhis_file_name
from histo_lightning.data.synthetic.he_render import StainStyle, sample_stain_style
from histo_lightning.data.synthetic.tree import SyntheticConfig

GENERATOR_VERSION = 1

BENIGN_SUBTYPES: tuple[tuple[str, str], ...] = tuple(
    (SUBTYPES[code], code) for code in CLASS_SUBTYPES["benign"]
)
MALIGNANT_SUBTYPES: tuple[tuple[str, str], ...] = tuple(
    (SUBTYPES[code], code) for code in CLASS_SUBTYPES["malignant"]
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
# SeedSequence domain tags, so patient, image and fold streams never collide.
PATIENT_TAG, IMAGE_TAG, FOLD_TAG, COHORT_TAG = 0x50A7, 0x1A6E, 0xF01D, 0xC0F7


@dataclass(frozen=True)
class SyntheticBreakHisConfig(SyntheticConfig):
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
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        """Reject configurations that cannot produce a valid tree."""
        if self.n_benign_patients < 1 or self.n_malignant_patients < 1:
            raise ValueError("need at least one benign and one malignant patient")
        if self.images_per_magnification < 1:
            raise ValueError("images_per_magnification must be >= 1")
        mags = tuple(self.magnifications)
        if not mags or len(set(mags)) != len(mags) or set(mags) - set(MAGNIFICATIONS):
            raise ValueError(f"magnifications must be distinct values of {MAGNIFICATIONS}")
        if self.height < 32 or self.width < 32:
            raise ValueError("height and width must be >= 32 pixels")
        if self.n_official_folds < 1 or not 0.0 < self.official_test_fraction < 1.0:
            raise ValueError("need n_official_folds >= 1 and 0 < official_test_fraction < 1")
        object.__setattr__(self, "magnifications", tuple(int(m) for m in mags))


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
        return patient_folder(self.class_code, self.subtype_code, self.year, self.slide_id)

    def file_name(self, magnification: int, seq: int) -> str:
        """Image file name, e.g. ``SOB_B_A-14-22549AB-40-001.png`` (seq counts from 1)."""
        return breakhis_file_name(
            self.class_code, self.subtype_code, self.year, self.slide_id, magnification, seq
        )

    def relative_path(self, magnification: int, seq: int) -> PurePosixPath:
        """Image path relative to the dataset root (as written in ``Folds.csv``)."""
        return image_path(
            self.class_code, self.subtype_code, self.year, self.slide_id, magnification, seq
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
    cohort_rng = np.random.default_rng(np.random.SeedSequence([config.seed, COHORT_TAG]))
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
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, PATIENT_TAG, index]))
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


def official_folds(
    patients: list[PatientSpec], config: SyntheticBreakHisConfig
) -> dict[int, set[int]]:
    """Test patient indices per fold: independent class-stratified random patient splits.

    Each class contributes ``round(fraction * n)`` test patients, at least one and (when the
    class has two or more patients) at most ``n - 1``, so train and test both hold both classes.
    """
    folds: dict[int, set[int]] = {}
    for fold in range(1, config.n_official_folds + 1):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, FOLD_TAG, fold]))
        test: set[int] = set()
        for malignant in (False, True):
            ids = [p.index for p in patients if p.malignant == malignant]
            n_test = max(1, round(config.official_test_fraction * len(ids)))
            n_test = min(n_test, max(1, len(ids) - 1))
            test.update(int(i) for i in rng.choice(ids, size=n_test, replace=False))
        folds[fold] = test
    return folds
