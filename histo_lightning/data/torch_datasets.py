"""Every torch Dataset of histo-lightning: rows of an index over images held once, never files per sample.

* :class:`ImageTableDataset`: labelled images (or slide patches) of a table, one image source behind them;
* :class:`PatchDataset`: patches cut on the fly from memory-mapped images (TUPAC16 HPFs) at index rows
  ``(hpf, cy, cx, angle, label)``;
* :class:`HpfDataset`: whole images with their annotated points (detection on HPFs);
* :class:`PairedDataset`: any image-label dataset served as pairs or triplets (SMSE Algorithms 1–2).

Items are dicts; ``"index"`` says which row of the data module's table (or of the manifest) an item is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from histo_lightning.data.sampling.pairing import check_mode
from histo_lightning.data.sampling.patching import extract_patch


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


class PatchDataset(Dataset):
    """Rows ``rows`` of a patch index, cut from an image cache: ``{"image" (3, S, S) uint8, "label", "index"}``.

    Args:
        images: the images (``images[hpf]`` is ``(H, W, 3)`` uint8), e.g. a memory-mapped cache.
        index: the patch index, columns ``hpf, cy, cx, angle, label`` (patch centre, rotation in degrees).
        rows: the index rows served, in order.
        ids: the ``"index"`` of each item (default: its index row; a predict dataset numbers its items).
        size: the patch side in pixels.
    """

    def __init__(
        self,
        images: Any,
        index: pd.DataFrame,
        rows: np.ndarray,
        ids: np.ndarray | None = None,
        size: int = 128,
    ) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.ids = self.rows if ids is None else np.asarray(ids, dtype=np.int64)
        if len(self.ids) != len(self.rows):
            raise ValueError(f"{len(self.ids)} ids for {len(self.rows)} rows")
        self.hpf = index["hpf"].to_numpy()
        self.cy = index["cy"].to_numpy()
        self.cx = index["cx"].to_numpy()
        self.angle = index["angle"].to_numpy()
        self.label = index["label"].to_numpy()
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        patch = extract_patch(
            self.images[int(self.hpf[r])],
            float(self.cy[r]),
            float(self.cx[r]),
            float(self.angle[r]),
            self.size,
        )
        image = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)
        return {"image": image, "label": int(self.label[r]), "index": int(self.ids[i])}


class HpfDataset(Dataset):
    """Whole images: ``{"image" (3, H, W) uint8, "points" (K, 2) float, "hpf", "labelled"}``.

    ``points`` maps an image id to its annotated ``(row, col)`` points (None: an unlabelled set).
    """

    def __init__(
        self, images: Any, hpf_ids: np.ndarray, points: Mapping[int, np.ndarray] | None
    ) -> None:
        self.images = images
        self.hpf_ids = np.asarray(hpf_ids, dtype=np.int64)
        self.points = points

    def __len__(self) -> int:
        return len(self.hpf_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        hpf = int(self.hpf_ids[i])
        image = torch.from_numpy(np.ascontiguousarray(self.images[hpf])).permute(2, 0, 1)
        points = (
            self.points.get(hpf, np.zeros((0, 2))) if self.points is not None else np.zeros((0, 2))
        )
        return {
            "image": image,
            "points": torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2),
            "hpf": hpf,
            "labelled": self.points is not None,
        }


def first_item(items: list[dict]) -> dict:
    """Collate for one image per batch (images differ in size): the item itself."""
    return items[0]


class PairedDataset(Dataset):
    """An image-label dataset served as pairs or triplets.

    ``dataset[i]`` must return a dict with ``"image"`` and ``"label"`` (e.g.
    :class:`~histo_lightning.data.torch_datasets.ImageTableDataset`). An index is either a row from
    :class:`~histo_lightning.data.sampling.pairing.PairingSampler` (training) or an int ``i`` that looks up the fixed row of anchor ``i``
    (validation/test, ``fixed`` from :func:`~histo_lightning.data.sampling.pairing.fixed_tuples`).

    Items are the anchor's dict plus ``positive``, ``negative`` (images) and ``positive_label``,
    ``negative_label`` for triplets, or ``partner``, ``partner_label`` and ``same`` (s) for pairs.
    """

    def __init__(self, dataset: Any, mode: str, fixed: np.ndarray | None = None) -> None:
        check_mode(mode)
        if fixed is not None and len(fixed) != len(dataset):
            raise ValueError(f"fixed holds {len(fixed)} rows for a dataset of {len(dataset)}")
        self.dataset = dataset
        self.mode = mode
        self.fixed = fixed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | Sequence[int]) -> dict[str, Any]:
        if isinstance(key, (int, np.integer)):
            if self.fixed is None:
                raise TypeError(
                    "a PairedDataset without fixed partners is indexed by (anchor, ·, ·) rows "
                    "from a PairingSampler"
                )
            key = self.fixed[int(key)]
        anchor, second, third = (int(v) for v in key)
        item = dict(self.dataset[anchor])
        partner = self.dataset[second]
        if self.mode == "triplet":
            negative = self.dataset[third]
            item.update(
                positive=partner["image"],
                positive_label=partner["label"],
                negative=negative["image"],
                negative_label=negative["label"],
            )
        else:
            item.update(partner=partner["image"], partner_label=partner["label"], same=third)
        return item


__all__ = [
    "HpfDataset",
    "ImageTableDataset",
    "PairedDataset",
    "PatchDataset",
    "first_item",
    "to_tensor",
]
