"""Rakhlin et al.'s views of an image (§2.3–2.4): colour augmentations × random crops, built on the device.

For each image (already halved and Macenko-normalised once, in the image cache) and each crop size:

* ``n_augmentations`` (50) colour augmentations, each scaling the H and E concentrations by ``h, e ~
  U[he_low, he_high]`` (U[0.7, 1.3]; :func:`~histo_lightning.data.stain.scale_he_batch`);
* per augmentation ``n_crops`` (20) square crops of ``crop_size`` (400 or 650 px on the 1024×768 image)
  at uniform random positions inside the image, each rotated by a random multiple of 90° and flipped
  at random (uniform over the 8 symmetries of the square, the same distribution as the authors'
  rot90 + two random flips), fed to the encoder at native size;
* the 20 crop descriptors of an augmentation pooled by Eq. 1 (:func:`~histo_lightning.nets.pooling.norm_pool`,
  p = 3) into one row: ``(n_augmentations, D)`` per image and crop size.

All random numbers are drawn up front on the CPU with NumPy's PCG64 from a ``SeedSequence`` of (``seed``,
a hash of the image key, what is drawn, the crop size): the same image gets the same views in any run, on
any machine, alone or with any other images, so an interrupted extraction can recompute any subset
identically. The colour draws depend on the image only, so augmentation ``a`` has the same (h, e) for
every crop size and encoder; the crop draws also on the crop size. Crops are gathered with one indexed
read per batch (the rotation and flip folded into the index), and colour-augmented after cropping
(the colour transform is per pixel, so this equals augmenting the whole image first), all on the
image's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from histo_lightning.data.stain import HE_MODES, scale_he_batch
from histo_lightning.errors import ConfigError
from histo_lightning.nets.pooling import norm_pool
from histo_lightning.stores.keys import digest_int

_COLOUR_TAG, _CROP_TAG = 0xC01, 0xC20
N_SYMMETRIES = 8  # rotations 0/90/180/270°, each with or without a flip


@dataclass(frozen=True)
class ViewSettings:
    """How the views of an image are drawn (everything here enters the feature cache's key).

    Attributes:
        n_augmentations: colour augmentations per image (§2.3: 50).
        n_crops: crops per augmentation and crop size (§2.3: 20).
        he_low, he_high: range of the H and E factors (§2.3: 0.7, 1.3).
        he_mode: ``concentrations`` (the paper) or ``rakhlin2018`` (the published code's bug), see
            :data:`~histo_lightning.data.stain.HE_MODES`.
        seed: the augmentation seed.
    """

    n_augmentations: int = 50
    n_crops: int = 20
    he_low: float = 0.7
    he_high: float = 1.3
    he_mode: str = "concentrations"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_augmentations < 1 or self.n_crops < 1:
            raise ConfigError(
                f"n_augmentations={self.n_augmentations} and n_crops={self.n_crops} must be >= 1"
            )
        if not 0 < self.he_low <= self.he_high:
            raise ConfigError(
                f"the H&E factor range [{self.he_low}, {self.he_high}] must satisfy 0 < low <= high"
            )
        if self.he_mode not in HE_MODES:
            raise ConfigError(f"he_mode={self.he_mode!r}: expected one of {', '.join(HE_MODES)}")

    def fingerprint(self) -> dict:
        return {"views_version": 1, **asdict(self)}


def key_number(key: str) -> int:
    """A stable 64-bit number for an image key (its file stem): the same on every machine and run."""
    return digest_int(key)


def _rng(settings: ViewSettings, key: str, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([settings.seed, key_number(key), *tags]))


def draw_colour(settings: ViewSettings, key: str) -> np.ndarray:
    """``(n_augmentations, 2)`` H and E factors of image ``key``, uniform in ``[he_low, he_high]``."""
    rng = _rng(settings, key, _COLOUR_TAG)
    return rng.uniform(settings.he_low, settings.he_high, size=(settings.n_augmentations, 2))


@dataclass(frozen=True)
class CropDraws:
    """The crops of one image and crop size, each ``(n_augmentations, n_crops)`` int64.

    ``top, left``: the crop's corner in the image; ``rot``: quarter turns (0–3, counter-clockwise as
    ``torch.rot90``); ``flip``: 1 = mirrored left-right after the rotation.
    """

    size: int
    top: np.ndarray
    left: np.ndarray
    rot: np.ndarray
    flip: np.ndarray

    @property
    def symmetry(self) -> np.ndarray:
        """The index 0–7 (``rot + 4 · flip``) of each crop's symmetry."""
        return self.rot + 4 * self.flip


def draw_crops(
    settings: ViewSettings, key: str, crop_size: int, height: int, width: int
) -> CropDraws:
    """Crop positions (uniform, inside the image), rotations and flips of image ``key`` for ``crop_size``."""
    if crop_size > min(height, width) or crop_size < 1:
        raise ConfigError(
            f"crop size {crop_size} px does not fit in image {key} of {width}×{height} px "
            f"(after rescaling)"
        )
    rng = _rng(settings, key, _CROP_TAG, int(crop_size))
    shape = (settings.n_augmentations, settings.n_crops)
    return CropDraws(
        size=int(crop_size),
        top=rng.integers(0, height - crop_size + 1, size=shape),
        left=rng.integers(0, width - crop_size + 1, size=shape),
        rot=rng.integers(0, 4, size=shape),
        flip=rng.integers(0, 2, size=shape),
    )


def symmetry_grids(size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(rows, cols)``, each ``(8, size, size)`` int64: for symmetry ``v = rot + 4·flip``, output pixel
    ``(i, j)`` of the transformed crop is pixel ``(rows[v, i, j], cols[v, i, j])`` of the crop."""
    base_rows = torch.arange(size, device=device)[:, None].expand(size, size)
    base_cols = torch.arange(size, device=device)[None, :].expand(size, size)
    rows, cols = [], []
    for flip in (0, 1):
        for rot in range(4):
            r, c = torch.rot90(base_rows, rot, (0, 1)), torch.rot90(base_cols, rot, (0, 1))
            if flip:
                r, c = r.flip(1), c.flip(1)
            rows.append(r)
            cols.append(c)
    return torch.stack(rows), torch.stack(cols)


def gather_crops(image: Tensor, top: Tensor, left: Tensor, symmetry: Tensor, size: int) -> Tensor:
    """``(B, 3, size, size)`` crops of a ``(3, H, W)`` image, each rotated/flipped, in one indexed read.

    ``top, left, symmetry`` are ``(B,)`` integer tensors (symmetry = ``rot + 4 · flip``).
    """
    channels, height, width = image.shape
    device = image.device
    rows, cols = symmetry_grids(size, device)
    top, left, symmetry = (t.to(device=device, dtype=torch.long) for t in (top, left, symmetry))
    r = rows[symmetry] + top[:, None, None]
    c = cols[symmetry] + left[:, None, None]
    flat = (r * width + c).reshape(-1)
    crops = image.reshape(channels, height * width)[:, flat]
    return crops.reshape(channels, len(top), size, size).transpose(0, 1)


def augmented_crops(
    image: Tensor,
    colour: np.ndarray,
    crops: CropDraws,
    augmentations: range,
    he_mode: str = "concentrations",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The crops of the chosen augmentations, colour-augmented: ``(len(augmentations) · n_crops, 3, S, S)``
    uint8 on the image's device, augmentation-major (crop ``k`` of augmentation ``a`` at ``a · n_crops + k``)."""
    index = np.asarray(augmentations)
    n_crops = crops.top.shape[1]

    def flat(values: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(values[index].reshape(-1)))

    batch = gather_crops(image, flat(crops.top), flat(crops.left), flat(crops.symmetry), crops.size)
    factors = torch.from_numpy(np.repeat(colour[index], n_crops, axis=0))
    return scale_he_batch(batch, factors[:, 0], factors[:, 1], mode=he_mode, dtype=dtype)


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """An ``(H, W, 3)`` uint8 array (e.g. a read-only image-cache entry, copied) as a ``(3, H, W)`` uint8
    tensor on ``device``."""
    return torch.from_numpy(np.array(image, copy=True)).to(device).permute(2, 0, 1).contiguous()


Encoder = Callable[[Tensor], Tensor]


@torch.no_grad()
def image_descriptors(
    image: Tensor,
    key: str,
    encoder: Encoder,
    settings: ViewSettings,
    crop_size: int,
    p: float = 3.0,
    crops_per_batch: int = 40,
) -> Tensor:
    """``(n_augmentations, D)`` float32 descriptors of one ``(3, H, W)`` uint8 image (§2.3–2.4).

    For each colour augmentation, its ``n_crops`` crops go through ``encoder`` (float RGB in [0, 1],
    ``(B, 3, S, S)`` → ``(B, D)``, on the image's device) and are pooled by Eq. 1 with ``p``. Whole
    augmentations are batched together, about ``crops_per_batch`` crops per encoder call.
    """
    _, height, width = image.shape
    colour = draw_colour(settings, key)
    crops = draw_crops(settings, key, crop_size, height, width)
    per_batch = max(1, crops_per_batch // settings.n_crops)
    rows = []
    for start in range(0, settings.n_augmentations, per_batch):
        chosen = range(start, min(start + per_batch, settings.n_augmentations))
        batch = augmented_crops(image, colour, crops, chosen, settings.he_mode)
        features = encoder(batch.float().div_(255.0))
        features = features.float().reshape(len(chosen), settings.n_crops, -1)
        rows.append(norm_pool(features, p, dim=1))
    return torch.cat(rows)


__all__ = [
    "N_SYMMETRIES",
    "CropDraws",
    "ViewSettings",
    "augmented_crops",
    "draw_colour",
    "draw_crops",
    "gather_crops",
    "image_descriptors",
    "image_tensor",
    "key_number",
    "symmetry_grids",
]
