"""Macenko stain normalisation (Macenko et al. 2009), batched in torch; CHS-Net §4.2.1 applies it first.

For each image: optical density ``OD = -ln((I + 1) / Io)``; pixels with OD ≥ ``beta`` in every channel
are tissue; the plane of the two largest eigenvectors of their OD covariance holds the stains; the
``alpha``-th and ``(100 - alpha)``-th percentiles of the angles of the tissue ODs in that plane give the
hematoxylin and eosin vectors (hematoxylin is the one with the larger red OD). Concentrations are the
least-squares solution ``C = HE⁺ · OD`` (every pixel), rescaled so that their 99th percentiles match the
target's, and the image is re-rendered with the target stain matrix: ``I = Io · exp(-HE_target · C)``.

The target is fixed: by default Macenko's reference H&E matrix and maximum concentrations (the values of
the original implementation), or those fitted on one reference image (:meth:`MacenkoNormalizer.from_image`).
The eigen-decomposition and percentiles run on at most ``max_pixels`` evenly strided tissue pixels per
image (the estimate is the same to a few 1e-3 and 2000×2000 HPFs stay fast); the concentrations and the
re-rendering are computed for every pixel of the batch at once. An image with fewer than ``min_tissue``
tissue pixels (blank or almost blank) is returned unchanged, and :meth:`estimate` says so.

:meth:`MacenkoNormalizer.key` names everything that determines the output (version, parameters, target),
for cache keys (:class:`~histo_lightning.stores.image_store.MemmapImageCache` ``preprocess_key``).

H&E colour augmentation (Rakhlin et al. §2.3, after Ruifrok & Johnston 2001): :func:`scale_he` decomposes
an RGB image into hematoxylin, eosin and residual optical densities with Ruifrok's matrix, multiplies the
H and E concentrations by two factors and recomposes it; :func:`scale_he_batch` is the same maths in torch
for batches of crops on the device that runs the encoder; :func:`he_concentrations` is the decomposition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from histo_lightning.errors import ConfigError
from histo_lightning.stores.keys import digest
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

NORMALIZER_VERSION = 1
# Macenko's reference stain matrix (columns: hematoxylin, eosin OD vectors) and 99th-percentile
# concentrations, as in the original implementation.
REFERENCE_STAIN_MATRIX = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
REFERENCE_MAX_CONCENTRATIONS = (1.9705, 1.0308)


@dataclass(frozen=True)
class StainEstimate:
    """Per image of a batch: stain matrix ``(B, 3, 2)``, 99th-percentile concentrations ``(B, 2)``, found."""

    stain_matrix: Tensor
    max_concentrations: Tensor
    ok: Tensor


class MacenkoNormalizer:
    """Normalise H&E images to a fixed target stain (see the module docstring).

    Args:
        stain_matrix: target ``(3, 2)`` OD matrix (columns H, E); default Macenko's reference.
        max_concentrations: target 99th-percentile concentrations of H and E.
        io: transmitted light intensity (Macenko: 240).
        alpha: angle percentile (Macenko: 1).
        beta: OD threshold for tissue (Macenko: 0.15).
        max_pixels: tissue pixels used for the stain estimate per image.
        min_tissue: fewer tissue pixels than this leaves the image unchanged.
    """

    def __init__(
        self,
        stain_matrix: tuple | Tensor | None = None,
        max_concentrations: tuple | Tensor | None = None,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        max_pixels: int = 250_000,
        min_tissue: int = 500,
    ) -> None:
        self.target_stain = torch.as_tensor(
            REFERENCE_STAIN_MATRIX if stain_matrix is None else stain_matrix, dtype=torch.float64
        )
        self.target_max = torch.as_tensor(
            REFERENCE_MAX_CONCENTRATIONS if max_concentrations is None else max_concentrations,
            dtype=torch.float64,
        )
        if self.target_stain.shape != (3, 2) or self.target_max.shape != (2,):
            raise ValueError("the target stain matrix must be (3, 2) and its concentrations (2,)")
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)
        self.max_pixels, self.min_tissue = int(max_pixels), int(min_tissue)

    @classmethod
    def from_image(cls, image: np.ndarray | str | Path, **kwargs) -> MacenkoNormalizer:
        """A normaliser whose target is fitted on one reference image (array or file)."""
        if not isinstance(image, np.ndarray):
            from histo_lightning.stores.image_store import read_rgb

            path = Path(image)
            if not path.is_file():
                raise ConfigError(
                    f"stain target image {path} does not exist (dataset.stain_target)"
                )
            image = read_rgb(path)
        probe = cls(**kwargs)
        estimate = probe.estimate(torch.from_numpy(np.ascontiguousarray(image))[None])
        if not bool(estimate.ok[0]):
            raise ConfigError(
                "the stain target image holds too little tissue to fit a stain matrix"
            )
        return cls(estimate.stain_matrix[0], estimate.max_concentrations[0], **kwargs)

    def key(self) -> str:
        """Everything that determines the output, as a short string for cache keys."""
        settings = {
            "version": NORMALIZER_VERSION,
            "stain": [round(v, 6) for v in self.target_stain.flatten().tolist()],
            "max": [round(v, 6) for v in self.target_max.tolist()],
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "max_pixels": self.max_pixels,
            "min_tissue": self.min_tissue,
        }
        return f"macenko-v{NORMALIZER_VERSION}-{digest(settings, 12)}"

    def _optical_density(self, images: Tensor) -> Tensor:
        """``(B, H, W, 3)`` uint8 → ``(B, H·W, 3)`` float64 optical density."""
        x = images.reshape(images.shape[0], -1, 3).to(torch.float64)
        return -torch.log((x + 1.0) / self.io)

    @staticmethod
    def _strided(n: int, limit: int) -> Tensor:
        return torch.linspace(0, n - 1, min(n, limit)).round().long()

    def estimate(self, images: Tensor) -> StainEstimate:
        """Stain matrix and 99th-percentile concentrations of each ``(B, H, W, 3)`` uint8 image."""
        od = self._optical_density(images)
        batch = od.shape[0]
        stains = self.target_stain.expand(batch, 3, 2).clone()
        maxima = self.target_max.expand(batch, 2).clone()
        ok = torch.zeros(batch, dtype=torch.bool)
        for b in range(batch):
            tissue = od[b][(od[b] >= self.beta).all(dim=1)]
            if len(tissue) < self.min_tissue:
                continue
            tissue = tissue[self._strided(len(tissue), self.max_pixels)]
            _, vectors = torch.linalg.eigh(torch.cov(tissue.T))
            plane = vectors[:, 1:3]
            plane = plane * torch.where(plane.sum(dim=0) < 0, -1.0, 1.0)
            projected = tissue @ plane
            angles = torch.atan2(projected[:, 1], projected[:, 0])
            low, high = torch.quantile(
                angles, torch.tensor([self.alpha / 100, 1 - self.alpha / 100], dtype=angles.dtype)
            )
            v_low = plane @ torch.stack([torch.cos(low), torch.sin(low)])
            v_high = plane @ torch.stack([torch.cos(high), torch.sin(high)])
            he = torch.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low], dim=1)
            he = he * torch.where(he.sum(dim=0) < 0, -1.0, 1.0)
            he = he / he.norm(dim=0, keepdim=True)
            concentrations = (
                torch.linalg.pinv(he) @ od[b][self._strided(od.shape[1], 4 * self.max_pixels)].T
            )
            stains[b] = he
            maxima[b] = torch.quantile(concentrations, 0.99, dim=1)
            ok[b] = bool((maxima[b] > 1e-6).all())
        return StainEstimate(stains, maxima, ok)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, H, W, 3)`` uint8 → the same images rendered with the target stain (uint8)."""
        return self.normalize_with_status(images)[0]

    def normalize_with_status(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`normalize`, and ``(B,)`` bools: False where an image was left unchanged (no tissue)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected (B, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}"
            )
        estimate = self.estimate(images)
        od = self._optical_density(images)
        concentrations = torch.linalg.pinv(estimate.stain_matrix) @ od.transpose(1, 2)  # (B, 2, HW)
        concentrations *= (self.target_max / estimate.max_concentrations)[..., None]
        rendered = self.io * torch.exp(-(self.target_stain @ concentrations))  # (B, 3, HW)
        out = rendered.transpose(1, 2).reshape(images.shape).clamp_(0, 255).round_().to(torch.uint8)
        unchanged = ~estimate.ok
        if unchanged.any():
            out[unchanged] = images[unchanged]
        return out, estimate.ok

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 array (the image cache's ``preprocess``); unchanged if it holds no tissue."""
        out, ok = self.normalize_with_status(torch.from_numpy(np.ascontiguousarray(image))[None])
        if not bool(ok[0]):
            log.warning("Macenko: too little tissue to estimate the stain; image left unnormalised")
        return out[0].numpy()


def build_normalizer(method: str, target: str | None = None) -> MacenkoNormalizer | None:
    """The normaliser named by ``dataset.stain_normalization`` (``macenko`` or ``none``)."""
    if method == "none":
        return None
    if method != "macenko":
        raise ConfigError(f"dataset.stain_normalization={method!r}: expected 'macenko' or 'none'")
    return MacenkoNormalizer() if target is None else MacenkoNormalizer.from_image(target)


# ---- H&E colour augmentation (Rakhlin et al. §2.3; Ruifrok & Johnston 2001) ---------------------------------

# Rows: optical densities (R, G, B) of hematoxylin, eosin and the third vector of Ruifrok's H-E-DAB matrix,
# which on H&E slides holds what the two stains do not explain (the residual). These are the values of
# Rakhlin et al.'s code (Ruifrok's unit vectors rounded to two decimals); concentrations are ``OD · M⁻¹``
# with the exact inverse (their code used the inverse rounded to two decimals, so that their h = e = 1 was
# not an exact identity).
RUIFROK_STAIN_MATRIX = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RUIFROK_IO = 240.0
# ``concentrations``: scale the H and E concentrations (the paper's §2.3, the authors' code since 2020).
# ``rakhlin2018``: the published results' code, which multiplied the recomposed optical densities of the
# red and green channels by h and e (``(C·M) * (h, e, 1)`` instead of ``(C * (h, e, 1))·M``), i.e. an
# RGB optical-density jitter that shifts hue along red/green rather than the amount of each stain.
HE_MODES = ("concentrations", "rakhlin2018")
_RUIFROK_INVERSE = np.linalg.inv(RUIFROK_STAIN_MATRIX)


def _check_he_mode(mode: str) -> None:
    if mode not in HE_MODES:
        raise ConfigError(f"H&E augmentation mode {mode!r}: expected one of {', '.join(HE_MODES)}")


def he_concentrations(image: np.ndarray, io: float = RUIFROK_IO) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(H, W, 3)`` float64 concentrations of H, E and the residual.

    ``OD = -log10((I + 1) / Io)`` per channel (the ``+ 1`` keeps black pixels finite), ``C = OD · M⁻¹``
    with ``M`` = :data:`RUIFROK_STAIN_MATRIX`.
    """
    od = -np.log10((np.asarray(image, dtype=np.float64) + 1.0) / io)
    return od @ _RUIFROK_INVERSE


def scale_he(
    image: np.ndarray, h: float, e: float, mode: str = "concentrations", io: float = RUIFROK_IO
) -> np.ndarray:
    """Rakhlin et al.'s colour augmentation of one ``(H, W, 3)`` uint8 RGB image (§2.3).

    Decomposes the image into H, E and residual concentrations (:func:`he_concentrations`), multiplies
    H by ``h`` and E by ``e`` (residual unchanged), recomposes ``OD' = C' · M`` and
    ``I' = Io · 10^(-OD') - 1``, rounded and clipped to uint8. With ``h = e = 1`` it returns the image
    exactly. ``mode="rakhlin2018"`` reproduces the code behind the paper's published numbers, which
    scaled the red and green optical densities instead (see :data:`HE_MODES`).

    The authors' code truncated to uint8 where this rounds (their output is on average half a grey level
    darker) and used a two-decimal inverse of ``M``.
    """
    _check_he_mode(mode)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    od = -np.log10((image.astype(np.float64) + 1.0) / io)
    od = od @ _he_transform(float(h), float(e), mode)
    rgb = io * np.exp(-np.log(10.0) * od) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _he_transform(h: float, e: float, mode: str) -> np.ndarray:
    """The 3×3 matrix ``T`` with ``OD' = OD · T`` (row vectors) of :func:`scale_he`.

    ``concentrations``: ``C = OD · M⁻¹``, ``C' = C · diag(h, e, 1)``, ``OD' = C' · M``, so
    ``T = M⁻¹ · diag(h, e, 1) · M``. ``rakhlin2018``: ``OD' = (C · M) · diag(h, e, 1) = OD · diag(h, e, 1)``.
    """
    factors = np.array([h, e, 1.0], dtype=np.float64)
    if mode == "concentrations":
        return _RUIFROK_INVERSE @ (factors[:, None] * RUIFROK_STAIN_MATRIX)
    return np.diag(factors)


def scale_he_batch(
    images: Tensor,
    h: Tensor,
    e: Tensor,
    mode: str = "concentrations",
    io: float = RUIFROK_IO,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`scale_he` for a batch ``(B, 3, H, W)`` uint8 (channels first) with per-image ``h, e`` ``(B,)``.

    Runs on the images' device in ``dtype``; in float64 it equals :func:`scale_he` exactly, in float32 a
    pixel can differ by one grey level where the exact value lies within float32 error of a rounding edge.
    Returns ``(B, 3, H, W)`` uint8.
    """
    _check_he_mode(mode)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected (B, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}"
        )
    batch = images.shape[0]
    device = images.device
    ones = torch.ones(batch, dtype=dtype, device=device)
    factors = torch.stack([h.to(device, dtype), e.to(device, dtype), ones], dim=1)  # (B, 3)
    stains = torch.as_tensor(RUIFROK_STAIN_MATRIX, dtype=dtype, device=device)
    inverse = torch.as_tensor(_RUIFROK_INVERSE, dtype=dtype, device=device)
    if mode == "concentrations":  # one 3×3 matrix per image, as _he_transform
        transform = inverse[None] @ (factors[:, :, None] * stains[None])  # (B, 3, 3)
    else:
        transform = torch.diag_embed(factors)
    # OD = -log10((I + 1) / Io) per channel; OD' = OD · T per pixel; I' = Io · 10^(-OD') - 1
    od = images.to(dtype).add_(1.0).div_(io).log10_().neg_().reshape(batch, 3, -1)
    od = transform.transpose(1, 2) @ od
    rgb = od.mul_(-math.log(10.0)).exp_().mul_(io).sub_(1.0).reshape(images.shape)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


__all__ = [
    "HE_MODES",
    "NORMALIZER_VERSION",
    "REFERENCE_MAX_CONCENTRATIONS",
    "REFERENCE_STAIN_MATRIX",
    "RUIFROK_IO",
    "RUIFROK_STAIN_MATRIX",
    "MacenkoNormalizer",
    "StainEstimate",
    "build_normalizer",
    "he_concentrations",
    "scale_he",
    "scale_he_batch",
]
