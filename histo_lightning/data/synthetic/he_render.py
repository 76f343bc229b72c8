"""Reusable H&E rendering primitives for synthetic histology.

Everything here works on float32 "concentration maps": per-pixel amounts of hematoxylin (H,
nuclei, mucin) and eosin (E, stroma, cytoplasm). Tissue is described with these maps, and only
the last step, :func:`render_optical_density`, turns them into RGB with the Beer-Lambert law
and a (per patient / per centre perturbed) stain matrix. The dataset generators (BreakHis
patches, TUPAC16-like mitosis fields, PAIP-like whole slides) compose these primitives; none of
them depends on a particular dataset.

All randomness comes from an explicit :class:`numpy.random.Generator`, so a caller that seeds
the generator per image gets byte-identical output on any machine and in any process.
Coordinates are pixels, ``x`` to the right and ``y`` down, pixel ``(row, col)`` centred at
``(x=col, y=row)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Optical-density vectors (R, G, B) of hematoxylin and eosin: the reference H&E stain matrix of
# Macenko et al. (2009), measured on real slides (less saturated than Ruifrok's pure dyes).
REFERENCE_STAIN_OD = np.array(
    [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]], dtype=np.float64
)

_MAX_STAMP_ELEMENTS = 1_500_000  # pixels evaluated per vectorised ellipse batch
_MIN_DETAILED_RADIUS = 3  # stamp windows up to this half-size get a flat nucleus profile


@dataclass(frozen=True)
class StainStyle:
    """The colour look of one patient, slide or centre.

    Attributes:
        stain_od: (2, 3) unit optical-density vectors, row 0 hematoxylin, row 1 eosin.
        h_gain: multiplier on hematoxylin concentrations (staining time / dye strength).
        e_gain: multiplier on eosin concentrations.
        background: RGB incident-light intensity ``I0`` (white level, slightly tinted).
    """

    stain_od: np.ndarray
    h_gain: float
    e_gain: float
    background: tuple[float, float, float]


@dataclass(frozen=True)
class Ellipses:
    """A vectorised set of soft ellipses (nuclei, red blood cells, nucleoli, fat vacuoles).

    All arrays have length N. Angles are radians of the major axis from the x axis.

    Attributes:
        centres: (N, 2) float ``(x, y)`` pixel centres.
        semi_major: semi-major axes in pixels.
        semi_minor: semi-minor axes in pixels (``<= semi_major``).
        angle: major-axis orientation in radians.
        intensity: peak stain concentration stamped inside the ellipse.
        texture: chromatin texture amplitude (0 = flat, ~0.6 = coarse clumped chromatin).
        fill: interior level relative to the rim (1 = solid/hyperchromatic, ~0.4 = vesicular
            nucleus with a dark membrane and pale interior).
        nucleolus: nucleolus intensity added at an off-centre dot (0 = none).
    """

    centres: np.ndarray
    semi_major: np.ndarray
    semi_minor: np.ndarray
    angle: np.ndarray
    intensity: np.ndarray
    texture: np.ndarray
    fill: np.ndarray
    nucleolus: np.ndarray

    def __len__(self) -> int:
        """Number of ellipses."""
        return len(self.centres)

    def subset(self, keep: np.ndarray) -> Ellipses:
        """The ellipses selected by a boolean mask or an index array."""
        return Ellipses(*(getattr(self, f)[keep] for f in _ELLIPSE_FIELDS))

    @staticmethod
    def concat(parts: list[Ellipses]) -> Ellipses:
        """All ellipses of ``parts`` in one set (an empty set when ``parts`` is empty)."""
        if not parts:
            return empty_ellipses()
        return Ellipses(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ELLIPSE_FIELDS))


_ELLIPSE_FIELDS = (
    "centres",
    "semi_major",
    "semi_minor",
    "angle",
    "intensity",
    "texture",
    "fill",
    "nucleolus",
)


def empty_ellipses() -> Ellipses:
    """An ellipse set with no members."""
    z = np.zeros(0, dtype=np.float32)
    return Ellipses(np.zeros((0, 2), dtype=np.float32), z, z, z, z, z, z, z)


# --------------------------------------------------------------------------------------------
# Stain model
# --------------------------------------------------------------------------------------------


def perturb_stain_matrix(
    rng: np.random.Generator, sigma: float = 0.05, reference: np.ndarray = REFERENCE_STAIN_OD
) -> np.ndarray:
    """A (2, 3) stain OD matrix randomly rotated away from ``reference``.

    Each OD vector gets independent Gaussian noise of std ``sigma`` per RGB component, is
    clipped to stay positive and renormalised to unit length, so hue shifts like the
    differences between laboratories while staying a plausible H&E pair.
    """
    noisy = reference + rng.normal(0.0, sigma, size=reference.shape)
    noisy = np.clip(noisy, 0.02, None)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def sample_stain_style(
    rng: np.random.Generator,
    od_sigma: float = 0.05,
    gain_sigma: float = 0.15,
    background_range: tuple[float, float] = (232.0, 252.0),
) -> StainStyle:
    """A random :class:`StainStyle`: perturbed OD vectors, log-normal H/E gains, tinted white."""
    stain_od = perturb_stain_matrix(rng, od_sigma)
    h_gain, e_gain = np.exp(rng.normal(0.0, gain_sigma, size=2))
    base = rng.uniform(*background_range)
    tint = rng.normal(0.0, 3.0, size=3)
    background = tuple(float(v) for v in np.clip(base + tint, 200.0, 255.0))
    return StainStyle(stain_od, float(h_gain), float(e_gain), background)  # type: ignore[arg-type]


def render_optical_density(
    hematoxylin: np.ndarray, eosin: np.ndarray, style: StainStyle
) -> np.ndarray:
    """RGB intensities (H, W, 3) float32 from H and E concentration maps (Beer-Lambert).

    ``OD = h * h_gain * stain_od[0] + e * e_gain * stain_od[1]`` and
    ``I = I0 * 10 ** -OD`` per channel, with ``I0 = style.background``.
    """
    minus_ln10 = -np.log(10.0)
    od_h = (style.stain_od[0] * style.h_gain * minus_ln10).astype(np.float32)
    od_e = (style.stain_od[1] * style.e_gain * minus_ln10).astype(np.float32)
    channels = []
    for c in range(3):  # per contiguous channel: several times faster than broadcasting
        channel = hematoxylin * od_h[c] + eosin * od_e[c]
        np.exp(channel, out=channel)
        channel *= np.float32(style.background[c])
        channels.append(channel)
    return np.stack(channels, axis=-1)


def apply_acquisition(
    rng: np.random.Generator,
    rgb: np.ndarray,
    brightness_sigma: float = 0.04,
    max_blur_px: float = 0.9,
    noise_std: tuple[float, float] = (1.0, 3.5),
) -> np.ndarray:
    """Camera effects on a float RGB image; returns uint8 (H, W, 3).

    Applies a random global brightness gain (log-normal, std ``brightness_sigma``), a random
    Gaussian defocus blur with sigma in ``[0, max_blur_px]`` and additive Gaussian sensor noise
    (one luminance field shared by the channels) with std drawn from ``noise_std``.
    """
    gain = np.float32(np.exp(rng.normal(0.0, brightness_sigma)))
    blur = rng.uniform(0.0, max_blur_px)
    noise = rng.standard_normal((*rgb.shape[:2], 1), dtype=np.float32)
    noise *= np.float32(rng.uniform(*noise_std))
    out = rgb * gain
    if blur > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    out += noise + np.float32(0.5)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Noise fields
# --------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field (float32) with correlation length ~scale_px.

    See :func:`_raw_smooth_noise` for how it is built; mean and std are normalised once, on a
    sparse pixel sample.
    """
    field = _raw_smooth_noise(rng, shape, scale_px)
    sample = field[::7, ::7]
    field -= sample.mean()
    field *= np.float32(1.0 / max(float(sample.std()), 1e-6))
    return field


def _raw_smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float
) -> np.ndarray:
    """Unnormalised smooth Gaussian noise (float32, writable) for :func:`smooth_noise`.

    Scales below two pixels blur full-resolution white noise; scales of 2-8 px interpolate a
    coarse random grid bicubically; larger scales are built at a quarter of the resolution
    (recursively) and upsampled bilinearly, which is indistinguishable for such smooth fields
    and keeps the cost at about one pass over the image.
    """
    height, width = shape
    if scale_px >= 8.0:
        small = _raw_smooth_noise(rng, (height // 4 + 2, width // 4 + 2), scale_px / 4.0)
        up = cv2.resize(small, (4 * small.shape[1], 4 * small.shape[0]))
        return np.ascontiguousarray(up[:height, :width])
    if scale_px >= 2.0:
        coarse = rng.standard_normal(
            (int(height / scale_px) + 4, int(width / scale_px) + 4), dtype=np.float32
        )
        up = cv2.resize(
            coarse,
            (round(coarse.shape[1] * scale_px), round(coarse.shape[0] * scale_px)),
            interpolation=cv2.INTER_CUBIC,
        )
        oy, ox = (int(rng.integers(0, up.shape[i] - shape[i] + 1)) for i in (0, 1))
        return np.ascontiguousarray(up[oy : oy + height, ox : ox + width])
    field = rng.standard_normal(shape, dtype=np.float32)
    if scale_px > 0.3:
        field = cv2.GaussianBlur(field, (0, 0), scale_px / 2.0)
    return field


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float, octaves: int = 3
) -> np.ndarray:
    """Unit-std fractal (multi-octave) noise; octave k has scale ``scale_px / 2**k``, weight 2**-k."""
    total = np.zeros(shape, dtype=np.float32)
    for k in range(octaves):
        total += smooth_noise(rng, shape, scale_px / 2**k) * np.float32(0.5**k)
    return total / max(float(total[::7, ::7].std()), 1e-6)


def fibrous_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    width_px: float,
    orientation: float,
    waviness: float = 1.0,
    elongation: float = 8.0,
    contrast: float = 2.5,
    bias: float = 0.0,
) -> np.ndarray:
    """Collagen-like fibre texture in [0, 1] (float32): wavy, broken, roughly parallel bundles.

    White noise is smoothed with an anisotropic Gaussian (``elongation`` times longer along
    ``orientation`` than across), on a grid where a fibre is ~1.5 cells wide, upsampled, then
    domain-warped by smooth noise (``waviness`` fibre widths of displacement per ~10 widths)
    so bundles wander. ``logistic(contrast * (z + bias))`` of the unit-std field ``z`` gives
    the fibres; a high contrast with a positive bias gives broad bundles split by thin clefts.
    """
    height, width = shape
    cell = max(width_px / 1.5, 1.0)
    small = (int(height / cell) + 8, int(width / cell) + 8)
    field = cv2.filter2D(
        rng.standard_normal(small, dtype=np.float32),
        -1,
        _oriented_gaussian(orientation, elongation),
    )
    dx = smooth_noise(rng, shape, width_px * 10) * np.float32(waviness * width_px)
    dy = smooth_noise(rng, shape, width_px * 10) * np.float32(waviness * width_px)
    grid_x = (np.arange(width, dtype=np.float32)[None, :] + dx) / np.float32(cell) + 4.0
    grid_y = (np.arange(height, dtype=np.float32)[:, None] + dy) / np.float32(cell) + 4.0
    z = cv2.remap(field, grid_x, grid_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    z = z / max(float(field.std()), 1e-6)
    return (1.0 / (1.0 + np.exp(-contrast * (z + bias)))).astype(np.float32)


def _oriented_gaussian(orientation: float, elongation: float) -> np.ndarray:
    """Normalised anisotropic Gaussian kernel: sigma 0.7 across, 0.7 * elongation along."""
    sigma_along, sigma_across = 0.7 * elongation, 0.7
    half = int(np.ceil(3 * sigma_along))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    along = x * np.cos(orientation) + y * np.sin(orientation)
    across = -x * np.sin(orientation) + y * np.cos(orientation)
    kernel = np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2))
    return (kernel / np.sqrt(np.sum(kernel**2))).astype(np.float32)


def voronoi_walls(shape: tuple[int, int], seeds: np.ndarray, wall_px: float) -> np.ndarray:
    """Soft mask (float32 in [0, 1]) of the walls of the Voronoi tessellation of ``seeds``.

    Cell membranes between nuclei, adipocyte walls. Exact on the pixel grid and fast: a
    labelled distance transform gives every pixel its nearest seed, label changes between
    neighbours are the walls, and a second distance transform widens them to ``wall_px``.
    Seeds may lie outside the image (up to 64 px), so border cells are cut, not merged.
    """
    height, width = shape
    pad = 64
    canvas = np.ones((height + 2 * pad, width + 2 * pad), dtype=np.uint8)
    pts = np.round(np.asarray(seeds, dtype=np.float64) + pad).astype(np.int64)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < canvas.shape[1]) & (pts[:, 1] >= 0)
    ok &= pts[:, 1] < canvas.shape[0]
    canvas[pts[ok, 1], pts[ok, 0]] = 0
    if not ok.any():
        return np.zeros(shape, dtype=np.float32)
    _, labels = cv2.distanceTransformWithLabels(
        canvas, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    labels = labels[pad - 1 : pad + height, pad - 1 : pad + width]
    edge = (labels[1:, 1:] != labels[1:, :-1]) | (labels[1:, 1:] != labels[:-1, 1:])
    distance = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(0.5 * wall_px + 0.5 - distance, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def jittered_grid(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing_px: float,
    jitter: float = 0.4,
    margin_px: float = 0.0,
) -> np.ndarray:
    """(N, 2) float32 ``(x, y)`` points on a square grid of ``spacing_px``, each displaced by
    up to ``jitter * spacing`` in x and y; covers the image plus ``margin_px`` on each side.

    A cheap stand-in for Poisson-disc sampling: roughly even density, few overlaps.
    """
    height, width = shape
    spacing = max(spacing_px, 0.5)
    xs = np.arange(-margin_px, width + margin_px, spacing, dtype=np.float32)
    ys = np.arange(-margin_px, height + margin_px, spacing, dtype=np.float32)
    pts = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    pts += rng.uniform(-0.5, 0.5, size=pts.shape).astype(np.float32) * np.float32(jitter * spacing)
    # Random phase so the grid does not line up with the image border.
    return pts + rng.uniform(0.0, spacing, size=2).astype(np.float32)


def sample_in_mask(
    rng: np.random.Generator,
    mask: np.ndarray,
    spacing_px: float,
    jitter: float = 0.4,
    keep_prob: float = 1.0,
) -> np.ndarray:
    """(N, 2) ``(x, y)`` jittered-grid points that fall where ``mask > 0.5``.

    ``keep_prob`` thins the points at random (lower density, irregular gaps).
    """
    pts = jittered_grid(rng, mask.shape, spacing_px, jitter)
    inside = points_inside(pts, mask.shape)
    pts = pts[inside]
    keep = mask[pts[:, 1].astype(np.int32), pts[:, 0].astype(np.int32)] > 0.5
    if keep_prob < 1.0:
        keep &= rng.random(len(pts)) < keep_prob
    return pts[keep]


def points_inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of ``(x, y)`` points whose pixel lies inside an image of ``shape``."""
    height, width = shape
    return (
        (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    )


@dataclass(frozen=True)
class Blobs:
    """Irregular closed shapes (glands, nests, pools): star-shaped ellipses with harmonics.

    The boundary of blob i is ``c_i + Rot(angle_i) @ diag(elong_i, 1 / elong_i) @ r_i(t) *
    (cos t, sin t)`` with ``r_i(t) = radius_i * (1 + sum_k amp_ik cos(k t + phase_ik))``,
    k = 2..K+1. Scaling ``r`` by a factor gives concentric rings (lumen, epithelial layers).
    """

    centres: np.ndarray
    radius: np.ndarray
    elongation: np.ndarray
    angle: np.ndarray
    amps: np.ndarray
    phases: np.ndarray

    def __len__(self) -> int:
        """Number of blobs."""
        return len(self.centres)

    def boundary(self, t: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
        """Boundary points (..., 2) at parameter ``t`` with shape (N, M) (or broadcastable)."""
        k = np.arange(2, 2 + self.amps.shape[1], dtype=np.float64)
        wobble = 1.0 + np.sum(
            self.amps[:, None, :] * np.cos(k * t[..., None] + self.phases[:, None, :]), axis=-1
        )
        r = self.radius[:, None] * wobble * scale
        lx = r * np.cos(t) * self.elongation[:, None]
        ly = r * np.sin(t) / self.elongation[:, None]
        ca, sa = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None]
        x = self.centres[:, 0:1] + lx * ca - ly * sa
        y = self.centres[:, 1:2] + lx * sa + ly * ca
        return np.stack([x, y], axis=-1)

    def polygons(self, scale: float = 1.0, n_vertices: int | None = None) -> np.ndarray:
        """(N, V, 2) polygon vertices of the boundaries scaled by ``scale``.

        By default V gives ~3 px edges on the largest blob (between 12 and 256 vertices).
        """
        if n_vertices is None:
            longest = float(np.max(self.radius * self.elongation, initial=1.0)) * scale
            n_vertices = int(np.clip(2 * np.pi * longest / 3.0, 12, 256))
        t = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)[None, :]
        return self.boundary(np.broadcast_to(t, (len(self), n_vertices)), scale)

    def ring_points(
        self, scale: float, spacing_px: float, rng: np.random.Generator, jitter: float = 0.15
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points evenly spaced (about ``spacing_px`` apart) along each blob's ring at ``scale``.

        Returns ``(points (M, 2), tangent_angle (M,))`` over all blobs, with the position along
        the ring jittered by ``jitter`` of the spacing. Used to line glands with nuclei.
        """
        perimeter = 2.0 * np.pi * self.radius * scale * (self.elongation + 1 / self.elongation) / 2
        counts = np.maximum(3, np.round(perimeter / max(spacing_px, 0.5))).astype(np.int64)
        owner = np.repeat(np.arange(len(self)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        t = 2.0 * np.pi * (within + rng.uniform(-jitter, jitter, size=len(owner)))
        t = t / counts[owner] + rng.uniform(0, 2 * np.pi, size=len(self))[owner]
        sub = self.subset(owner)
        pts = sub.boundary(t[:, None], scale)[:, 0, :]
        ahead = sub.boundary(t[:, None] + 1e-3, scale)[:, 0, :]
        tangent = np.arctan2(ahead[:, 1] - pts[:, 1], ahead[:, 0] - pts[:, 0])
        return pts.astype(np.float32), tangent.astype(np.float32)

    def subset(self, keep: np.ndarray) -> Blobs:
        """The blobs selected by a boolean mask or an index array."""
        return Blobs(
            self.centres[keep],
            self.radius[keep],
            self.elongation[keep],
            self.angle[keep],
            self.amps[keep],
            self.phases[keep],
        )


def random_blobs(
    rng: np.random.Generator,
    centres: np.ndarray,
    radius: np.ndarray,
    irregularity: float,
    elongation: tuple[float, float] = (1.0, 1.3),
    n_harmonics: int = 4,
) -> Blobs:
    """:class:`Blobs` at ``centres`` with random shape.

    Harmonic amplitudes are uniform in ``[0, irregularity / k]`` (k = harmonic order), so
    ``irregularity`` ~0.05 gives near-ellipses and ~0.35 ragged, infiltrative outlines.
    """
    n = len(centres)
    k = np.arange(2, 2 + n_harmonics, dtype=np.float64)
    amps = rng.uniform(0.0, 1.0, size=(n, n_harmonics)) * irregularity / (k - 1)
    return Blobs(
        centres=np.asarray(centres, dtype=np.float64),
        radius=np.asarray(radius, dtype=np.float64),
        elongation=rng.uniform(*elongation, size=n),
        angle=rng.uniform(0.0, np.pi, size=n),
        amps=amps,
        phases=rng.uniform(0.0, 2.0 * np.pi, size=(n, n_harmonics)),
    )


def fill_polygons(shape: tuple[int, int], polygons: np.ndarray) -> np.ndarray:
    """Binary float32 mask (1 inside) of (N, V, 2) polygons, rasterised with 1/16 px precision."""
    mask = np.zeros(shape, dtype=np.uint8)
    if len(polygons):
        scaled = np.round(np.asarray(polygons) * 16).astype(np.int32)
        cv2.fillPoly(mask, list(scaled), 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(np.float32)


def draw_polylines(
    shape: tuple[int, int], lines: list[np.ndarray], thickness_px: float
) -> np.ndarray:
    """Binary float32 mask of open polylines drawn with ``thickness_px`` (>= 1 px)."""
    mask = np.zeros(shape, dtype=np.uint8)
    if lines:
        polys = [np.round(np.asarray(p)).astype(np.int32) for p in lines]
        cv2.polylines(mask, polys, False, 1, thickness=max(1, round(thickness_px)))
    return mask.astype(np.float32)


def random_walk_paths(
    rng: np.random.Generator,
    starts: np.ndarray,
    directions: np.ndarray,
    n_steps: int,
    step_px: float,
    turn_sigma: float,
) -> np.ndarray:
    """(N, n_steps + 1, 2) smooth random-walk paths (cords, fronds, clefts).

    Path i starts at ``starts[i]`` heading ``directions[i]`` (radians) and turns by a Gaussian
    angle of std ``turn_sigma`` per step of ``step_px``.
    """
    turns = rng.normal(0.0, turn_sigma, size=(len(starts), n_steps))
    heading = directions[:, None] + np.cumsum(turns, axis=1)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=-1) * step_px
    paths = np.concatenate([np.zeros((len(starts), 1, 2)), np.cumsum(steps, axis=1)], axis=1)
    return paths + starts[:, None, :]


def soften(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-blurred copy of a mask (anti-aliased tissue boundaries); identity if tiny sigma."""
    if sigma_px < 0.3:
        return mask
    return cv2.GaussianBlur(mask, (0, 0), sigma_px)


# --------------------------------------------------------------------------------------------
# Nuclei
# --------------------------------------------------------------------------------------------


def stamp_ellipses(
    canvas: np.ndarray,
    ellipses: Ellipses,
    texture_field: np.ndarray | None = None,
    edge_px: float = 0.8,
) -> None:
    """Max-composite soft ellipses into ``canvas`` (H, W) float32, in place.

    Vectorised: ellipses are grouped by size, and for each group all pixels of all bounding
    boxes are evaluated at once and written with ``np.maximum.at`` (no Python loop per pixel
    or per ellipse). Per pixel at elliptical radius ``rho`` the value is::

        intensity * soft_edge(rho) * (fill + (1 - fill) * rim(rho)) * (1 + texture * T)
        + nucleolus * dot

    where ``T`` is ``texture_field`` sampled at the pixel (chromatin), ``rim`` a Gaussian
    ridge at the membrane and ``dot`` a small disc off-centre (nucleolus).
    """
    if len(ellipses) == 0:
        return
    order = np.argsort(ellipses.semi_major, kind="stable")
    # Window half-size: semi-major axis + soft edge + centre rounding.
    radius = np.ceil(ellipses.semi_major[order] + 0.5 * edge_px + 0.5).astype(np.int64)
    start = 0
    while start < len(order):
        r = int(radius[start])
        cap = max(r, int(r * 1.15))
        stop = start + int(np.searchsorted(radius[start:], cap, side="right"))
        r_max = int(radius[stop - 1])
        per = (2 * r_max + 1) ** 2
        stop = min(stop, start + max(1, _MAX_STAMP_ELEMENTS // per))
        _stamp_group(canvas, ellipses.subset(order[start:stop]), r_max, texture_field, edge_px)
        start = stop


def _stamp_group(
    canvas: np.ndarray,
    e: Ellipses,
    r: int,
    texture_field: np.ndarray | None,
    edge_px: float,
) -> None:
    """Stamp ellipses whose bounding boxes all fit in a (2r+1)^2 window (see stamp_ellipses).

    Window pixels outside the soft ellipse or the image are dropped right after the elliptical
    radius is known, so the profile is evaluated only where it is non-zero. Ellipses of at most
    ``_MIN_DETAILED_RADIUS`` px get a flat profile: rim, chromatin and nucleolus would not
    be resolved at that size anyway.
    """
    height, width = canvas.shape
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1].reshape(2, 1, -1).astype(np.int32)
    cx = np.round(e.centres[:, 0]).astype(np.int32)[:, None]
    cy = np.round(e.centres[:, 1]).astype(np.int32)[:, None]
    px, py = cx + ox, cy + oy
    dx = px - e.centres[:, 0:1].astype(np.float32)
    dy = py - e.centres[:, 1:2].astype(np.float32)
    ca = np.cos(e.angle).astype(np.float32)[:, None]
    sa = np.sin(e.angle).astype(np.float32)[:, None]
    a = e.semi_major.astype(np.float32)[:, None]
    b = np.maximum(e.semi_minor, 0.3).astype(np.float32)[:, None]
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    reach = (rho < 1.0 + 0.5 * edge_px / b) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
    which, _ = np.nonzero(reach)
    u, v, rho, px, py = u[reach], v[reach], rho[reach], px[reach], py[reach]
    a, b = a[which, 0], b[which, 0]
    value = np.clip((1.0 - rho) * b / np.float32(edge_px) + 0.5, 0.0, 1.0)
    value *= e.intensity[which]
    if r > _MIN_DETAILED_RADIUS:
        fill = e.fill[which]
        value *= fill + (1.0 - fill) * np.exp(-(((rho - 0.85) / np.float32(0.14)) ** 2))
        if texture_field is not None:
            value *= np.clip(1.0 + e.texture[which] * texture_field[py, px], 0.15, None)
        value += _nucleolus(e.nucleolus[which], u - 0.2 * a, v, b, edge_px)
    np.maximum.at(canvas.reshape(-1), py * width + px, value)


def _nucleolus(
    intensity: np.ndarray, du: np.ndarray, v: np.ndarray, b: np.ndarray, edge_px: float
) -> np.ndarray:
    """Nucleolus term of :func:`_stamp_group`: a disc of radius 0.22 b at offset ``du = 0``."""
    radius = np.maximum(0.22 * b, 0.6)
    return intensity * np.clip((radius - np.sqrt(du**2 + v**2)) / np.float32(edge_px) + 0.5, 0, 1)


def render_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    nuclei: Ellipses,
    chromatin_scale_px: float,
    edge_px: float = 0.8,
) -> np.ndarray:
    """Hematoxylin concentration map (H, W) float32 of ``nuclei``.

    Builds a chromatin texture field of grain ``chromatin_scale_px`` (clumped heterochromatin;
    white noise below ~1 px, where it just adds speckle) and stamps all nuclei with
    :func:`stamp_ellipses`.
    """
    canvas = np.zeros(shape, dtype=np.float32)
    texture = smooth_noise(rng, shape, max(chromatin_scale_px, 0.5))
    stamp_ellipses(canvas, nuclei, np.clip(texture, -2.5, 2.5), edge_px)
    return canvas


def make_nuclei(
    rng: np.random.Generator,
    centres: np.ndarray,
    diameter_px: float,
    size_cv: float,
    aspect: tuple[float, float],
    intensity: float,
    intensity_cv: float,
    texture: float,
    fill: tuple[float, float] = (0.8, 1.0),
    nucleolus_prob: float = 0.0,
    nucleolus_intensity: float = 0.6,
    angle: np.ndarray | None = None,
) -> Ellipses:
    """An :class:`Ellipses` set of nuclei at ``centres`` with random per-nucleus morphology.

    Args:
        rng: random source.
        centres: (N, 2) ``(x, y)`` pixel positions.
        diameter_px: mean equivalent diameter.
        size_cv: log-normal spread of the diameter (pleomorphism: ~0.05 uniform, ~0.35 bizarre).
        aspect: range of minor/major axis ratios (1 = round, 0.3 = spindle).
        intensity: mean hematoxylin concentration (darkness / hyperchromasia).
        intensity_cv: relative per-nucleus spread of the intensity.
        texture: mean chromatin texture amplitude.
        fill: range of interior-to-rim levels (low = vesicular).
        nucleolus_prob: probability that a nucleus shows a nucleolus.
        nucleolus_intensity: extra concentration of a nucleolus.
        angle: major-axis angles (radians); random when None.
    """
    n = len(centres)
    diam = diameter_px * np.exp(rng.normal(0.0, size_cv, size=n) - size_cv**2 / 2)
    ratio = rng.uniform(*aspect, size=n)
    semi_major = diam / 2 / np.sqrt(ratio)
    if angle is None:
        angle = rng.uniform(0.0, np.pi, size=n)
    has_nucleolus = rng.random(n) < nucleolus_prob
    return Ellipses(
        centres=np.asarray(centres, dtype=np.float32).reshape(-1, 2),
        semi_major=semi_major.astype(np.float32),
        semi_minor=(semi_major * ratio).astype(np.float32),
        angle=np.asarray(angle, dtype=np.float32),
        intensity=(intensity * np.exp(rng.normal(0.0, intensity_cv, size=n))).astype(np.float32),
        texture=(texture * rng.uniform(0.6, 1.4, size=n)).astype(np.float32),
        fill=rng.uniform(*fill, size=n).astype(np.float32),
        nucleolus=(has_nucleolus * nucleolus_intensity * rng.uniform(0.7, 1.3, size=n)).astype(
            np.float32
        ),
    )
