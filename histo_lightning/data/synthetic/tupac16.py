"""Deterministic synthetic TUPAC16 mitosis data, written in the exact TUPAC16 (auxiliary) layout.

The tree written by :func:`generate_tupac16` is what :mod:`histo_lightning.data.datasets.tupac16` reads::

    <root>/mitoses_image_data/<case>/<NN>.tif        HPFs, RGB, 0.25 µm/px
    <root>/mitoses_ground_truth/<case>/<NN>.csv      "row,col" per annotated mitosis, no header
    <root>/mitoses-test-image-data/<NN>/01.tif       unlabelled test cases (optional)
    <root>/SYNTHETIC_DATA.json                       marks the tree as synthetic, holds the config
    <root>/SYNTHETIC_TRUTH.csv                       every rendered figure, annotated or not (not in TUPAC16)

Cases are numbered like TUPAC16's three centres (01–23, 24–48, 49–73) and each centre has its own stain
(matrix, dye strengths, white level), cases a small variation of it, so stain normalisation matters.
Centre-1 cases (the AMIDA13 ones) hold several HPFs, the others fewer. An HPF is H&E-like tissue
(tumour nests of vesicular nuclei with nucleoli, fibrous stroma with spindle fibroblasts and scattered
lymphocytes, a few empty spaces) with, at the scale of 0.25 µm/px:

* mitotic figures of varied shape: prophase clumps of dense chromatin, metaphase plates (irregular, hairy
  bands), and anaphase/telophase pairs (two chromatin masses, annotated once at their midpoint), each in
  a pale cell;
* look-alike hard negatives (§1 of the paper): apoptotic bodies (round, smooth, very dark globules in
  eosinophilic cytoplasm), dark pyknotic nuclei, lymphocyte clusters, hyperchromatic tumour nuclei;
* label noise: a share of the mitoses (``unannotated_fraction``) is rendered but not annotated, as the
  semi-focal loss assumes happens in TUPAC16.

HPFs without annotated mitoses get no CSV or an empty one (both mean zero mitoses in TUPAC16).
Everything is a function of the config: the same config gives byte-identical files. It is not TUPAC16:
numbers on it say nothing about the method's real performance.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from histo_lightning.data.datasets.tupac16 import (
    CENTRES,
    ground_truth_path,
    hpf_path,
    test_hpf_path,
)
from histo_lightning.data.synthetic.he_render import (
    Ellipses,
    StainStyle,
    apply_acquisition,
    fibrous_noise,
    fractal_noise,
    make_nuclei,
    render_nuclei,
    render_optical_density,
    sample_in_mask,
    sample_stain_style,
    smooth_noise,
)
from histo_lightning.data.synthetic.tree import SyntheticConfig, SyntheticGenerator, run_tasks

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PX_PER_UM = 4.0  # 0.25 µm per pixel (Leica SCN400, 40x)
TRUTH_FILE = "SYNTHETIC_TRUTH.csv"
MITOSIS_KINDS = ("prophase", "metaphase", "telophase")
LOOKALIKE_KINDS = ("apoptotic", "pyknotic", "lymphocytes", "hyperchromatic")
_CASE_TAG, _HPF_TAG, _CENTRE_TAG, _TEST_TAG = 0x7CA5, 0x4BF1, 0xCE47, 0x7E57
_TIFF_PARAMS = [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW, what most TIFF readers expect

PRESETS: dict[str, dict] = {
    # tests: six cases (enough for 5 folds + validation), small HPFs, generated in a few seconds
    "tiny": {
        "n_cases": 6,
        "hpfs_per_case": (1, 2),
        "hpf_size": 384,
        "mitoses_per_hpf": 1.5,
        "lookalikes_per_hpf": 4.0,
        "n_test_cases": 1,
        "unannotated_fraction": 0.3,
    },
    # `make demo`: 40 cases (~160 annotated mitoses, 20-46 per test fold), 512 px HPFs (128 µm), enriched
    # in mitoses so that a few CPU minutes see enough examples
    "demo": {
        "n_cases": 40,
        "hpfs_per_case": (2, 4),
        "hpf_size": 512,
        "mitoses_per_hpf": 2.0,
        "lookalikes_per_hpf": 5.0,
        "n_test_cases": 2,
    },
}


@dataclass(frozen=True)
class SyntheticTupacConfig(SyntheticConfig):
    """Parameters of a synthetic TUPAC16 tree (all of them enter the fingerprint).

    Attributes:
        n_cases: labelled cases, spread over the three centres like TUPAC16's 23/25/25.
        hpfs_per_case: (min, max): centre-1 cases hold ``max`` HPFs, the others ``min``.
        hpf_size: HPF side in pixels (TUPAC16: about 2000).
        mitoses_per_hpf: mean rendered mitoses per HPF (varies per case with its proliferation).
        lookalikes_per_hpf: mean look-alike figures per HPF.
        unannotated_fraction: share of rendered mitoses left out of the CSVs (label noise).
        telophase_fraction: share of mitoses that are anaphase/telophase pairs.
        empty_csv_fraction: of the HPFs without annotated mitosis, the share with an empty CSV (the
            rest have none).
        n_test_cases: unlabelled cases under ``mitoses-test-image-data``.
        seed: master seed.
    """

    n_cases: int = 10
    hpfs_per_case: tuple[int, int] = (2, 4)
    hpf_size: int = 768
    mitoses_per_hpf: float = 2.5
    lookalikes_per_hpf: float = 8.0
    unannotated_fraction: float = 0.1
    telophase_fraction: float = 0.25
    empty_csv_fraction: float = 0.5
    n_test_cases: int = 2
    seed: int = 0
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.hpfs_per_case)
        if self.n_cases < 1 or not 1 <= lo <= hi <= 99:
            raise ValueError(
                "need n_cases >= 1 and 1 <= hpfs_per_case[0] <= hpfs_per_case[1] <= 99"
            )
        if self.n_cases > 73 or self.n_test_cases > 99 or self.n_test_cases < 0:
            raise ValueError("TUPAC16 numbers cases 01-73 (test cases 01-99)")
        if self.hpf_size < 256:
            raise ValueError("hpf_size must be >= 256 pixels (two 128 px patches)")
        for name in ("unannotated_fraction", "telophase_fraction", "empty_csv_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        object.__setattr__(self, "hpfs_per_case", (lo, hi))

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> SyntheticTupacConfig:
        """The named preset (``tiny`` or ``demo``) with some fields overridden."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        fields = {**PRESETS[preset], **overrides}
        if "hpfs_per_case" in fields:
            fields["hpfs_per_case"] = tuple(fields["hpfs_per_case"])
        return cls(**fields)


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSpec:
    """One synthetic case: its TUPAC16 number, centre, HPF count, stain and proliferation."""

    number: int
    centre: int
    n_hpfs: int
    stain: StainStyle
    proliferation: float

    @property
    def name(self) -> str:
        return f"{self.number:02d}"


def case_numbers(n_cases: int) -> list[tuple[int, int]]:
    """``(case number, centre index)`` for ``n_cases`` cases spread over the centres like 23/25/25."""
    sizes = np.array([hi - lo + 1 for lo, hi in CENTRES], dtype=float)
    share = n_cases * sizes / sizes.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n_cases - counts.sum()]:
        counts[i] += 1
    return [(lo + k, c) for c, ((lo, _), n) in enumerate(zip(CENTRES, counts)) for k in range(n)]


def centre_stain(seed: int, centre: int) -> StainStyle:
    """The stain of one centre: a clearly different H&E matrix, dye strengths and white level."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CENTRE_TAG, centre]))
    return sample_stain_style(rng, od_sigma=0.08, gain_sigma=0.25, background_range=(222.0, 250.0))


def build_cases(config: SyntheticTupacConfig) -> list[CaseSpec]:
    """The labelled cases; a pure function of ``config``."""
    cases = []
    for number, centre in case_numbers(config.n_cases):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, _CASE_TAG, number]))
        base = centre_stain(config.seed, centre)
        h, e = np.exp(rng.normal(0.0, 0.08, size=2))
        stain = replace(base, h_gain=base.h_gain * float(h), e_gain=base.e_gain * float(e))
        lo, hi = config.hpfs_per_case
        cases.append(
            CaseSpec(
                number=number,
                centre=centre,
                n_hpfs=hi if centre == 0 else lo,
                stain=stain,
                proliferation=float(rng.gamma(2.0, 0.5)),
            )
        )
    return cases


# --------------------------------------------------------------------------------------------
# Rendering one HPF
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A rendered mitosis or look-alike: kind, centre (row, col), whether it is annotated."""

    kind: str
    row: float
    col: float
    annotated: bool

    @property
    def is_mitosis(self) -> bool:
        return self.kind in MITOSIS_KINDS


def _um(v: float) -> float:
    return v * PX_PER_UM


def _chromatin(
    rng: np.random.Generator,
    points: np.ndarray,
    diameter_um: float,
    aspect: tuple[float, float],
    intensity: float,
    texture: float,
    angle: np.ndarray | None = None,
) -> Ellipses:
    """Condensed chromatin clumps (or smooth globules with ``texture`` ~0) at ``points`` (x, y)."""
    return make_nuclei(
        rng,
        points,
        diameter_px=_um(diameter_um),
        size_cv=0.3,
        aspect=aspect,
        intensity=intensity,
        intensity_cv=0.12,
        texture=texture,
        fill=(0.95, 1.0),
        angle=angle,
    )


def _plate(
    rng: np.random.Generator, centre: np.ndarray, angle: float, length_um: float, n: int
) -> Ellipses:
    """A metaphase plate: chromatin clumps along a band, ragged across it, with hair-like projections."""
    t = rng.uniform(-0.5, 0.5, n) * _um(length_um)
    off = rng.normal(0.0, _um(0.9), n)
    along = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-np.sin(angle), np.cos(angle)])
    core = centre + t[:, None] * along + off[:, None] * across
    n_hairs = int(rng.integers(3, 8))
    th = rng.uniform(-0.5, 0.5, n_hairs) * _um(length_um)
    side = rng.choice([-1.0, 1.0], n_hairs) * rng.uniform(_um(1.8), _um(3.0), n_hairs)
    hairs = centre + th[:, None] * along + side[:, None] * across
    return Ellipses.concat(
        [
            _chromatin(rng, core, 2.6, (0.4, 0.9), 1.75, 0.55),
            _chromatin(
                rng, hairs, 2.0, (0.2, 0.4), 1.5, 0.4, angle=np.full(n_hairs, angle + np.pi / 2)
            ),
        ]
    )


def _clump(rng: np.random.Generator, centre: np.ndarray, radius_um: float, n: int) -> Ellipses:
    """Prophase / telophase chromatin: dense irregular clumps scattered in a small disc."""
    r = _um(radius_um) * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    points = centre + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    return _chromatin(rng, points, 2.6, (0.35, 0.9), 1.8, 0.6)


def render_mitosis(
    rng: np.random.Generator, kind: str, centre: np.ndarray
) -> tuple[Ellipses, float]:
    """Chromatin of one mitotic figure centred at ``centre`` (x, y) and the radius (px) of its pale cell."""
    angle = rng.uniform(0, np.pi)
    if kind == "prophase":
        return _clump(rng, centre, rng.uniform(3.5, 5.0), int(rng.integers(12, 20))), _um(8.0)
    if kind == "metaphase":
        length = rng.uniform(9.0, 13.0)
        return _plate(rng, centre, angle, length, int(rng.integers(16, 26))), _um(length / 2 + 3.5)
    # anaphase / telophase: two daughter chromatin masses, one annotation at their midpoint
    gap = _um(rng.uniform(9.0, 15.0)) / 2
    normal = np.array([-np.sin(angle), np.cos(angle)])
    parts = []
    for sign in (-1.0, 1.0):
        daughter = centre + sign * gap * normal
        if rng.random() < 0.5:
            parts.append(
                _plate(rng, daughter, angle, rng.uniform(5.0, 8.0), int(rng.integers(8, 14)))
            )
        else:
            parts.append(_clump(rng, daughter, rng.uniform(2.5, 3.5), int(rng.integers(8, 12))))
    return Ellipses.concat(parts), gap + _um(5.0)


def render_lookalike(
    rng: np.random.Generator, kind: str, centre: np.ndarray
) -> tuple[Ellipses, float, float]:
    """Nuclei of one look-alike at ``centre``, the radius of its cell and its extra eosin (apoptosis)."""
    if kind == "apoptotic":
        n = int(rng.integers(1, 5))
        spread = _um(2.5) if n > 1 else 0.0
        points = centre + rng.normal(0.0, 1.0, (n, 2)) * spread
        globules = make_nuclei(
            rng, points, _um(rng.uniform(2.5, 4.5)), 0.2, (0.85, 1.0), 1.9, 0.1, 0.02
        )
        return globules, _um(rng.uniform(4.5, 6.5)), 0.35
    if kind == "pyknotic":
        nucleus = make_nuclei(
            rng, centre[None], _um(rng.uniform(4.5, 7.0)), 0.1, (0.8, 1.0), 2.0, 0.1, 0.03
        )
        return nucleus, _um(5.0), 0.1
    if kind == "lymphocytes":
        n = int(rng.integers(4, 11))
        points = centre + rng.normal(0.0, _um(6.0), (n, 2))
        cells = make_nuclei(rng, points, _um(6.5), 0.08, (0.85, 1.0), 1.3, 0.08, 0.08)
        return cells, 0.0, 0.0
    # hyperchromatic tumour nucleus: large, dark, coarse but one smooth-outlined body
    nucleus = make_nuclei(
        rng,
        centre[None],
        _um(rng.uniform(10.0, 13.0)),
        0.1,
        (0.6, 0.9),
        1.25,
        0.1,
        0.35,
        fill=(0.9, 1.0),
        nucleolus_prob=0.5,
    )
    return nucleus, 0.0, 0.0


def _disc(
    shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, soft_px: float
) -> np.ndarray:
    """Soft discs (float32 in [0, 1]) of ``radii`` at ``centres`` (x, y)."""
    mask = np.zeros(shape, np.float32)
    for (x, y), r in zip(centres, radii):
        if r > 0:
            cv2.circle(mask, (round(x), round(y)), round(r), 1.0, -1, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), soft_px) if soft_px > 0.3 else mask


def _place(
    rng: np.random.Generator,
    n: int,
    size: int,
    taken: list[np.ndarray],
    min_gap: float,
    margin: float,
    weight: np.ndarray,
) -> list[np.ndarray]:
    """Up to ``n`` random (x, y) points at least ``min_gap`` apart (and from ``taken``), each kept with
    probability ``weight`` at its pixel (rejection sampling: figures go where the tissue is)."""
    placed: list[np.ndarray] = []
    for _ in range(60 * n):
        if len(placed) == n:
            break
        p = rng.uniform(margin, size - margin, 2)
        if rng.random() >= weight[int(p[1]), int(p[0])]:
            continue
        if all(np.hypot(*(p - q)) >= min_gap for q in [*taken, *placed]):
            placed.append(p)
    return placed


def render_hpf(
    rng: np.random.Generator,
    size: int,
    stain: StainStyle,
    n_mitoses: int,
    n_lookalikes: int,
    telophase_fraction: float,
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One RGB ``(size, size, 3)`` uint8 HPF and its figures as ``(kind, (x, y))``."""
    shape = (size, size)
    epithelium = (fractal_noise(rng, shape, _um(45.0)) > rng.uniform(-0.6, 0.0)).astype(np.float32)
    epithelium = cv2.GaussianBlur(epithelium, (0, 0), _um(1.5))
    holes = (fractal_noise(rng, shape, _um(30.0)) > 2.1).astype(np.float32)
    holes = cv2.GaussianBlur(holes, (0, 0), _um(1.0))
    stroma = 1.0 - epithelium
    orientation = rng.uniform(0, np.pi)
    fibres = fibrous_noise(rng, shape, _um(3.0), orientation, waviness=1.0)
    eosin = stroma * (0.25 + 0.3 * fibres) + epithelium * (
        0.22 + 0.04 * smooth_noise(rng, shape, _um(20.0))
    )
    hema = 0.03 + 0.05 * epithelium

    mitosis_kinds = rng.choice(
        MITOSIS_KINDS,
        size=n_mitoses,
        p=[(1 - telophase_fraction) * 0.4, (1 - telophase_fraction) * 0.6, telophase_fraction],
    )
    tissue = np.clip(1.0 - 4.0 * holes, 0.0, 1.0)
    # mitoses mostly in the tumour nests, look-alikes anywhere in the tissue
    mitosis_points = _place(
        rng, n_mitoses, size, [], _um(22.0), _um(6.0), tissue * (0.15 + 0.85 * epithelium)
    )
    lookalike_points = _place(rng, n_lookalikes, size, mitosis_points, _um(22.0), _um(6.0), tissue)
    kinds = [
        *mitosis_kinds[: len(mitosis_points)].tolist(),
        *rng.choice(LOOKALIKE_KINDS, size=len(lookalike_points)).tolist(),
    ]
    figures = list(zip(kinds, [*mitosis_points, *lookalike_points]))

    parts, halo_centres, halo_radii, eo_centres, eo_radii, eo_gain = [], [], [], [], [], []
    for kind, point in figures:
        if kind in MITOSIS_KINDS:
            chromatin, radius = render_mitosis(rng, kind, point)
            halo_centres.append(point)
            halo_radii.append(radius)
        else:
            chromatin, radius, extra_eosin = render_lookalike(rng, kind, point)
            if extra_eosin > 0:
                eo_centres.append(point)
                eo_radii.append(radius)
                eo_gain.append(extra_eosin)
        parts.append(chromatin)
    if halo_centres:
        halo = _disc(shape, np.array(halo_centres), np.array(halo_radii), _um(1.0))
        eosin = eosin * (1.0 - 0.55 * halo)
        hema = hema * (1.0 - 0.6 * halo)
    for point, radius, gain in zip(eo_centres, eo_radii, eo_gain):
        cell = _disc(shape, point[None], np.array([radius]), _um(0.6))
        ring = _disc(shape, point[None], np.array([radius * 1.35]), _um(0.8)) - cell
        eosin = eosin * (1.0 - 0.7 * ring) + gain * cell

    epithelial = make_nuclei(
        rng,
        sample_in_mask(rng, epithelium, _um(12.5), 0.45),
        _um(9.0),
        0.22,
        (0.6, 1.0),
        0.6,
        0.2,
        0.3,
        fill=(0.35, 0.75),
        nucleolus_prob=0.5,
    )
    fibro_points = sample_in_mask(rng, stroma, _um(28.0), 0.9, 0.8)
    fibroblasts = make_nuclei(
        rng,
        fibro_points,
        _um(6.0),
        0.15,
        (0.2, 0.4),
        0.8,
        0.15,
        0.1,
        angle=orientation + rng.normal(0.0, 0.25, len(fibro_points)),
    )
    lymph = make_nuclei(
        rng,
        sample_in_mask(rng, stroma, _um(35.0), 0.9, 0.35),
        _um(6.5),
        0.08,
        (0.85, 1.0),
        1.3,
        0.08,
        0.08,
    )
    ordinary = Ellipses.concat([epithelial, fibroblasts, lymph])
    if figures and len(ordinary):
        centres = np.array([p for _, p in figures])
        distance = np.min(
            np.linalg.norm(ordinary.centres[:, None, :] - centres[None], axis=2), axis=1
        )
        ordinary = ordinary.subset(distance > _um(10.0))
    nuclei = Ellipses.concat([ordinary, *parts])
    hema = hema + render_nuclei(rng, shape, nuclei, _um(1.0))
    keep = 1.0 - holes
    rgb = render_optical_density(hema * keep, eosin * keep, stain)
    return apply_acquisition(rng, rgb), [(k, p) for k, p in figures]


# --------------------------------------------------------------------------------------------
# Writing the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HpfTask:
    out_root: str
    case: CaseSpec
    hpf: int
    test: bool
    config: SyntheticTupacConfig


def _hpf_rng(config: SyntheticTupacConfig, tag: int, case: int, hpf: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, tag, case, hpf]))


def _write_hpf(task: _HpfTask) -> list[Figure]:
    """Render one HPF, write its TIFF (and CSV); return its figures."""
    config = task.config
    rng = _hpf_rng(config, _TEST_TAG if task.test else _HPF_TAG, task.case.number, task.hpf)
    mean = config.mitoses_per_hpf * task.case.proliferation
    n_mitoses = int(rng.poisson(mean))
    n_lookalikes = int(rng.poisson(config.lookalikes_per_hpf))
    rgb, figures = render_hpf(
        rng, config.hpf_size, task.case.stain, n_mitoses, n_lookalikes, config.telophase_fraction
    )
    root = Path(task.out_root)
    name = f"{task.hpf:02d}"
    image = (
        test_hpf_path(root, task.case.name) if task.test else hpf_path(root, task.case.name, name)
    )
    image.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(image), np.ascontiguousarray(rgb[..., ::-1]), _TIFF_PARAMS):
        raise OSError(f"could not write {image}")
    out = []
    for kind, (x, y) in figures:
        annotated = kind in MITOSIS_KINDS and rng.random() >= config.unannotated_fraction
        out.append(Figure(kind, float(y), float(x), bool(annotated and not task.test)))
    if not task.test:
        rows = [(round(f.row), round(f.col)) for f in out if f.annotated]
        if rows or rng.random() < config.empty_csv_fraction:
            label = ground_truth_path(root, task.case.name, name)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{r},{c}\n" for r, c in rows))
    return out


def _tasks(root: Path, config: SyntheticTupacConfig) -> list[_HpfTask]:
    tasks = [
        _HpfTask(str(root), case, hpf, False, config)
        for case in build_cases(config)
        for hpf in range(1, case.n_hpfs + 1)
    ]
    for number in range(1, config.n_test_cases + 1):
        centre = (number - 1) % len(CENTRES)
        case = CaseSpec(number, centre, 1, centre_stain(config.seed, centre), 1.0)
        tasks.append(_HpfTask(str(root), case, 1, True, config))
    return tasks


def _write_tree(
    tmp: Path, config: SyntheticTupacConfig, workers: int, progress: bool
) -> dict[str, Any]:
    """Render every HPF into the (empty) folder ``tmp``, write the truth table; the marker's counts."""
    tasks = _tasks(tmp, config)
    results = run_tasks(_write_hpf, tasks, workers, "Synthetic TUPAC16", progress, batch_size=2)
    with (tmp / TRUTH_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["split", "case", "hpf", "row", "col", "kind", "mitosis", "annotated"])
        for task, figures in zip(tasks, results):
            for f in figures:
                writer.writerow(
                    [
                        "test" if task.test else "train",
                        task.case.name,
                        f"{task.hpf:02d}",
                        f"{f.row:.1f}",
                        f"{f.col:.1f}",
                        f.kind,
                        int(f.is_mitosis),
                        int(f.annotated),
                    ]
                )
    n_mitoses = sum(f.is_mitosis for r in results for f in r)
    n_annotated = sum(f.annotated for r in results for f in r)
    return {
        "n_hpfs": sum(not t.test for t in tasks),
        "n_test_hpfs": sum(t.test for t in tasks),
        "n_mitoses_rendered": n_mitoses,
        "n_mitoses_annotated": n_annotated,
        "microns_per_pixel": 1.0 / PX_PER_UM,
    }


#: the generator (dataset, display name, module, config from a preset, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator(
    "tupac16", "TUPAC16", __name__, SyntheticTupacConfig.from_preset, _write_tree
)
#: write a synthetic TUPAC16 tree at ``root`` atomically (see the module docstring) and return it
generate_tupac16 = GENERATOR.generate
#: the synthetic tree for a config at ``data_dir/synthetic/tupac16-<fingerprint>``, generated once
ensure_synthetic_tupac16 = GENERATOR.ensure


__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "PRESETS",
    "SyntheticTupacConfig",
    "ensure_synthetic_tupac16",
    "generate_tupac16",
    "render_hpf",
]
