"""Rakhlin et al.'s image descriptors as a LightningModule for predict stages (§2.3–2.4).

:class:`DescriptorExtractor` turns each cached image (halved and Macenko-normalised once, see
:class:`~histo_lightning.data.datasets.bach.BachDataModule`) into ``(n_augmentations, D)`` descriptors for one crop
size, entirely on the module's device:

1. draw the image's 50 colour augmentations (H and E factors from U[0.7, 1.3]) and, per augmentation, 20
   square crops with a random rotation by a multiple of 90° and a random flip (seeded by the image key, so
   any subset of images on any device gives the same numbers; :mod:`histo_lightning.methods.rakhlin.multicrop`);
2. cut the crops with one indexed read and colour-augment them (Ruifrok H&E decomposition, Io = 240;
   ``he_mode=rakhlin2018`` reproduces the authors' 2018 code, see
   :data:`~histo_lightning.data.stain.HE_MODES`), always in float32, outside any autocast;
3. run the frozen encoder (the ``encoder`` group: ResNet-50 / Inception-v3 global average pool, VGG-16
   blocks 2–5 = 1408 values, or any timm / foundation model) on the crops at their native size, in bf16
   and channels-last on GPU;
4. pool the 20 crop descriptors of every augmentation with Eq. 1 (``p = 3``).

A predict stage (``output.shared: true``) stores the ``(N, n_augmentations, D)`` result in a feature cache
keyed by :meth:`DescriptorExtractor.fingerprint`: the encoder's fingerprint (timm name, weights digest,
what it takes, normalisation, precision), the view settings (counts, H&E range, mode, augmentation seed),
the crop size, ``p`` and the image cache's preprocess key, plus (added by the stage) the dataset and its
sample manifest. Every fold and run with the same settings reuses it; anything else gets its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from histo_lightning.data.datasets.bach import preprocess_from_settings
from histo_lightning.errors import ConfigError
from histo_lightning.methods.rakhlin.multicrop import ViewSettings, image_descriptors
from histo_lightning.nets.encoders import FrozenEncoder

#: bump when the code that computes descriptors changes their numbers (it enters the fingerprint)
DESCRIPTOR_VERSION = 1


class DescriptorExtractor(pl.LightningModule):
    """Frozen-encoder descriptors of colour-augmented random crops, p-norm pooled (module docstring).

    Args:
        encoder: a :class:`~histo_lightning.nets.encoders.FrozenEncoder` (the ``encoder`` group).
        crop_size: crop side in pixels of the cached (rescaled) image (§2.3: 400 and 650 at half scale).
        views: :class:`~histo_lightning.methods.rakhlin.multicrop.ViewSettings` fields (50 augmentations, 20 crops,
            H&E range, ``he_mode``, augmentation ``seed``).
        p: the exponent of Eq. 1 (3; 1 = mean, large = max).
        preprocess: the image cache's preprocess settings (``${dataset.preprocess}``); their key enters
            the fingerprint, and every batch is checked against it.
        crops_per_batch: crops per encoder call (whole augmentations are batched together); speed only.
        name: the model's name in reports (``resnet50_400``).
    """

    def __init__(
        self,
        encoder: FrozenEncoder,
        crop_size: int,
        views: Mapping[str, Any] | None = None,
        p: float = 3.0,
        preprocess: Mapping[str, Any] | None = None,
        crops_per_batch: int = 100,
        name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(encoder, FrozenEncoder):
            raise ConfigError(
                f"the descriptor module's encoder must come from the encoder group "
                f"(histo_lightning.nets.encoders.build_encoder), got {type(encoder).__name__}"
            )
        if int(crop_size) < 1:
            raise ConfigError(f"crop_size={crop_size} must be a positive number of pixels")
        if not float(p) > 0:
            raise ConfigError(f"p={p}: the exponent of Eq. 1 must be positive")
        try:
            self.views = ViewSettings(**dict(views or {}))
        except TypeError as err:
            raise ConfigError(f"views: {err}") from None
        self.encoder = encoder
        self.crop_size = int(crop_size)
        self.p = float(p)
        self.preprocess_key = preprocess_from_settings(preprocess).key()
        self.crops_per_batch = max(1, int(crops_per_batch))
        self.name = name or f"{encoder.name}_{self.crop_size}"

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the descriptors (the feature cache's producer key)."""
        return {
            "method": "rakhlin2018-descriptors",
            "version": DESCRIPTOR_VERSION,
            "encoder": self.encoder.fingerprint(),
            "views": self.views.fingerprint(),
            "crop_size": self.crop_size,
            "p": self.p,
            "preprocess": self.preprocess_key,
        }

    def feature_shape(self) -> tuple[int, int]:
        """The shape of one image's output: ``(n_augmentations, D)`` (the predict stage needs no probe)."""
        return (self.views.n_augmentations, int(self.encoder.dim))

    def forward(self, image: Tensor, key: str) -> Tensor:
        """``(n_augmentations, D)`` float32 descriptors of one ``(3, H, W)`` uint8 image on this device."""
        # the colour augmentation and pooling in float32 whatever the trainer's precision; the encoder
        # switches to bf16 autocast itself on GPU
        with torch.autocast(device_type=image.device.type, enabled=False):
            return image_descriptors(
                image,
                key,
                self.encoder,
                self.views,
                self.crop_size,
                self.p,
                self.crops_per_batch,
            )

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``{"index": (B,), "features": (B, n_augmentations, D)}`` for a batch of cached images."""
        stale = [k for k in batch["preprocess"] if k != self.preprocess_key]
        if stale:
            raise ConfigError(
                f"the images were preprocessed with {stale[0]} but the descriptor module was configured "
                f"for {self.preprocess_key}: its preprocess must be ${{dataset.preprocess}}"
            )
        images = batch["image"]  # (B, H, W, 3) uint8 on this device
        rows = [
            self(images[b].permute(2, 0, 1).contiguous(), str(key))
            for b, key in enumerate(batch["key"])
        ]
        return {"index": batch["index"], "features": torch.stack(rows)}

    def configure_optimizers(self) -> None:
        return None


__all__ = ["DESCRIPTOR_VERSION", "DescriptorExtractor"]
