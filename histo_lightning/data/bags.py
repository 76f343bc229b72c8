"""Torch datasets of bags and the collate that batches bags of several sizes.

A bag is a list of global instance indices (``members``) into an instance array held once: the pixel
instances of an :class:`~histo_lightning.stores.instance_store.InstanceStore` / ``BagArrays``, or a feature
matrix ``N × D`` (e.g. the feature cache's memmap, rows aligned with the store's instances). A dataset
bag is usually one image's contiguous range (``Bags.all_members()``), but generated hard-negative bags
(:mod:`histo_lightning.methods.li_mil.bag_generation`) gather instances of several images, so both datasets take
arbitrary member lists.

Items are dicts::

    instances        (n, C, H, W) float32 in [0, 1]   or (n, D) float32 for features
    label            int, the bag label
    instance_labels  (n,) int64, 1 key / 0 ordinary / -1 unknown
    coords           (n, 2) int64, (x, y) centre pixel of each instance in its image
    members          (n,) int64, the global instance indices
    index            int, position of the bag in this dataset (the row of its sample manifest)

:func:`collate_bags` pads the bags of a batch to the largest with a ``mask`` (True = real instance):
``instances (B, n_max, ...)``, ``mask (B, n_max)``, ``instance_labels`` padded with -1, ``coords`` and
``members`` padded with 0 (``members`` with -1), ``label (B,)``, ``index (B,)``, ``size (B,)``. The MIL
pooling in :mod:`histo_lightning.nets.mil` gives padding zero attention, so a padded batch gives the
same outputs as its bags one at a time (``batch_size`` is a config value; the papers use 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from histo_lightning.stores.instance_store import Bags


def random_dihedral(instances: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each ``(C, H, W)`` instance of ``(n, C, H, W)`` flipped and rotated by one of the 8 symmetries
    of the square, drawn independently (Li et al. §4.0.1: "patches are randomly flipped and rotated").

    Square instances only (a 90° rotation must keep the shape).
    """
    if instances.shape[-1] != instances.shape[-2]:
        raise ValueError(f"random_dihedral needs square instances, got {tuple(instances.shape)}")
    n = instances.shape[0]
    k = torch.randint(0, 8, (n,), generator=generator)
    out = instances.clone()
    for g in range(1, 8):
        chosen = torch.nonzero(k == g).flatten()
        if len(chosen) == 0:
            continue
        x = torch.rot90(instances[chosen], g % 4, dims=(-2, -1))
        out[chosen] = torch.flip(x, dims=(-1,)) if g >= 4 else x
    return out


def _contiguous(members: np.ndarray) -> bool:
    return (
        len(members) > 0
        and members[-1] - members[0] + 1 == len(members)
        and bool(np.all(np.diff(members) == 1))
    )


def _gather(array: Any, members: np.ndarray) -> np.ndarray:
    """``array[members]`` as a new writable array (read as one slice when contiguous, so a memmap is
    read sequentially)."""
    if _contiguous(members):
        return np.array(array[int(members[0]) : int(members[-1]) + 1])
    order = np.argsort(members, kind="stable")
    rows = np.asarray(array[members[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return out


class BagDataset(Dataset):
    """Bags given by member lists over instance-level arrays (see the module docstring).

    ``pad_to``: :meth:`collate_fn` pads every batch to at least this many instances (predict datasets
    set it to their largest bag, so every bag's per-instance outputs have the same width).
    """

    def __init__(
        self,
        members: Sequence[np.ndarray],
        labels: Sequence[int],
        instance_labels: np.ndarray | None = None,
        coords: np.ndarray | None = None,
        pad_to: int | None = None,
    ) -> None:
        if len(members) != len(labels):
            raise ValueError(f"{len(members)} member lists for {len(labels)} bag labels")
        self.members = [np.asarray(m, dtype=np.int64) for m in members]
        if any(len(m) == 0 for m in self.members):
            raise ValueError("every bag needs at least one instance")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.instance_labels = instance_labels
        self.coords = coords
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.members)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)

    def collate_fn(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """:func:`collate_bags` with this dataset's ``pad_to`` (DataLoaders and predict stages use it)."""
        return collate_bags(items, self.pad_to)

    def _instances(self, members: np.ndarray) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        members = self.members[i]
        n = len(members)
        instance_labels = (
            np.full(n, -1) if self.instance_labels is None else self.instance_labels[members]
        )
        coords = np.zeros((n, 2)) if self.coords is None else self.coords[members]
        return {
            "instances": self._instances(members),
            "label": int(self.labels[i]),
            "instance_labels": torch.as_tensor(np.asarray(instance_labels), dtype=torch.long),
            "coords": torch.as_tensor(np.asarray(coords), dtype=torch.long),
            "members": torch.from_numpy(members),
            "index": i,
        }


class InstanceBagDataset(BagDataset):
    """Bags of pixel instances from an ``(N, H, W, C)`` uint8 array (memmap or in memory).

    Args:
        instances: the instance array (e.g. ``store.instances``).
        members, labels, instance_labels, coords: see :class:`BagDataset`.
        augment: random flips and 90° rotations per instance (training).
    """

    def __init__(
        self,
        instances: Any,
        members: Sequence[np.ndarray],
        labels: Sequence[int],
        instance_labels: np.ndarray | None = None,
        coords: np.ndarray | None = None,
        augment: bool = False,
        pad_to: int | None = None,
    ) -> None:
        super().__init__(members, labels, instance_labels, coords, pad_to)
        self.instances = instances
        self.augment = augment

    @classmethod
    def from_bags(
        cls, bags: Bags, bag_ids: Sequence[int] | None = None, augment: bool = False
    ) -> InstanceBagDataset:
        """The bags ``bag_ids`` (all by default) of a store, in that order."""
        ids = range(len(bags)) if bag_ids is None else bag_ids
        return cls(
            bags.instances,
            [bags.members(int(b)) for b in ids],
            [int(bags.labels[int(b)]) for b in ids],
            bags.instance_labels,
            bags.coords,
            augment,
        )

    def _instances(self, members: np.ndarray) -> Tensor:
        pixels = torch.from_numpy(_gather(self.instances, members))
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        return random_dihedral(x) if self.augment else x.contiguous()


class FeatureBagDataset(BagDataset):
    """Bags of precomputed feature vectors: rows of an ``(N, D)`` matrix (float16/32, memmap ok).

    With an identity instance encoder the same MIL model trains on these instead of pixels (the way
    attention MIL is used on whole slides).
    """

    def __init__(
        self,
        features: Any,
        members: Sequence[np.ndarray],
        labels: Sequence[int],
        instance_labels: np.ndarray | None = None,
        coords: np.ndarray | None = None,
        pad_to: int | None = None,
    ) -> None:
        if np.ndim(features) != 2:
            raise ValueError(f"features must be an (N, D) matrix, got shape {np.shape(features)}")
        super().__init__(members, labels, instance_labels, coords, pad_to)
        self.features = features

    @classmethod
    def from_bags(
        cls, features: Any, bags: Bags, bag_ids: Sequence[int] | None = None
    ) -> FeatureBagDataset:
        """The bags ``bag_ids`` of a store over ``features`` (one row per instance of the store)."""
        if len(features) != bags.n_instances:
            raise ValueError(
                f"{len(features)} feature rows for {bags.n_instances} instances of the bags"
            )
        ids = range(len(bags)) if bag_ids is None else bag_ids
        return cls(
            features,
            [bags.members(int(b)) for b in ids],
            [int(bags.labels[int(b)]) for b in ids],
            bags.instance_labels,
            bags.coords,
        )

    @classmethod
    def from_offsets(
        cls,
        features: Any,
        offsets: Sequence[int],
        labels: Sequence[int],
        instance_labels: np.ndarray | None = None,
    ) -> FeatureBagDataset:
        """Bag ``b`` = rows ``offsets[b]:offsets[b+1]`` of ``features`` (``len(offsets) = bags + 1``)."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != len(features):
            raise ValueError(
                f"offsets must run from 0 to {len(features)} feature rows with one more entry than "
                f"the {len(labels)} bags"
            )
        members = [np.arange(a, b) for a, b in pairwise(offsets)]
        return cls(features, members, labels, instance_labels)

    def _instances(self, members: np.ndarray) -> Tensor:
        return torch.from_numpy(_gather(self.features, members).astype(np.float32, copy=False))


class InstanceDataset(Dataset):
    """Single instances of an ``(N, H, W, C)`` uint8 array, e.g. every instance of a dataset through a
    frozen encoder into the feature cache (FMB's features, feature bags).

    Items: ``{"index": i, "image": (C, H, W) float32 in [0, 1], "label": instance label}`` with the
    instances' own channels, as the bags give them to the MIL network (one for digits and MNIST: the MIL
    network's LeNet embeds them, ``method.hnm.cluster_features=mil``; an RGB encoder repeats them,
    :class:`~histo_lightning.methods.li_mil.module.EncoderFeatures`). Over an ``(N, D)`` feature matrix (a
    view that uses feature bags), ``image`` is the instance's feature row (float32).
    """

    def __init__(
        self, instances: Any, labels: np.ndarray | None = None, rows: np.ndarray | None = None
    ) -> None:
        self.instances = instances
        self.rows = np.arange(len(instances)) if rows is None else np.asarray(rows, np.int64)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        label = -1 if self.labels is None else int(self.labels[row])
        if np.ndim(self.instances) == 2:  # feature rows
            vector = torch.from_numpy(np.asarray(self.instances[row], dtype=np.float32))
            return {"index": i, "image": vector, "label": label}
        pixels = torch.from_numpy(np.array(self.instances[row])).permute(2, 0, 1).float() / 255.0
        return {"index": i, "image": pixels, "label": label}


def collate_bags(items: Sequence[dict[str, Any]], pad_to: int | None = None) -> dict[str, Tensor]:
    """Pad a list of bag items to the largest bag (at least ``pad_to``) with a mask (module docstring)."""
    sizes = torch.tensor([len(item["instances"]) for item in items], dtype=torch.long)
    n_max = max(int(sizes.max()), int(pad_to or 0))
    batch = len(items)
    first = items[0]["instances"]
    instances = first.new_zeros((batch, n_max, *first.shape[1:]))
    mask = torch.zeros((batch, n_max), dtype=torch.bool)
    instance_labels = torch.full((batch, n_max), -1, dtype=torch.long)
    coords = torch.zeros((batch, n_max, 2), dtype=torch.long)
    members = torch.full((batch, n_max), -1, dtype=torch.long)
    for b, item in enumerate(items):
        n = int(sizes[b])
        instances[b, :n] = item["instances"]
        mask[b, :n] = True
        instance_labels[b, :n] = item["instance_labels"]
        coords[b, :n] = item["coords"]
        members[b, :n] = item["members"]
    return {
        "instances": instances,
        "mask": mask,
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "instance_labels": instance_labels,
        "coords": coords,
        "members": members,
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "size": sizes,
    }


__all__ = [
    "BagDataset",
    "FeatureBagDataset",
    "InstanceBagDataset",
    "InstanceDataset",
    "collate_bags",
    "random_dihedral",
]
