"""Deterministic synthetic Colon cancer data in the exact CRCHistoPhenotypes layout.

The tree written by :func:`generate_colon` is what :mod:`histo_lightning.data.datasets.colon` reads::

    <root>/CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN.bmp              24-bit BMP, 0.55 µm/px
    <root>/CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN_<class>.mat      `detection`, K×2 x,y 1-based
    <root>/CRCHistoPhenotypes_2016_04_28/Detection/imgN/imgN.bmp, imgN_detection.mat   every rendered nucleus
    <root>/SYNTHETIC_DATA.json        marks the tree as synthetic, holds the config and the counts
    <root>/SYNTHETIC_TRUTH.csv        every rendered nucleus: x, y (1-based, as in the .mat), col, row (the
                                      reader's 0-based centre pixel), class, kind (look-alike or not),
                                      classified

``.mat`` files are MATLAB 5 written by ``scipy.io.savemat``; a class without nuclei in an image is an empty
0×2 uint8 array, as in the release (e.g. ``img1_epithelial.mat`` of a negative image).

What the method is about is built in (Li et al. §1, §3):

* **Bags** (images) hold a log-normally spread number of classified nuclei, ``mean_nuclei`` on average
  for a 500×500 image (the release: 22,444 / 100 ≈ 224) and proportionally to the area for other sizes.
* **Positive bags** hold epithelial nuclei (the key instances) lining glands (rings of palisading, oval,
  vesicular nuclei with nucleoli around a pale lumen, in eosinophilic cytoplasm), a minority of the bag:
  their share is drawn from ``Beta(key_share)`` (mean ≈ 0.2, from one nucleus up), the rest are ordinary
  nuclei. Partial glands (arcs) appear where few key instances are drawn or a gland is cut by the border.
  This is harder than the release on one axis: there 7,722 of the 22,444 nuclei (34 %) are epithelial.
* **Negative bags** have no epithelium but hold look-alike hard negatives, more than positive bags do:
  plump, vesicular reactive fibroblasts with nucleoli (class ``fibroblast``) and small pseudo-glandular
  arcs of such nuclei around a vessel lumen with a rim of cytoplasm (class ``others``), of the same size,
  texture and orientation distributions as epithelial nuclei except for a small shift (a few percent).
* Ordinary nuclei: spindle fibroblasts along the collagen, lymphocytes and plasma cells (``inflammatory``,
  partly in clusters), and ``others`` (endothelial, apoptotic fragments).
* A share of the rendered nuclei (``unclassified_fraction``, 25 % as in the release's 22,444 classified of
  29,756 detected) is in ``Detection/`` only, not in ``Classification/``: visible but not an instance.
* Images come from ``n_patients`` hidden patients (9 in the release), each with its own stain.

Everything is a function of the config: the same config gives byte-identical files. It is not the Colon
dataset: numbers on it say nothing about the method's real performance.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import scipy.io

from histo_lightning.data.datasets.colon import (
    CLASSIFICATION_DIR,
    KEY_CLASS,
    NUCLEUS_CLASSES,
    RELEASE_DIR,
    centre_pixels,
)
from histo_lightning.data.synthetic.he_render import (
    Ellipses,
    StainStyle,
    apply_acquisition,
    fibrous_noise,
    fill_polygons,
    jittered_grid,
    make_nuclei,
    points_inside,
    random_blobs,
    render_nuclei,
    render_optical_density,
    sample_stain_style,
    smooth_noise,
    soften,
)
from histo_lightning.data.synthetic.tree import SyntheticConfig, SyntheticGenerator, run_tasks

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PX_PER_UM = 1.0 / 0.55
REFERENCE_SIZE = 500  # the release's images are 500×500
DETECTION_DIR = "Detection"
TRUTH_FILE = "SYNTHETIC_TRUTH.csv"
_PATIENT_TAG, _IMAGE_TAG, _LABEL_TAG = 0xC010, 0x1A6E, 0x1AB3

PRESETS: dict[str, dict] = {
    # tests: 12 images (img1…img12, so string order differs from number order) of 160 px, ~23 nuclei each
    "tiny": {"n_images": 12, "image_size": 160, "n_patients": 3},
    # a CPU demo of minutes: 50 images of the release's size and density (~224 nuclei each)
    "demo": {"n_images": 50},
    # the release's size: 100 images of 500×500
    "full": {"n_images": 100},
}


@dataclass(frozen=True)
class SyntheticColonConfig(SyntheticConfig):
    """Parameters of a synthetic Colon tree (all of them enter the fingerprint).

    Attributes:
        n_images: images (bags), named img1…imgN.
        image_size: side in pixels (the release: 500).
        n_patients: hidden patients; each has its own stain.
        positive_fraction: share of images with epithelium (positive bags).
        mean_nuclei: mean classified nuclei of a 500×500 image (scaled by area for other sizes).
        nuclei_sigma: log-normal spread of that count.
        min_nuclei: fewest classified nuclei in an image.
        key_share: Beta(a, b) of the epithelial share of a positive bag.
        lookalike_share_negative: (low, high) uniform range of the look-alike share of a negative bag's
            non-epithelial nuclei.
        lookalike_share_positive: the same for positive bags.
        lookalike_shift: how far look-alikes differ from epithelial nuclei (0 = same distributions).
        unclassified_fraction: share of rendered nuclei left out of Classification/.
        write_detection: also write Detection/imgN/ (as the release does).
        seed: master seed.
    """

    n_images: int = 100
    image_size: int = REFERENCE_SIZE
    n_patients: int = 9
    positive_fraction: float = 0.5
    mean_nuclei: float = 224.0
    nuclei_sigma: float = 0.5
    min_nuclei: int = 3
    key_share: tuple[float, float] = (1.3, 5.0)
    lookalike_share_negative: tuple[float, float] = (0.06, 0.25)
    lookalike_share_positive: tuple[float, float] = (0.0, 0.1)
    lookalike_shift: float = 0.08
    unclassified_fraction: float = 0.25
    write_detection: bool = True
    seed: int = 0
    generator_version: ClassVar[int] = GENERATOR_VERSION

    def __post_init__(self) -> None:
        if self.n_images < 2 or self.n_patients < 1:
            raise ValueError("need n_images >= 2 and n_patients >= 1")
        if self.image_size < 64:
            raise ValueError("image_size must be >= 64 pixels")
        if not 0.0 < self.positive_fraction < 1.0:
            raise ValueError("positive_fraction must be in (0, 1): both bag labels are needed")
        if not 0.0 <= self.unclassified_fraction < 1.0:
            raise ValueError("unclassified_fraction must be in [0, 1)")
        for name in ("key_share", "lookalike_share_negative", "lookalike_share_positive"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def from_preset(cls, preset: str = "demo", **overrides) -> SyntheticColonConfig:
        """The named preset (``tiny``, ``demo`` or ``full``) with some fields overridden."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})


def _um(v: float) -> float:
    return v * PX_PER_UM


# --------------------------------------------------------------------------------------------
# Cohort: labels, patients, counts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """One synthetic image: number, hidden patient, bag label and rendered counts per kind."""

    number: int
    patient: int
    positive: bool
    n_epithelial: int
    n_fibroblast: int
    n_inflammatory: int
    n_others: int
    n_lookalike_single: int
    n_lookalike_arc: int

    @property
    def name(self) -> str:
        return f"img{self.number}"


def patient_stain(seed: int, patient: int) -> StainStyle:
    """The stain of one hidden patient."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PATIENT_TAG, patient]))
    return sample_stain_style(rng, od_sigma=0.06, gain_sigma=0.2, background_range=(228.0, 250.0))


def build_images(config: SyntheticColonConfig) -> list[ImageSpec]:
    """The images with their labels and rendered nucleus counts; a pure function of ``config``."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _LABEL_TAG]))
    n_pos = min(max(1, round(config.n_images * config.positive_fraction)), config.n_images - 1)
    positive = np.zeros(config.n_images, dtype=bool)
    positive[rng.permutation(config.n_images)[:n_pos]] = True
    patients = rng.permutation(np.arange(config.n_images) % config.n_patients)
    area = (config.image_size / REFERENCE_SIZE) ** 2
    keep = 1.0 - config.unclassified_fraction
    specs = []
    for i in range(config.n_images):
        sigma = config.nuclei_sigma
        classified = config.mean_nuclei * area * np.exp(rng.normal(-0.5 * sigma**2, sigma))
        n = max(config.min_nuclei, round(classified / keep))  # rendered
        n_epi = 0
        if positive[i]:
            share = rng.beta(*config.key_share)
            n_epi = int(np.clip(round(n * share), 1, max(1, n - 1)))
        rest = n - n_epi
        proportions = rng.dirichlet(4.0 * np.array([0.39, 0.47, 0.14]))  # release: 5712/6971/2039
        low, high = (
            config.lookalike_share_positive if positive[i] else config.lookalike_share_negative
        )
        n_look = round(rest * rng.uniform(low, high))
        n_arc = int(rng.binomial(n_look, 0.5))
        fibro, inflam, others = rng.multinomial(rest - n_look, proportions)
        specs.append(
            ImageSpec(
                number=i + 1,
                patient=int(patients[i]),
                positive=bool(positive[i]),
                n_epithelial=n_epi,
                n_fibroblast=int(fibro),
                n_inflammatory=int(inflam),
                n_others=int(others),
                n_lookalike_single=n_look - n_arc,
                n_lookalike_arc=n_arc,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# Rendering one image
# --------------------------------------------------------------------------------------------


@dataclass
class _Nuclei:
    """Rendered nuclei of one image: ellipses plus their class and kind, in the same order."""

    ellipses: list[Ellipses]
    cls: list[str]
    kind: list[str]

    def add(self, ellipses: Ellipses, cls: str, kind: str) -> None:
        self.ellipses.append(ellipses)
        self.cls.extend([cls] * len(ellipses))
        self.kind.extend([kind] * len(ellipses))


def _disc_mask(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for (x, y), r in zip(np.asarray(centres), np.asarray(radii)):
        cv2.circle(
            mask,
            (round(float(x) * 16), round(float(y) * 16)),
            round(float(r) * 16),
            1,
            -1,
            cv2.LINE_8,
            4,
        )
    return mask.astype(np.float32)


def _epithelial_morphology(
    rng: np.random.Generator, centres: np.ndarray, angle: np.ndarray, shift: float
) -> Ellipses:
    """Oval vesicular nuclei with nucleoli; ``shift`` > 0 gives the look-alikes' slightly smaller,
    rounder, less nucleolated version of the same distributions."""
    return make_nuclei(
        rng,
        centres,
        diameter_px=_um(7.6 * (1.0 - shift)),
        size_cv=0.18,
        aspect=(0.4 + shift, 0.75 + shift),
        intensity=0.75,
        intensity_cv=0.18,
        texture=0.35,
        fill=(0.45, 0.85),
        nucleolus_prob=0.5 * (1.0 - 2.0 * shift),
        nucleolus_intensity=0.5,
        angle=angle,
    )


def _glands(
    rng: np.random.Generator, size: int, n_nuclei: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gland rings holding ``n_nuclei`` nuclei.

    Returns ``(centres, nucleus angles, lumen mask, interior mask, gland centre of each nucleus)``.
    Glands are added until enough ring positions exist in the image; the last one keeps only an arc of
    the needed length (a gland cut tangentially, or a fragment at the border). A gland that keeps most
    of its ring gets a pale lumen; the interior of every gland that keeps half of it is kept free of
    stromal nuclei.
    """
    shape = (size, size)
    points, angles, owners = [], [], []
    lumen = np.zeros(shape, np.float32)
    interior = np.zeros(shape, np.float32)
    need = n_nuclei
    for _ in range(60):
        if need <= 0:
            break
        radius = _um(rng.uniform(16.0, 42.0))
        centre = rng.uniform(-0.05 * size, 1.05 * size, size=(1, 2))
        blob = random_blobs(
            rng, centre, np.array([radius]), irregularity=0.18, elongation=(1.0, 1.5)
        )
        ring, tangent = blob.ring_points(0.82, _um(5.2), rng)
        inside = points_inside(ring, shape)
        ring, tangent = ring[inside], tangent[inside]
        if len(ring) < 2:
            continue
        kept = min(1.0, need / len(ring))
        if len(ring) > need:  # a contiguous arc
            start = int(rng.integers(0, len(ring)))
            take = (start + np.arange(need)) % len(ring)
            ring, tangent = ring[take], tangent[take]
        if kept >= 0.6:
            lumen = np.maximum(lumen, fill_polygons(shape, blob.polygons(0.55)))
        if kept >= 0.5:
            interior = np.maximum(interior, fill_polygons(shape, blob.polygons(0.95)))
        points.append(ring)
        angles.append(tangent + np.pi / 2 + rng.normal(0.0, 0.2, len(ring)))
        owners.append(np.repeat(centre, len(ring), axis=0))
        need -= len(ring)
    if not points:
        return np.zeros((0, 2), np.float32), np.zeros(0), lumen, interior, np.zeros((0, 2))
    return (
        np.concatenate(points).astype(np.float32),
        np.concatenate(angles),
        lumen,
        interior,
        np.concatenate(owners),
    )


def _pick(
    rng: np.random.Generator, candidates: np.ndarray, n: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidates without replacement (fewer if there are fewer), and the rest."""
    n = min(n, len(candidates))
    if n == 0:
        return candidates[:0], candidates
    p = None if weights is None else weights / weights.sum()
    chosen = rng.choice(len(candidates), size=n, replace=False, p=p)
    rest = np.ones(len(candidates), dtype=bool)
    rest[chosen] = False
    return candidates[chosen], candidates[rest]


def render_colon_image(
    rng: np.random.Generator, size: int, stain: StainStyle, spec: ImageSpec, shift: float
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """One RGB ``(size, size, 3)`` uint8 image and its nuclei: ``(x, y)`` 0-based centres, class, kind."""
    shape = (size, size)
    nuclei = _Nuclei([], [], [])
    orientation = rng.uniform(0, np.pi)
    fibres = fibrous_noise(rng, shape, _um(2.5), orientation, waviness=1.2)
    eosin = 0.2 + 0.14 * fibres + 0.05 * smooth_noise(rng, shape, _um(30.0))
    hema = np.full(shape, 0.025, np.float32)
    occupied = np.zeros(shape, np.float32)

    # glands of epithelium (key instances) in positive images
    if spec.n_epithelial:
        centres, angles, lumen, interior, owners = _glands(rng, size, spec.n_epithelial)
        nuclei.add(_epithelial_morphology(rng, centres, angles, 0.0), KEY_CLASS, "epithelial")
        inward = owners - centres
        inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-6)
        cytoplasm = soften(
            _disc_mask(shape, centres + inward * _um(3.0), np.full(len(centres), _um(5.5))),
            _um(1.0),
        )
        eosin = eosin * (1 - cytoplasm) + cytoplasm * (
            0.42 + 0.05 * smooth_noise(rng, shape, _um(4.0))
        )
        hema = hema + 0.04 * cytoplasm
        lumen = soften(lumen, _um(0.8)) * (1 - cytoplasm)
        eosin = eosin * (1 - 0.85 * lumen)
        occupied = np.maximum(occupied, np.maximum(cytoplasm, interior))

    # look-alike arcs: plump nuclei around a small vessel lumen with a rim of cytoplasm (class "others")
    remaining = spec.n_lookalike_arc
    while remaining > 0:
        k = int(min(remaining, rng.integers(2, 7)))
        centre = rng.uniform(0, size, size=2)
        radius = _um(rng.uniform(7.0, 13.0))
        start = rng.uniform(0, 2 * np.pi)
        t = start + np.arange(k) * _um(5.2) / radius + rng.normal(0, 0.05, k)
        pts = np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], 1)
        pts = pts[points_inside(pts, shape)].astype(np.float32)
        remaining -= k
        if not len(pts):
            continue
        tangent = t[: len(pts)] + np.pi / 2
        nuclei.add(
            _epithelial_morphology(
                rng, pts, tangent + np.pi / 2 + rng.normal(0, 0.35, len(pts)), shift
            ),
            "others",
            "lookalike_arc",
        )
        rim = soften(_disc_mask(shape, pts, np.full(len(pts), _um(4.5))), _um(1.0))
        eosin = eosin * (1 - rim) + rim * 0.38
        vessel = soften(_disc_mask(shape, centre[None], np.array([radius * 0.6])), _um(0.8))
        if rng.random() < 0.5:  # red blood cells in the lumen
            n_rbc = int(rng.integers(1, 5))
            rbc = centre + rng.normal(0, radius * 0.25, (n_rbc, 2))
            vessel_rbc = _disc_mask(shape, rbc, np.full(n_rbc, _um(3.5)))
            eosin = eosin * (1 - 0.8 * vessel) + 0.75 * vessel_rbc * vessel
        else:
            eosin = eosin * (1 - 0.8 * vessel)
        occupied = np.maximum(occupied, np.maximum(rim, vessel))

    # free stroma positions for everything else
    candidates = jittered_grid(rng, shape, _um(6.5), jitter=0.5)
    candidates = candidates[points_inside(candidates, shape)]
    free = occupied[candidates[:, 1].astype(int), candidates[:, 0].astype(int)] < 0.3
    candidates = candidates[free]
    rng.shuffle(candidates)

    singles, candidates = _pick(rng, candidates, spec.n_lookalike_single)
    nuclei.add(
        _epithelial_morphology(rng, singles, rng.uniform(0, np.pi, len(singles)), shift),
        "fibroblast",
        "lookalike_reactive",
    )
    fibro, candidates = _pick(rng, candidates, spec.n_fibroblast)
    nuclei.add(
        make_nuclei(
            rng,
            fibro,
            _um(5.0),
            0.15,
            (0.18, 0.38),
            0.9,
            0.15,
            0.1,
            angle=orientation + rng.normal(0.0, 0.3, len(fibro)),
        ),
        "fibroblast",
        "fibroblast",
    )
    # inflammatory cells, partly in clusters
    clusters = rng.uniform(0, size, size=(int(rng.integers(1, 4)), 2))
    distance = (
        np.min(np.linalg.norm(candidates[:, None, :] - clusters[None], axis=2), axis=1)
        if len(candidates)
        else np.zeros(0)
    )
    weights = 1.0 + 6.0 * np.exp(-0.5 * (distance / _um(18.0)) ** 2)
    inflam, candidates = _pick(
        rng, candidates, spec.n_inflammatory, weights if len(candidates) else None
    )
    plasma = rng.random(len(inflam)) < 0.3
    nuclei.add(
        make_nuclei(rng, inflam[~plasma], _um(5.2), 0.08, (0.85, 1.0), 1.3, 0.08, 0.08),
        "inflammatory",
        "lymphocyte",
    )
    nuclei.add(
        make_nuclei(rng, inflam[plasma], _um(6.0), 0.1, (0.7, 0.9), 1.0, 0.1, 0.4, fill=(0.6, 0.9)),
        "inflammatory",
        "plasma",
    )
    others, candidates = _pick(rng, candidates, spec.n_others)
    apoptotic = rng.random(len(others)) < 0.4
    nuclei.add(
        make_nuclei(rng, others[apoptotic], _um(3.6), 0.25, (0.6, 1.0), 1.6, 0.1, 0.05),
        "others",
        "apoptotic",
    )
    nuclei.add(
        make_nuclei(
            rng, others[~apoptotic], _um(5.5), 0.15, (0.2, 0.35), 0.6, 0.15, 0.15, fill=(0.6, 0.9)
        ),
        "others",
        "endothelial",
    )

    all_nuclei = Ellipses.concat(nuclei.ellipses)
    hema = hema + render_nuclei(rng, shape, all_nuclei, _um(0.9))
    rgb = render_optical_density(hema, eosin.astype(np.float32), stain)
    return (
        apply_acquisition(rng, rgb),
        all_nuclei.centres.astype(np.float64),
        nuclei.cls,
        nuclei.kind,
    )


# --------------------------------------------------------------------------------------------
# Writing the tree
# --------------------------------------------------------------------------------------------


#: the 116-byte text field of a MATLAB 5 header; scipy writes the current time there, so a fixed text
#: keeps the files byte-identical between generations
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, written by histo-lightning (synthetic)".ljust(
    116
)


def _save_detection(path: Path, points: np.ndarray) -> None:
    """``detection`` = K×2 float64 (x, y) 1-based, or the release's empty 0×2 uint8 array."""
    value = points.astype(np.float64) if len(points) else np.zeros((0, 2), dtype=np.uint8)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"detection": value})
    path.write_bytes(_MAT_HEADER + buffer.getvalue()[len(_MAT_HEADER) :])


@dataclass(frozen=True)
class _ImageTask:
    release: str
    config: SyntheticColonConfig
    spec: ImageSpec


def _write_image(task: _ImageTask) -> list[dict]:
    release, config, spec = Path(task.release), task.config, task.spec
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _IMAGE_TAG, spec.number]))
    stain = patient_stain(config.seed, spec.patient)
    rgb, centres, classes, kinds = render_colon_image(
        rng, config.image_size, stain, spec, config.lookalike_shift
    )
    classified = rng.random(len(centres)) >= config.unclassified_fraction
    if spec.positive and not any(c and k == KEY_CLASS for c, k in zip(classified, classes)):
        first = classes.index(
            KEY_CLASS
        )  # a positive bag keeps at least one classified key instance
        classified[first] = True
    one_based = centres + 1.0
    folder = release / CLASSIFICATION_DIR / spec.name
    folder.mkdir(parents=True)
    bmp = folder / f"{spec.name}.bmp"
    if not cv2.imwrite(str(bmp), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {bmp}")
    cls_array = np.array(classes)
    for cls in NUCLEUS_CLASSES:
        _save_detection(
            folder / f"{spec.name}_{cls}.mat", one_based[classified & (cls_array == cls)]
        )
    if config.write_detection:
        detection = release / DETECTION_DIR / spec.name
        detection.mkdir(parents=True)
        try:
            os.link(bmp, detection / bmp.name)
        except OSError:
            (detection / bmp.name).write_bytes(bmp.read_bytes())
        _save_detection(detection / f"{spec.name}_detection.mat", one_based)
    pixels = centre_pixels(one_based, config.image_size, config.image_size, str(bmp))
    return [
        {
            "image": spec.name,
            "patient": spec.patient,
            "label": int(spec.positive),
            "x": f"{x:.4f}",
            "y": f"{y:.4f}",
            "col": int(col),
            "row": int(row),
            "cls": cls,
            "kind": kind,
            "classified": int(c),
        }
        for (x, y), (col, row), cls, kind, c in zip(one_based, pixels, classes, kinds, classified)
    ]


def _write_tree(
    tmp: Path, config: SyntheticColonConfig, workers: int, progress: bool
) -> dict[str, Any]:
    """Render every image into the (empty) folder ``tmp``, write the truth table; the marker's counts."""
    release = tmp / RELEASE_DIR
    specs = build_images(config)
    tasks = [_ImageTask(str(release), config, spec) for spec in specs]
    rows = [
        r
        for image in run_tasks(_write_image, tasks, workers, "Synthetic Colon", progress)
        for r in image
    ]
    with (tmp / TRUTH_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    classified = [r for r in rows if r["classified"]]
    return {
        "n_images": len(specs),
        "n_positive_images": sum(s.positive for s in specs),
        "n_nuclei_rendered": len(rows),
        "n_nuclei_classified": len(classified),
        "classified_per_class": {
            c: sum(r["cls"] == c for r in classified) for c in NUCLEUS_CLASSES
        },
        "n_lookalikes_classified": sum(r["kind"].startswith("lookalike") for r in classified),
        "microns_per_pixel": 1.0 / PX_PER_UM,
    }


#: the generator (dataset, display name, module, config from a preset, writer; see SyntheticGenerator)
GENERATOR = SyntheticGenerator(
    "colon", "CRCHistoPhenotypes", __name__, SyntheticColonConfig.from_preset, _write_tree
)
#: write a synthetic Colon tree at ``root`` atomically (see the module docstring) and return it
generate_colon = GENERATOR.generate
#: the synthetic tree for a config at ``data_dir/synthetic/colon-<fingerprint>``, generated once
ensure_synthetic_colon = GENERATOR.ensure


__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "PRESETS",
    "SyntheticColonConfig",
    "build_images",
    "ensure_synthetic_colon",
    "generate_colon",
    "render_colon_image",
]
