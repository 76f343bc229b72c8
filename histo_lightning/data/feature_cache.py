"""A feature cache: per-sample outputs of a frozen network, written once, reused by every method and fold.

One cache is one folder::

    cache.json      what made it ("made_by": encoder and its weights' sha256, transforms, augmentation
                    seeds, the data files, the code version), the array's shape and dtype; written first
    manifest.csv    one row per sample, in row order: index, origin (source file), patient, label, ...
    features.npy    one memory-mapped array, N × D, or N × A × D when every sample has A views (augmentations)
    progress/       one small file per flushed chunk: the sample indices whose rows are on disk
    complete.json   written when every row is (counts, time)
    .last_used      touched on every open (``python -m histo_lightning.caches list|prune`` finds caches by
                    their ``cache.json``: kind ``features``, ``made_by``, ``created``)

* **Keyed and never mixed.** Opening a folder that holds a cache made by anything else (another encoder,
  another transform, other data, another shape or dtype) raises :class:`FeatureCacheMismatch`, naming
  each difference; nothing is overwritten. A default folder name carries a digest of ``made_by``, so
  different producers land in different folders and the same producer finds its cache again
  (:func:`default_cache_dir`).
* **Resumable.** Rows are written in chunks; a chunk's progress file is written (atomically, after the
  rows are flushed to disk) only once its rows are safe. A crash leaves the finished chunks; the rerun asks
  :meth:`FeatureCache.missing` and computes only the rest.
* **DDP.** Every rank writes its own samples into the same array (disjoint rows) with its own progress
  files; creation is serialised by a file lock, so all ranks open the same cache.
* **Storage** is float16 by default (half the disk and page cache); values outside float16's range are
  refused rather than stored as infinities (use ``dtype=float32``).

The writer that fills a cache from ``trainer.predict`` is
:class:`~histo_lightning.callbacks.feature_writer.FeatureCacheWriter`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from histo_lightning.caches import touch_last_used
from histo_lightning.errors import ConfigError
from histo_lightning.utils.fingerprint import canonical, describe_differences, digest
from histo_lightning.utils.io import atomic_dir, atomic_path, read_json, write_json_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
MANIFEST_COLUMNS = ("index", "origin", "patient", "label")


class FeatureCacheMismatch(ConfigError):
    """A cache folder holds features made by something else; the message names what differs."""


def manifest_digest(manifest: pd.DataFrame) -> str:
    """sha256 of a manifest's columns and values (which samples, in which order, with which labels)."""
    h = hashlib.sha256(",".join(map(str, manifest.columns)).encode())
    h.update(pd.util.hash_pandas_object(manifest.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def default_cache_dir(root: str | Path, label: str, made_by: Mapping[str, Any]) -> Path:
    """``<root>/<label>-<digest of made_by>``: one folder per producer, found again by the same producer."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return Path(root) / f"{safe}-{digest(made_by, 12)}"


class FeatureCache:
    """A feature cache folder (see the module docstring). Open it with :meth:`open`."""

    def __init__(self, folder: Path, info: dict[str, Any]) -> None:
        self.folder = folder
        self.info = info
        self.shape = tuple(int(s) for s in info["shape"])
        self.dtype = np.dtype(info["dtype"])
        self._array: np.memmap | None = None
        self._manifest: pd.DataFrame | None = None

    # ---- opening --------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        folder: str | Path,
        made_by: Mapping[str, Any],
        manifest: pd.DataFrame,
        feature_shape: Sequence[int],
        dtype: str = "float16",
    ) -> FeatureCache:
        """Open the cache at ``folder`` for this producer, creating it if absent.

        Args:
            folder: the cache folder.
            made_by: everything that produced the features (JSON-able); must equal the recorded one.
            manifest: one row per sample in row order, with at least :data:`MANIFEST_COLUMNS`.
            feature_shape: ``(D,)`` or ``(A, D)``: the shape of one sample's features.
            dtype: ``float16`` (default) or ``float32``.
        """
        if dtype not in DTYPES:
            raise ConfigError(f"feature cache dtype={dtype!r}: expected one of {DTYPES}")
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"feature cache manifest lacks columns {missing}")
        if not np.array_equal(manifest["index"].to_numpy(), np.arange(len(manifest))):
            raise ValueError("feature cache manifest: 'index' must be 0..N-1 in row order")
        folder = Path(folder)
        requested = {
            "made_by": canonical(dict(made_by)),
            "shape": [len(manifest), *(int(s) for s in feature_shape)],
            "dtype": dtype,
            "manifest_sha256": manifest_digest(manifest),
            "format_version": FORMAT_VERSION,
        }
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            info = read_json(folder / "cache.json")
            if info is None:
                if folder.exists() and any(folder.iterdir()):
                    raise FeatureCacheMismatch(
                        f"{folder} exists but is not a feature cache (no cache.json); "
                        "choose another cache folder or remove it"
                    )
                info = cls._create(folder, requested, manifest)
            else:
                recorded = {k: info.get(k) for k in requested}
                if recorded != requested:
                    differences = describe_differences(recorded, requested, there="in the cache")
                    raise FeatureCacheMismatch(
                        f"feature cache {folder} was made by something else and is never mixed or "
                        f"overwritten: {'; '.join(differences)}. Use another cache folder (or the "
                        "default, keyed one), or delete this one to recompute it"
                    )
        cache = cls(folder, info)
        touch_last_used(folder)
        return cache

    @classmethod
    def reopen(cls, folder: str | Path) -> FeatureCache:
        """An existing cache, for reading what a finished stage wrote (no producer check)."""
        folder = Path(folder)
        info = read_json(folder / "cache.json")
        if info is None:
            raise FileNotFoundError(f"{folder} holds no feature cache (no cache.json)")
        touch_last_used(folder)
        return cls(folder, info)

    @staticmethod
    def _create(folder: Path, requested: dict[str, Any], manifest: pd.DataFrame) -> dict[str, Any]:
        info = {
            "kind": "features",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **requested,
        }
        with atomic_dir(folder) as tmp:
            manifest.to_csv(tmp / "manifest.csv", index=False)
            # allocated at full size now (sparse on disk until written), so ranks can write in place
            array = np.lib.format.open_memmap(
                tmp / "features.npy", mode="w+", dtype=info["dtype"], shape=tuple(info["shape"])
            )
            del array
            (tmp / "progress").mkdir()
            write_json_atomic(tmp / "cache.json", info)
        log.info(
            f"Feature cache created: {folder} ({' × '.join(map(str, info['shape']))} {info['dtype']})"
        )
        return info

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            self._manifest = pd.read_csv(self.folder / "manifest.csv")
        return self._manifest

    def done_indices(self) -> np.ndarray:
        """Sorted indices of every row on disk (union of the progress files)."""
        parts = [np.load(p) for p in sorted((self.folder / "progress").glob("*.npy"))]
        if (self.folder / "complete.json").is_file():
            return np.arange(self.n)
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def missing(self) -> np.ndarray:
        """Sorted indices of the rows still to compute."""
        return np.setdiff1d(np.arange(self.n), self.done_indices(), assume_unique=True)

    @property
    def complete(self) -> bool:
        return (self.folder / "complete.json").is_file() or len(self.missing()) == 0

    def features(self, allow_partial: bool = False) -> np.ndarray:
        """The features as a read-only memory map (``N × D`` or ``N × A × D``)."""
        if not allow_partial and not self.complete:
            raise RuntimeError(
                f"feature cache {self.folder} is incomplete ({len(self.missing())} of {self.n} rows missing)"
            )
        return np.load(self.folder / "features.npy", mmap_mode="r")

    # ---- writing --------------------------------------------------------------------------------------
    def _writable(self) -> np.memmap:
        if self._array is None:
            self._array = np.load(self.folder / "features.npy", mmap_mode="r+")
        return self._array

    def write(self, indices: np.ndarray, values: np.ndarray, tag: str) -> None:
        """Write ``values`` at rows ``indices``, flush them, then record them in a progress file ``tag``.

        ``tag`` must be unique per call across ranks and runs (e.g. ``r0-000017-<pid>``).
        """
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values)
        if values.shape != (len(indices), *self.shape[1:]):
            raise ValueError(
                f"feature cache {self.folder}: rows of shape {values.shape[1:]} given, the cache holds "
                f"{self.shape[1:]}"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"feature cache {self.folder}: row index outside 0..{self.n - 1}")
        converted = values.astype(self.dtype)
        if not np.isfinite(converted).all():
            source_finite = np.isfinite(values).all()
            raise ConfigError(
                f"feature cache {self.folder}: "
                + (
                    "values exceed the float16 range; store them as float32 (dtype=float32)"
                    if source_finite
                    else "the network produced NaN or infinite features"
                )
            )
        array = self._writable()
        order = np.argsort(indices)
        array[indices[order]] = converted[order]
        array.flush()
        with atomic_path(self.folder / "progress" / f"{tag}.npy") as tmp, tmp.open("wb") as handle:
            np.save(handle, indices)
            handle.flush()
            os.fsync(handle.fileno())

    def finalize(self) -> bool:
        """Mark the cache complete when no row is missing (call on one rank after all ranks wrote)."""
        missing = self.missing()
        if len(missing):
            return False
        if not (self.folder / "complete.json").is_file():
            write_json_atomic(
                self.folder / "complete.json",
                {"rows": self.n, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")},
            )
        return True


__all__ = ["FeatureCache", "FeatureCacheMismatch", "default_cache_dir", "manifest_digest"]
