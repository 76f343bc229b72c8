"""The data module shared by image-level datasets: index table → patient-level fold → datasets.

A subclass says how to read its dataset (:meth:`HistoDataModule.load_table`, optionally
:meth:`HistoDataModule.official_folds`); this class does the rest the same way for every dataset:
the versioned split file, the image cache, the corrupt-file policy, samplers that stay exact under DDP,
and the batch layout ``{"image", "label", "patient", "group", "index"}``. With ``pairing`` set (or
``auto`` and a model whose embedding loss needs them) the same datasets are served as image pairs or
triplets (SMSE Algorithms 1 and 2, :mod:`histo_lightning.data.pairing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from histo_lightning.data.datasets import ImageTableDataset
from histo_lightning.data.image_store import BadImage, FileImageSource, MemmapImageCache
from histo_lightning.data.pairing import PAIRING_MODES, PairedDataset, PairingSampler, fixed_tuples
from histo_lightning.data.splits import (
    SplitSpec,
    check_fold,
    load_or_create_split,
    patient_labels,
    subsets_for_fold,
)
from histo_lightning.errors import ConfigError, CorruptImageError
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

TABLE_COLUMNS = ("path", "label", "patient", "group")


class HistoDataModule(pl.LightningDataModule):
    """Base data module for datasets of labelled images grouped by patient.

    Args:
        fold: the test fold, 1…K (the top-level ``fold`` key).
        split: the ``split`` config group (:class:`~histo_lightning.data.splits.SplitSpec` fields).
        class_names: class names in label order.
        num_classes: number of classes (checked against ``class_names``).
        group_names: names of the per-sample groups (e.g. ``{40: "40x"}``), used by the metrics.
        batch_size, eval_batch_size: training and evaluation batch sizes.
        num_workers, pin_memory: DataLoader settings.
        train_transforms, eval_transforms: albumentations pipelines ending with ``ToTensorV2``.
        image_cache: ``memmap`` (decode once into a memory-mapped cache) or ``none`` (decode on access).
        cache_dir: where image caches live. split_dir: where split files live.
        on_corrupt: ``fail`` (stop, naming the file) or ``skip`` (drop unreadable images, list them at the end).
        prepare_workers: processes used to decode/check images when the cache is built.
        pairing: ``null`` (single images), ``pair`` or ``triplet`` (SMSE Algorithms 1/2), or ``auto``: what
            the model's embedding loss needs (its ``pairing`` attribute; single images for other models).
        pairing_balanced: class-balanced anchors and negatives (see :mod:`histo_lightning.data.pairing`).
        pair_eval: serve validation and test sets as pairs/triplets too (partners fixed by
            ``pairing_seed``), so the embedding loss is also reported there; every image is still classified
            exactly once, as an anchor.
        pairing_seed: seed of the partner draws (training: combined with the epoch).
    """

    def __init__(
        self,
        fold: int,
        split: Mapping[str, Any],
        class_names: Sequence[str],
        num_classes: int,
        group_names: Mapping[int, str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        train_transforms: Callable[..., dict] | None = None,
        eval_transforms: Callable[..., dict] | None = None,
        image_cache: str = "memmap",
        cache_dir: str = "data/cache",
        split_dir: str = "data/splits",
        on_corrupt: str = "fail",
        prepare_workers: int = 2,
        pairing: str | None = "auto",
        pairing_balanced: bool = False,
        pair_eval: bool = True,
        pairing_seed: int = 0,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ConfigError(
                f"dataset.class_names has {len(class_names)} names but dataset.num_classes={num_classes}"
            )
        if image_cache not in ("memmap", "none"):
            raise ConfigError(f"dataset.image_cache={image_cache!r}: expected 'memmap' or 'none'")
        if on_corrupt not in ("fail", "skip"):
            raise ConfigError(f"dataset.on_corrupt={on_corrupt!r}: expected 'fail' or 'skip'")
        if pairing not in (None, "auto", *PAIRING_MODES):
            raise ConfigError(
                f"dataset.pairing={pairing!r}: expected null, auto, {', '.join(PAIRING_MODES)}"
            )
        self.fold = fold
        self.split_spec = SplitSpec(**dict(split))
        self.class_names = list(class_names)
        self.group_names = dict(group_names or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.image_cache = image_cache
        self.cache_dir = Path(cache_dir)
        self.split_dir = Path(split_dir)
        self.on_corrupt = on_corrupt
        self.prepare_workers = prepare_workers
        self.table: pd.DataFrame | None = None
        self.split: pd.DataFrame | None = None
        self.images: MemmapImageCache | FileImageSource | None = None
        self.skipped: list[BadImage] = []
        self.patient_names: list[str] = []
        self.datasets: dict[str, ImageTableDataset] = {}
        self.pairing = pairing
        self.pairing_balanced = pairing_balanced
        self.pair_eval = pair_eval
        self.pairing_seed = int(pairing_seed)
        self.active_pairing: str | None = None
        self.paired: dict[str, PairedDataset] = {}
        self._subset_rows: dict[str, np.ndarray] = {}

    # ---- what a dataset subclass provides -------------------------------------------------------------
    @property
    def name(self) -> str:
        """Dataset name used in split-file and cache names."""
        raise NotImplementedError

    @property
    def is_synthetic(self) -> bool:
        return False

    @property
    def root(self) -> Path:
        raise NotImplementedError

    def load_table(self) -> pd.DataFrame:
        """All images: columns ``path`` (absolute), ``label`` (int), ``patient`` (str), ``group`` (int), ...

        Must raise :class:`~histo_lightning.errors.DatasetLayoutError` naming the root and the layout it
        expected when the dataset is missing or laid out differently.
        """
        raise NotImplementedError

    def official_folds(self, table: pd.DataFrame) -> tuple[pd.DataFrame, str] | None:
        """The dataset's own folds as ``fold, patient, subset`` rows and the file they came from, or None."""
        return None

    # ---- the shared machinery -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Read the dataset, write the split file and build the image cache (idempotent, file-locked)."""
        self._materialise()

    def _materialise(self) -> None:
        if self.table is not None:
            return
        table = self.load_table().reset_index(drop=True)
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise RuntimeError(f"{type(self).__name__}.load_table() is missing columns {missing}")
        patients = patient_labels(table)
        official = self.official_folds(table)
        split = load_or_create_split(
            self.split_dir,
            self.name,
            patients,
            self.split_spec,
            official=None if official is None else official[0],
            official_source=None if official is None else official[1],
        )
        check_fold(self.fold, split, f"{self.name}/{self.split_spec.scheme}")
        images = self._open_images(table)
        if images.bad:
            table = self._apply_corrupt_policy(table, images.bad)
        self.patient_names = sorted(table["patient"].astype(str).unique())
        patient_index = {p: i for i, p in enumerate(self.patient_names)}
        table["patient_id"] = table["patient"].map(patient_index).astype(np.int64)
        self.table, self.split, self.images = table, split, images

    def _open_images(self, table: pd.DataFrame) -> MemmapImageCache | FileImageSource:
        paths = [Path(p) for p in table["path"]]
        args = (paths, self.root, self.cache_dir / "images", self.name, self.prepare_workers)
        if self.image_cache == "memmap":
            return MemmapImageCache.build_or_open(*args)
        return FileImageSource.checked(*args)

    def _apply_corrupt_policy(self, table: pd.DataFrame, bad: list[BadImage]) -> pd.DataFrame:
        if self.on_corrupt == "fail":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CorruptImageError(
                f"unreadable image {bad[0].path}: {bad[0].reason}{more}; "
                f"fix or remove it, or set dataset.on_corrupt=skip to leave it out"
            )
        bad_paths = {b.path for b in bad}
        self.skipped = list(bad)
        log.warning(
            f"dataset.on_corrupt=skip: leaving out {len(bad)} unreadable image(s); listed at the end of the run"
        )
        keep = ~table["path"].isin(bad_paths)
        table = table.copy()
        table["image_id"] = np.arange(len(table))
        return table[keep].reset_index(drop=True)

    def setup(self, stage: str | None = None) -> None:
        self._materialise()
        assert self.table is not None and self.split is not None
        table = self.table
        subsets = subsets_for_fold(self.split, self.fold)
        self._subset_rows = {}
        for subset, members in subsets.items():
            rows = np.flatnonzero(table["patient"].astype(str).isin(members).to_numpy())
            self._subset_rows[subset] = rows
            transform = self.train_transforms if subset == "train" else self.eval_transforms
            self.datasets[subset] = self._table_dataset(rows, transform)
        counts = ", ".join(
            f"{s} {len(d)} images / {len(subsets[s])} patients" for s, d in self.datasets.items()
        )
        synthetic = " [SYNTHETIC DATA]" if self.is_synthetic else ""
        log.info(f"{self.name}{synthetic} fold {self.fold}: {counts}")
        for subset in ("train", "test"):
            if len(self.datasets[subset]) == 0:
                raise ConfigError(
                    f"fold={self.fold} of split {self.split_spec.scheme!r} has no {subset} images"
                )
        self._setup_pairing()

    def _table_dataset(
        self, rows: np.ndarray, transform: Callable[..., dict] | None
    ) -> ImageTableDataset:
        """The samples at ``rows`` of the table, read from the image source with ``transform``."""
        table = self.table
        image_ids = table["image_id"].to_numpy() if "image_id" in table else np.arange(len(table))
        return ImageTableDataset(
            self.images,
            image_ids[rows],
            table["label"].to_numpy()[rows],
            table["patient_id"].to_numpy()[rows],
            table["group"].to_numpy()[rows],
            rows,
            transform,
        )

    # ---- pairs and triplets (SMSE §III-B) -----------------------------------------------------------
    def _model_pairing(self) -> tuple[str | None, str | None]:
        """What the model being trained needs (its ``pairing`` attribute) and the model's class name."""
        trainer = self.trainer
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if model is None:
            return None, None
        return getattr(model, "pairing", None), type(model).__name__

    def _resolve_pairing(self) -> str | None:
        wanted, model_name = self._model_pairing()
        if self.pairing == "auto":
            return wanted
        if model_name is not None and self.pairing != wanted:
            needs = f"{wanted}s" if wanted else "single images"
            raise ConfigError(
                f"dataset.pairing={self.pairing} but the model ({model_name}) trains on {needs}; "
                f"set dataset.pairing=auto (or {wanted})"
            )
        return self.pairing

    def _setup_pairing(self) -> None:
        self.active_pairing = self._resolve_pairing()
        self.paired = {}
        if self.active_pairing is None:
            return
        mode = self.active_pairing
        self.paired["train"] = PairedDataset(self.datasets["train"], mode)
        if not self.pair_eval:
            return
        for offset, subset in enumerate(("val", "test"), start=1):
            dataset = self.datasets[subset]
            if len(dataset) == 0:
                continue
            try:
                rows = fixed_tuples(
                    dataset.labels, mode, self.pairing_seed * 1000 + offset, f"the {subset} set"
                )
            except ConfigError as err:
                log.warning(
                    f"{subset} set served as single images (no {subset} embedding loss): {err}"
                )
                continue
            self.paired[subset] = PairedDataset(dataset, mode, fixed=rows)
        log.info(
            f"Pairing: {mode}s (partners redrawn every epoch, seed {self.pairing_seed}"
            f"{', class-balanced' if self.pairing_balanced else ''}); "
            f"evaluation {'on fixed ' + mode + 's' if self.pair_eval else 'on single images'}"
        )

    def _loader(self, subset: str, shuffle: bool) -> DataLoader:
        if shuffle and subset in self.paired:
            # partners are drawn in the sampler, in the main process, every epoch (Lightning wraps it in a
            # DistributedSamplerWrapper under DDP and forwards set_epoch)
            return DataLoader(
                self.paired[subset],
                batch_size=self.batch_size,
                sampler=PairingSampler(
                    self.datasets[subset].labels,
                    self.active_pairing,
                    seed=self.pairing_seed,
                    balanced=self.pairing_balanced,
                ),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                drop_last=False,
            )
        dataset = self.paired.get(subset, self.datasets[subset])
        sampler = None
        trainer = self.trainer
        if not shuffle and trainer is not None and trainer.world_size > 1:
            # evaluate every sample exactly once across processes (Lightning's default sampler pads)
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def has_validation(self) -> bool:
        """Whether this fold has a validation set (none with ``split.val_fraction=0``)."""
        return len(self.datasets.get("val", ())) > 0

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.has_validation() else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def embedding_dataloader(
        self, subset: str, max_samples: int | None = None, seed: int = 0
    ) -> DataLoader:
        """Single images of ``subset`` with the evaluation transforms (no augmentation, no partners),
        at most ``max_samples`` of them drawn at random with ``seed``: what embedding plots look at."""
        rows = self._subset_rows[subset]
        if max_samples is not None and len(rows) > max_samples:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(rows, size=max_samples, replace=False))
        return DataLoader(
            self._table_dataset(rows, self.eval_transforms),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=0,
        )

    def describe(self) -> dict[str, Any]:
        """What the run report records about the data."""
        return {
            "dataset": self.name,
            "root": str(self.root),
            "synthetic": self.is_synthetic,
            "fold": self.fold,
            "split": self.split_spec.__dict__,
            "n_images": {s: len(d) for s, d in self.datasets.items()},
            "pairing": self.active_pairing,
            "pairing_balanced": self.pairing_balanced if self.active_pairing else None,
            "skipped_images": [b.path for b in self.skipped],
        }
