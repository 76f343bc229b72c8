"""The data module shared by datasets of labelled images: index table → patient-level fold → datasets.

A subclass says how to read its dataset (:meth:`ImageTableDataModule.load_table`, optionally
:meth:`ImageTableDataModule.official_folds`); :class:`~histo_lightning.data.base.BaseDataModule` gives it the
root (real or synthetic), the split file, the corrupt-file policy and loaders exact under DDP, and this class
the image source (a memory-mapped cache of the decoded images, or decoding on access), the per-subset
:class:`~histo_lightning.data.torch_datasets.ImageTableDataset` with the batch layout
``{"image", "label", "patient", "group", "index"}``, and, with ``pairing`` set (or ``auto`` and a model
whose embedding loss needs them), the same datasets served as image pairs or triplets (SMSE Algorithms 1
and 2, :mod:`histo_lightning.data.sampling.pairing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from histo_lightning.data.base import BaseDataModule, digest, frame_digest, transform_description
from histo_lightning.data.sampling.pairing import PAIRING_MODES, PairingSampler, fixed_tuples
from histo_lightning.data.splits import patient_labels
from histo_lightning.data.torch_datasets import ImageTableDataset, PairedDataset
from histo_lightning.errors import ConfigError
from histo_lightning.stores.image_store import (
    BadImage,
    FileImageSource,
    MemmapImageCache,
    files_key,
)
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

TABLE_COLUMNS = ("path", "label", "patient", "group")


class ImageTableDataModule(BaseDataModule):
    """Base data module for datasets of labelled images grouped by patient.

    Args:
        class_names: class names in label order.
        num_classes: number of classes (checked against ``class_names``).
        group_names: names of the per-sample groups (e.g. ``{40: "40x"}``), used by the metrics.
        train_transforms, eval_transforms: albumentations pipelines ending with ``ToTensorV2``.
        image_cache: ``memmap`` (decode once into a memory-mapped cache) or ``none`` (decode on access).
        pairing: ``null`` (single images), ``pair`` or ``triplet`` (SMSE Algorithms 1/2), or ``auto``: what
            the model's embedding loss needs (its ``pairing`` attribute; single images for other models).
        pairing_balanced: class-balanced anchors and negatives (see :mod:`histo_lightning.data.sampling.pairing`).
        pair_eval: serve validation and test sets as pairs/triplets too (partners fixed by
            ``pairing_seed``), so the embedding loss is also reported there; every image is still classified
            exactly once, as an anchor.
        pairing_seed: seed of the partner draws (training: combined with the epoch).
        **kwargs: :class:`~histo_lightning.data.base.BaseDataModule` arguments (fold, split, root,
            synthetic, batch sizes, workers, cache and split folders, ``on_corrupt``, ``drop_last``).
    """

    #: table columns (besides path, label, patient, group) that say which sample a row is
    sample_columns: tuple[str, ...] = ()

    def __init__(
        self,
        class_names: Sequence[str],
        num_classes: int,
        group_names: Mapping[int, str] | None = None,
        train_transforms: Callable[..., dict] | None = None,
        eval_transforms: Callable[..., dict] | None = None,
        image_cache: str = "memmap",
        pairing: str | None = "auto",
        pairing_balanced: bool = False,
        pair_eval: bool = True,
        pairing_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(class_names) != num_classes:
            raise ConfigError(
                f"dataset.class_names has {len(class_names)} names but dataset.num_classes={num_classes}"
            )
        if image_cache not in ("memmap", "none"):
            raise ConfigError(f"dataset.image_cache={image_cache!r}: expected 'memmap' or 'none'")
        if pairing not in (None, "auto", *PAIRING_MODES):
            raise ConfigError(
                f"dataset.pairing={pairing!r}: expected null, auto, {', '.join(PAIRING_MODES)}"
            )
        self.class_names = list(class_names)
        self.group_names = dict(group_names or {})
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.image_cache = image_cache
        self.table: pd.DataFrame | None = None
        self.images: MemmapImageCache | FileImageSource | None = None
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
        self.load_split(patient_labels(table), self.official_folds(table))
        images = self._open_images(table)
        if images.bad:
            table = self._leave_out(table, images.bad)
        self.patient_names = sorted(table["patient"].astype(str).unique())
        patient_index = {p: i for i, p in enumerate(self.patient_names)}
        table["patient_id"] = table["patient"].map(patient_index).astype(np.int64)
        self.table, self.images = table, images

    def _open_images(self, table: pd.DataFrame) -> MemmapImageCache | FileImageSource:
        paths = [Path(p) for p in table["path"]]
        args = (paths, self.root, self.cache_dir / "images", self.name, self.prepare_workers)
        if self.image_cache == "memmap":
            return MemmapImageCache.build_or_open(*args)
        return FileImageSource.checked(*args)

    def _leave_out(self, table: pd.DataFrame, bad: list[BadImage]) -> pd.DataFrame:
        """The table without unreadable images (``on_corrupt=skip``; ``fail`` raises)."""
        self.apply_corrupt_policy(bad)
        keep = ~table["path"].isin({b.path for b in bad})
        table = table.copy()
        table["image_id"] = np.arange(len(table))
        return table[keep].reset_index(drop=True)

    def setup(self, stage: str | None = None) -> None:
        self._materialise()
        assert self.table is not None
        table = self.table
        subsets = self.fold_members()
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
        self,
        rows: np.ndarray,
        transform: Callable[..., dict] | None,
        row_ids: np.ndarray | None = None,
    ) -> ImageTableDataset:
        """The samples at ``rows`` of the table, read from the image source with ``transform``.

        Items' ``"index"`` is their table row, or ``row_ids`` where given.
        """
        table = self.table
        image_ids = table["image_id"].to_numpy() if "image_id" in table else np.arange(len(table))
        return ImageTableDataset(
            self.images,
            image_ids[rows],
            table["label"].to_numpy()[rows],
            table["patient_id"].to_numpy()[rows],
            table["group"].to_numpy()[rows],
            rows if row_ids is None else row_ids,
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

    def train_dataloader(self) -> DataLoader:
        if "train" in self.paired:
            # partners are drawn in the sampler, in the main process, every epoch (Lightning wraps it in a
            # DistributedSamplerWrapper under DDP and forwards set_epoch)
            sampler = PairingSampler(
                self.datasets["train"].labels,
                self.active_pairing,
                seed=self.pairing_seed,
                balanced=self.pairing_balanced,
            )
            return self.loader(self.paired["train"], train=True, sampler=sampler)
        return self.loader(self.datasets["train"], train=True, shuffle=True)

    def _eval_loader(self, subset: str) -> DataLoader:
        return self.loader(self.paired.get(subset, self.datasets[subset]), train=False)

    def validation_loader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _rows(self, subset: str) -> np.ndarray:
        if not self._subset_rows:
            self.setup()
        if subset not in self._subset_rows:
            raise ConfigError(f"no subset {subset!r}; expected one of {sorted(self._subset_rows)}")
        return self._subset_rows[subset]

    def predict_dataset(self, subset: str) -> ImageTableDataset:
        """Single images of ``subset`` with the evaluation transforms, numbered 0…N-1 in ``"index"``."""
        rows = self._rows(subset)
        return self._table_dataset(rows, self.eval_transforms, row_ids=np.arange(len(rows)))

    def sample_manifest(self, subset: str) -> pd.DataFrame:
        """One row per item of :meth:`predict_dataset`: origin file, patient, label, group, table row."""
        assert self.table is not None
        rows = self._rows(subset)
        part = self.table.iloc[rows]
        manifest = pd.DataFrame(
            {
                "index": np.arange(len(rows)),
                "origin": self.relative_origin(part["path"]),
                "patient": part["patient"].astype(str).to_numpy(),
                "label": part["label"].to_numpy(),
                "group": part["group"].to_numpy(),
                "table_row": rows,
            }
        )
        for column in self.sample_columns:
            manifest[column] = part[column].to_numpy()
        return manifest

    def data_key(self) -> str:
        assert self.table is not None
        paths = [Path(p) for p in self.table["path"].unique()]
        columns = ["path", "label", "patient", "group", *self.sample_columns]
        table = self.table[columns].assign(path=self.relative_origin(self.table["path"]))
        return digest([files_key(paths, self.root), frame_digest(table)])

    def sample_settings(self) -> dict[str, Any]:
        return {
            "classes": self.class_names,
            "train_transforms": transform_description(self.train_transforms),
            "eval_transforms": transform_description(self.eval_transforms),
            "pairing": self.pairing,
            "pairing_balanced": self.pairing_balanced,
            "pair_eval": self.pair_eval,
            "pairing_seed": self.pairing_seed,
        }

    def describe(self) -> dict[str, Any]:
        """What the run report records about the data."""
        info = super().describe()
        info.update(
            n_images={s: len(d) for s, d in self.datasets.items()},
            n_patients={s: len(m) for s, m in self.fold_members().items()} if self.datasets else {},
            pairing=self.active_pairing,
            pairing_balanced=self.pairing_balanced if self.active_pairing else None,
        )
        return info
