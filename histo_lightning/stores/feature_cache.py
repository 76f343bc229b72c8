"""A feature cache: per-sample outputs of a frozen network, written once, reused by every method and fold.

One cache is one store of the store mechanism (:mod:`histo_lightning.stores.store`: key, lock, atomic
creation, ``cache.json``, explicit state, verification on open), kind ``features``::

    cache.json      what made it ("made_by": encoder and its weights' sha256, transforms, augmentation
                    seeds, the data files, the code version), its layout (the array's shape and dtype, the
                    manifest's digest), its state (partial while being filled, then complete) and its files
                    (sizes; checksums once complete)
    manifest.csv    one row per sample, in row order: index, origin (source file), patient, label, ...
    features.npy    one memory-mapped array, N × D, or N × A × D when every sample has A views (augmentations)
    progress/       one small file per flushed chunk: the sample indices whose rows are on disk
    .last_used      touched on every open (``python -m histo_lightning.caches list|verify|prune``)

* **Keyed and never mixed.** A default folder (:func:`default_cache_dir`) is named by a digest of
  ``made_by``; a folder given explicitly (``output.path``) that holds a cache made by anything else (another encoder, another transform, other data, another shape or dtype)
  raises :class:`FeatureCacheMismatch`, naming each difference; nothing is overwritten.
* **Partial, then complete.** A cache is created *partial* (the array allocated at full size, sparse on
  disk) and filled in chunks; a chunk's progress file is written (atomically, after the rows are flushed
  to disk) only once its rows are safe. A crash leaves the finished chunks; the next run that needs the
  cache asks :meth:`FeatureCache.missing` and computes only the rest, then :meth:`FeatureCache.finalize`
  records every file's size and checksum and marks it *complete*. Readers (:meth:`FeatureCache.features`)
  only ever see complete caches.
* **Checked on every open.** A complete cache whose ``features.npy`` was cut short or damaged (its size or
  sampled checksum differs from ``cache.json``) is rebuilt with a logged line when its producer opens it
  (:meth:`FeatureCache.open`); a reader of a finished stage's cache (:meth:`FeatureCache.reopen`) cannot
  recompute it and fails with one ``error:`` line naming it.
* **Processes cooperate.** Creation is serialised by the store's lock, so all ranks and jobs open the same
  cache. Under DDP every rank writes its own samples into the same array (disjoint rows) with its own
  progress files; independent jobs (a parallel sweep) fill it one at a time (:meth:`FeatureCache.filling`):
  the second waits for the first and then computes only what is still missing. Writes are serialised
  with completion, and a complete cache is never written again.
* **Storage** is float16 by default (half the disk and page cache); values outside float16's range are
  refused rather than stored as infinities (use ``dtype=float32``).

The writer that fills a cache from ``trainer.predict`` is
:class:`~histo_lightning.callbacks.feature_writer.FeatureCacheWriter`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histo_lightning.errors import ConfigError
from histo_lightning.stores.keys import digest, frame_digest
from histo_lightning.stores.store import (
    State,
    Store,
    StoreError,
    StoreMismatch,
    inspect,
    touch_last_used,
)
from histo_lightning.utils.io import atomic_path
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

KIND = "features"
FORMAT_VERSION = 2  # 2: the store mechanism (state and files in cache.json; no complete.json)
DTYPES = ("float16", "float32")
MANIFEST_COLUMNS = ("index", "origin", "patient", "label")


class FeatureCacheMismatch(StoreMismatch, ConfigError):
    """A cache folder holds features made by something else; the message names what differs."""


def default_cache_dir(root: str | Path, label: str, made_by: Mapping[str, Any]) -> Path:
    """``<root>/<label>-<digest of made_by>``: one folder per producer, found again by the same producer."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return Path(root) / f"{safe}-{digest(made_by, 12)}"


class FeatureCache:
    """A feature cache folder (see the module docstring). Open it with :meth:`open` or :meth:`reopen`."""

    def __init__(self, store: Store, info: dict[str, Any]) -> None:
        self.store = store
        self.folder = store.folder
        self.info = info
        layout = info.get("layout") or {}
        self.shape = tuple(int(s) for s in layout["shape"])
        self.dtype = np.dtype(layout["dtype"])
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
        owned: bool = False,
    ) -> FeatureCache:
        """Open the cache at ``folder`` for this producer: created (partial) if absent, rebuilt (with a
        logged line) if corrupt, resumed if partial.

        Args:
            folder: the cache folder.
            made_by: everything that produced the features (JSON-able); must equal the recorded one.
            manifest: one row per sample in row order, with at least :data:`MANIFEST_COLUMNS`.
            feature_shape: ``(D,)`` or ``(A, D)``: the shape of one sample's features.
            dtype: ``float16`` (default) or ``float32``.
            owned: ``folder`` is named by the producer's key (:func:`default_cache_dir`), so a record that
                disagrees with it is damage (rebuilt); otherwise it is another producer's cache (refused).
        """
        if dtype not in DTYPES:
            raise ConfigError(f"feature cache dtype={dtype!r}: expected one of {DTYPES}")
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"feature cache manifest lacks columns {missing}")
        if not np.array_equal(manifest["index"].to_numpy(), np.arange(len(manifest))):
            raise ValueError("feature cache manifest: 'index' must be 0..N-1 in row order")
        shape = [len(manifest), *(int(s) for s in feature_shape)]
        layout = {"shape": shape, "dtype": dtype, "manifest_sha256": frame_digest(manifest)}
        store = Store(folder, KIND, made_by, FORMAT_VERSION, layout, owned=owned)

        def create(tmp: Path) -> None:
            manifest.to_csv(tmp / "manifest.csv", index=False)
            # allocated at full size now (sparse on disk until written), so ranks can write in place
            array = np.lib.format.open_memmap(
                tmp / "features.npy", mode="w+", dtype=dtype, shape=tuple(shape)
            )
            del array
            (tmp / "progress").mkdir()

        try:
            status = store.open_partial(create)
        except StoreMismatch as err:
            raise FeatureCacheMismatch(str(err)) from None
        assert status.info is not None
        return cls(store, status.info)

    @classmethod
    def reopen(cls, folder: str | Path, require_complete: bool = False) -> FeatureCache:
        """An existing cache, for reading what a finished stage wrote (no producer check). A corrupt or
        old-format cache cannot be recomputed here: :class:`~histo_lightning.stores.store.StoreError`
        naming it (and, with ``require_complete``, also a partial one)."""
        folder = Path(folder)
        status = inspect(folder)
        usable = (State.COMPLETE,) if require_complete else (State.PARTIAL, State.COMPLETE)
        if status.state not in usable or status.info is None:
            why = f" ({status.reason})" if status.reason else ""
            raise StoreError(
                f"feature cache {folder} is {status.state.value}{why}; rerun the stage that computes "
                "it (its run recomputes what is missing) or delete the folder"
            )
        info = status.info
        store = Store(
            folder,
            KIND,
            info.get("made_by") or {},
            info.get("format_version", 0),
            info.get("layout"),
        )
        touch_last_used(folder)
        return cls(store, info)

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            self._manifest = pd.read_csv(self.folder / "manifest.csv")
        return self._manifest

    @property
    def source_rows(self) -> int:
        """Samples of the subset the rows were drawn from: :attr:`n`, or more when a limited run
        (``trainer.limit_predict_batches``) kept the first ``n`` of them (``made_by.data.limited``)."""
        data = self.store.made_by.get("data")
        limited = data.get("limited") if isinstance(data, dict) else None
        return int(limited["of"]) if isinstance(limited, dict) else self.n

    def done_indices(self) -> np.ndarray:
        """Sorted indices of every row on disk (union of the progress files)."""
        if self.complete:
            return np.arange(self.n)
        parts = [np.load(p) for p in sorted((self.folder / "progress").glob("*.npy"))]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def missing(self) -> np.ndarray:
        """Sorted indices of the rows still to compute."""
        return np.setdiff1d(np.arange(self.n), self.done_indices(), assume_unique=True)

    @property
    def state(self) -> State:
        return inspect(self.folder).state

    @property
    def complete(self) -> bool:
        return self.state == State.COMPLETE

    def features(self) -> np.ndarray:
        """The features as a read-only memory map (``N × D`` or ``N × A × D``) of a complete cache."""
        status = inspect(self.folder)
        if status.state != State.COMPLETE:
            rows = (
                f"{len(self.missing())} of {self.n} rows missing"
                if status.state == State.PARTIAL
                else status.reason
            )
            raise StoreError(
                f"feature cache {self.folder} is {status.state.value} ({rows}); readers see complete "
                "caches only"
            )
        return np.load(self.folder / "features.npy", mmap_mode="r")

    @contextlib.contextmanager
    def filling(self) -> Iterator[None]:
        """Hold the right to fill this cache (one process at a time; see the module docstring)."""
        with self.store.filling():
            yield

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
        # under the store's lock: never a write into a cache another process completed meanwhile
        with self.store.lock():
            if self.complete:
                return
            array = self._writable()
            order = np.argsort(indices)
            array[indices[order]] = converted[order]
            array.flush()
            progress = self.folder / "progress" / f"{tag}.npy"
            with atomic_path(progress) as tmp, tmp.open("wb") as handle:
                np.save(handle, indices)
                handle.flush()
                os.fsync(handle.fileno())

    def finalize(self) -> bool:
        """Mark the cache complete when no row is missing (call on one rank after all ranks wrote)."""
        if len(self.missing()):
            return False
        if self._array is not None:
            self._array.flush()
            self._array = None
        self.store.mark_complete()
        return True


__all__ = ["FeatureCache", "FeatureCacheMismatch", "default_cache_dir"]
