"""Datasets that are rows of an index over images held once (memory-mapped or decoded on access)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histo_lightning.utils.seeding import seed_transform


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 in [0, 1] (used when no transform is configured)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class ImageTableDataset(Dataset):
    """Sample ``i`` is image ``image_ids[i]`` of ``images`` with its label, patient, group and row id.

    Items are dicts ``{"image", "label", "patient", "group", "index"}``; ``index`` is the row of the data
    module's full table, so predictions can be mapped back to files.

    Args:
        images: an indexable image source returning ``(H, W, 3)`` uint8 arrays.
        image_ids, labels, patients, groups, row_ids: one entry per sample (integer arrays).
        transform: an albumentations transform called as ``transform(image=...)["image"]`` returning a
            tensor (end the pipeline with ``ToTensorV2``); ``None`` converts to float in [0, 1].
    """

    def __init__(
        self,
        images: Any,
        image_ids: np.ndarray,
        labels: np.ndarray,
        patients: np.ndarray,
        groups: np.ndarray,
        row_ids: np.ndarray,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        lengths = {len(image_ids), len(labels), len(patients), len(groups), len(row_ids)}
        if len(lengths) != 1:
            raise ValueError(f"all per-sample arrays must have the same length, got {lengths}")
        self.images = images
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.patients = np.asarray(patients, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.row_ids = np.asarray(row_ids, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels = self.images[int(self.image_ids[i])]
        if self.transform is not None:
            seed_transform(self.transform)  # reproducible augmentation (utils/seeding.py)
        image = (
            to_tensor(pixels) if self.transform is None else self.transform(image=pixels)["image"]
        )
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        return {
            "image": image,
            "label": int(self.labels[i]),
            "patient": int(self.patients[i]),
            "group": int(self.groups[i]),
            "index": int(self.row_ids[i]),
        }
