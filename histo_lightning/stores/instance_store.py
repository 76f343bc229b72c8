"""Bags of instances held once: every instance of a dataset in ONE ``uint8`` array plus per-bag offsets.

A multiple-instance dataset (Colon: one bag of 27×27 nucleus patches per image; UCSB: one bag of 32×32
grid patches per image; digits/MNIST bags) is a table of bags over a flat instance array:

* ``instances``: ``(N, H, W, C)`` uint8, the instances of bag ``b`` are rows ``offsets[b]:offsets[b+1]``;
* ``instance_labels``: ``(N,)`` int8, 1 key instance (epithelial nucleus, target digit, tumour patch),
  0 ordinary, -1 unknown (real UCSB has no instance labels);
* ``coords``: ``(N, 2)`` int32 ``(x, y)`` = (column, row) of the instance's centre pixel in its image,
  0-based (the patch spans ``x - patch//2 … x - patch//2 + patch - 1``);
* per bag: ``labels`` (0/1), ``names`` (e.g. ``img7``) and ``origins`` (image path relative to the
  dataset root).

:class:`BagArrays` holds them in memory (digits bags, tests); :class:`InstanceStore` keeps them under
the cache folder as ``instances.u8`` (memory-mapped, opened lazily in each process so it pickles cheaply
into DataLoader workers) + ``index.npz`` + ``manifest.json``, built ONCE. It is a store of
:mod:`histo_lightning.stores.store` (kind ``instances``): keyed by a digest of everything that produced it
(the dataset files' paths/sizes/mtimes, patch size, filter settings, ...), built under a lock in a
temporary folder renamed when complete, described by ``cache.json`` and checked on every open. Never a
file per patch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histo_lightning.stores.store import Store
from histo_lightning.utils.io import write_json_atomic
from histo_lightning.utils.logging import get_logger
from histo_lightning.utils.progress import progress_bar

log = get_logger(__name__)

FORMAT_VERSION = 2  # 2: the store mechanism (histo_lightning.stores)
KIND = "instances"
UNKNOWN = -1  # instance label when the dataset has none


@dataclass
class Bag:
    """One bag as a reader yields it: its instances and what is known about them."""

    name: str
    label: int
    instances: np.ndarray  # (n, H, W, C) uint8
    coords: np.ndarray  # (n, 2) (x, y) centre pixel, 0-based
    instance_labels: np.ndarray  # (n,) 1 key / 0 ordinary / -1 unknown
    origin: str = ""


class Bags:
    """The bag table over a flat instance array (see the module docstring); shared by both holders."""

    offsets: np.ndarray
    labels: np.ndarray
    instance_labels: np.ndarray
    coords: np.ndarray
    names: list[str]
    origins: list[str]

    @property
    def instances(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_instances(self) -> int:
        return int(self.offsets[-1])

    @property
    def bag_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def members(self, bag: int) -> np.ndarray:
        """Global instance indices of ``bag``."""
        return np.arange(self.offsets[bag], self.offsets[bag + 1])

    def all_members(self) -> list[np.ndarray]:
        """Global instance indices of every bag, in bag order."""
        return [self.members(b) for b in range(len(self))]

    def bag_of_instance(self) -> np.ndarray:
        """``(N,)`` the bag of every instance."""
        return np.repeat(np.arange(len(self)), self.bag_sizes)

    def bag_instances(self, bag: int) -> np.ndarray:
        """``(n, H, W, C)`` uint8 instances of ``bag`` (a view for the memory-mapped store)."""
        return self.instances[self.offsets[bag] : self.offsets[bag + 1]]

    def describe(self) -> dict[str, Any]:
        """Counts for ``run_info.json`` and the log: bags, positives, instances, key instances, sizes."""
        sizes = self.bag_sizes
        labelled = self.instance_labels >= 0
        return {
            "bags": len(self),
            "positive_bags": int((self.labels == 1).sum()),
            "negative_bags": int((self.labels == 0).sum()),
            "instances": self.n_instances,
            "key_instances": int((self.instance_labels == 1).sum()) if labelled.any() else None,
            "bag_size": {
                "min": int(sizes.min()) if len(sizes) else 0,
                "mean": round(float(sizes.mean()), 2) if len(sizes) else 0.0,
                "max": int(sizes.max()) if len(sizes) else 0,
            },
            "instance_shape": list(self.instances.shape[1:]),
        }


class BagArrays(Bags):
    """Bags held in memory (small datasets such as digits bags; tests)."""

    def __init__(
        self,
        instances: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray,
        instance_labels: np.ndarray | None = None,
        coords: np.ndarray | None = None,
        names: Sequence[str] | None = None,
        origins: Sequence[str] | None = None,
    ) -> None:
        self._instances = np.asarray(instances)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        n = len(self._instances)
        if self.offsets[0] != 0 or self.offsets[-1] != n or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"offsets must rise from 0 to {n} instances, got {self.offsets}")
        if len(self.offsets) != len(self.labels) + 1:
            raise ValueError("need one more offset than bags")
        self.instance_labels = (
            np.full(n, UNKNOWN, np.int8)
            if instance_labels is None
            else np.asarray(instance_labels, dtype=np.int8)
        )
        self.coords = np.zeros((n, 2), np.int32) if coords is None else np.asarray(coords, np.int32)
        self.names = list(names) if names is not None else [f"bag{b}" for b in range(len(labels))]
        self.origins = list(origins) if origins is not None else ["" for _ in self.names]

    @property
    def instances(self) -> np.ndarray:
        return self._instances

    @classmethod
    def from_bags(cls, bags: Iterable[Bag]) -> BagArrays:
        bags = list(bags)
        if not bags:
            raise ValueError("no bags")
        return cls(
            np.concatenate([b.instances for b in bags]),
            np.concatenate([[0], np.cumsum([len(b.instances) for b in bags])]),
            np.array([b.label for b in bags]),
            np.concatenate([b.instance_labels for b in bags]),
            np.concatenate([b.coords for b in bags]),
            [b.name for b in bags],
            [b.origin for b in bags],
        )


class InstanceStore(Bags):
    """All instances of a dataset in ``<cache_dir>/<name>-instances-<key>/instances.u8`` (memory-mapped).

    Use :meth:`build_or_open`. ``instances`` is a read-only ``(N, H, W, C)`` memmap opened lazily.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        index = np.load(self.folder / "index.npz")
        self.manifest = manifest
        self.instance_shape = tuple(int(v) for v in manifest["instance_shape"])
        self.names = list(manifest["names"])
        self.origins = list(manifest["origins"])
        self.offsets = index["offsets"]
        self.labels = index["labels"]
        self.instance_labels = index["instance_labels"]
        self.coords = index["coords"]
        self._instances: np.memmap | None = None

    @classmethod
    def build_or_open(
        cls,
        cache_dir: str | Path,
        name: str,
        made_by: dict[str, Any],
        bags: Iterable[Bag],
        instance_shape: tuple[int, int, int],
        total: int | None = None,
        extra_manifest: dict[str, Any] | None = None,
    ) -> InstanceStore:
        """Open the store made by ``made_by``, building it from ``bags`` (consumed lazily) if absent.

        Args:
            cache_dir: ``paths.cache_dir``.
            name: dataset name (first part of the folder name).
            made_by: everything that determines the instances (JSON-able); its digest names the folder.
            bags: the bags in order (a generator: only consumed when the store must be built; an error
                raised while iterating leaves nothing behind).
            instance_shape: ``(H, W, C)`` of every instance.
            total: number of bags, for the progress bar.
            extra_manifest: JSON-able facts kept in ``manifest.json`` (e.g. the reader's counts).
        """
        store = Store.keyed(cache_dir, f"{name}-{KIND}", KIND, made_by, FORMAT_VERSION)
        built = store.ensure(
            lambda tmp: cls._build(tmp, bags, instance_shape, total, extra_manifest or {}),
            "cutting the bags' instances",
        )
        log.info(f"Instance store: {'built' if built else 'reusing'} {store.folder}")
        return cls(store.folder)

    @staticmethod
    def _build(
        tmp: Path,
        bags: Iterable[Bag],
        instance_shape: tuple[int, int, int],
        total: int | None,
        extra_manifest: dict[str, Any],
    ) -> None:
        """Cut every bag into ``tmp`` (the temporary folder that becomes the store)."""
        shape = tuple(int(v) for v in instance_shape)
        sizes, labels, names, origins, inst_labels, coords = [], [], [], [], [], []
        with progress_bar() as progress:
            task = progress.add_task("cutting bags into the instance store", total=total)
            with (tmp / "instances.u8").open("wb") as out:
                for bag in bags:
                    instances = np.ascontiguousarray(bag.instances, dtype=np.uint8)
                    if instances.shape[1:] != shape:
                        raise ValueError(
                            f"bag {bag.name}: instances of shape {instances.shape[1:]}, expected {shape}"
                        )
                    n = len(instances)
                    if len(bag.coords) != n or len(bag.instance_labels) != n:
                        raise ValueError(
                            f"bag {bag.name}: coords/labels do not match {n} instances"
                        )
                    out.write(instances.tobytes())
                    sizes.append(n)
                    labels.append(int(bag.label))
                    names.append(bag.name)
                    origins.append(bag.origin)
                    inst_labels.append(np.asarray(bag.instance_labels, dtype=np.int8))
                    coords.append(np.asarray(bag.coords, dtype=np.int32).reshape(n, 2))
                    progress.advance(task)
        if not sizes:
            raise ValueError("no bags to store")
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        np.savez(
            tmp / "index.npz",
            offsets=offsets,
            labels=np.asarray(labels, dtype=np.int64),
            instance_labels=np.concatenate(inst_labels),
            coords=np.concatenate(coords),
        )
        write_json_atomic(
            tmp / "manifest.json",
            {
                "format_version": FORMAT_VERSION,
                "instance_shape": list(shape),
                "n_instances": int(offsets[-1]),
                "names": names,
                "origins": origins,
                **extra_manifest,
            },
        )

    @property
    def instances(self) -> np.ndarray:
        if self._instances is None:
            n = int(self.offsets[-1])
            if n == 0:
                return np.zeros((0, *self.instance_shape), np.uint8)
            self._instances = np.memmap(
                self.folder / "instances.u8",
                dtype=np.uint8,
                mode="r",
                shape=(n, *self.instance_shape),
            )
        return self._instances

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_instances"] = None
        return state


def relative_origin(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` where possible (the ``origin`` column of manifests)."""
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


__all__ = [
    "UNKNOWN",
    "Bag",
    "BagArrays",
    "Bags",
    "InstanceStore",
    "relative_origin",
]
