"""The TUPAC16 mitosis data module: HPFs normalised once into a memmap, patches as index rows, case folds.

``prepare_data`` (idempotent, file-locked steps) reads the dataset (or generates the synthetic one),
writes/reads the case-level split file (:mod:`histo_lightning.data.splits`, ``patient_kfold``: the case is
the patient; folds stratified by pathology centre where every centre has enough cases; validation cases
carved from the training cases), decodes and Macenko-normalises every HPF once into a memory-mapped cache
keyed by the files, the normaliser and its target, and builds the patch index
(:mod:`histo_lightning.data.mitosis_patches`).

Loaders (batches are dicts):

* ``train_dataloader``: the training cases' patches ``{"image" (3,128,128) uint8, "label", "index"}``;
  all of them, shuffled (screening network), or after :meth:`Tupac16DataModule.use_hard_examples`
  negatives : positives : false positives drawn 1 : 1 : 3 by a :class:`~histo_lightning.data.samplers.RatioSampler`
  (refined network, §4.2.3);
* ``val_dataloader``: the validation cases' patches (original positives, all negatives);
* ``predict_dataloader``: every training-case patch, for hard-example mining;
* ``test_dataloader``: whole HPFs, one per batch, ``{"image" (3,H,W) uint8, "points" (K,2), "hpf",
  "labelled"}``: the held-out fold's, or with :meth:`Tupac16DataModule.use_unlabelled_test_set` the
  unlabelled test cases'.

Evaluation loaders use an unrepeated distributed sampler under DDP, so every patch / HPF is seen once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.image_store import BadImage, MemmapImageCache
from histo_lightning.data.mitosis_patches import PatchSampling, build_patch_index, extract_patch
from histo_lightning.data.samplers import RatioSampler
from histo_lightning.data.splits import (
    SplitSpec,
    check_fold,
    load_or_create_split,
    patient_labels,
    subsets_for_fold,
)
from histo_lightning.data.stain import build_normalizer
from histo_lightning.data.tupac import scan_test_set, scan_tupac16
from histo_lightning.errors import ConfigError, CorruptImageError, DatasetLayoutError
from histo_lightning.utils.batchnorm import lone_last_batch
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


class PatchDataset(Dataset):
    """Rows ``rows`` of the patch index, cut from the HPF cache: ``{"image", "label", "index"}``."""

    def __init__(self, images: MemmapImageCache, index: pd.DataFrame, rows: np.ndarray) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.hpf = index["hpf"].to_numpy()
        self.cy = index["cy"].to_numpy()
        self.cx = index["cx"].to_numpy()
        self.angle = index["angle"].to_numpy()
        self.label = index["label"].to_numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        patch = extract_patch(
            self.images[int(self.hpf[r])],
            float(self.cy[r]),
            float(self.cx[r]),
            float(self.angle[r]),
        )
        image = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)
        return {"image": image, "label": int(self.label[r]), "index": r}


class HpfDataset(Dataset):
    """Whole HPFs: ``{"image" (3, H, W) uint8, "points" (K, 2) float, "hpf", "labelled"}``."""

    def __init__(
        self, images: MemmapImageCache, hpf_ids: np.ndarray, points: Mapping[int, np.ndarray] | None
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
    """Collate for one HPF per batch (HPFs differ in size): the item itself."""
    return items[0]


class Tupac16DataModule(pl.LightningDataModule):
    """TUPAC16 mitosis detection data for CHS-Net (see the module docstring).

    Args:
        fold: the test fold, 1…K. split: the ``split`` group (``patient_kfold``; the case is the patient).
        root: the folder holding ``mitoses_image_data/`` (``dataset.root``); unused when ``synthetic`` is set.
        synthetic: generator settings (``preset`` plus :class:`SyntheticTupacConfig` fields), only set by
            ``dataset=tupac16_synthetic``; the data is then generated once under ``synthetic_dir``.
        microns_per_pixel: pixel size (TUPAC16: 0.25), used to express distances such as the 7.5 µm
            detection radius in pixels.
        stain_normalization: ``macenko`` (§4.2.1) or ``none``. stain_target: an image whose stain is the
            target (default: Macenko's reference H&E).
        sampling: :class:`~histo_lightning.data.mitosis_patches.PatchSampling` fields (§3.4, §4.2.1).
        val_positives: ``original`` (one patch per validation mitosis) or ``all`` (the augmented ones too).
        batch_size, eval_batch_size, num_workers, pin_memory: DataLoader settings.
        cache_dir, split_dir: where the HPF cache and the split file live.
        on_corrupt: ``fail`` or ``skip`` unreadable HPFs. prepare_workers: threads decoding HPFs.
    """

    def __init__(
        self,
        fold: int,
        split: Mapping[str, Any],
        root: str | None = None,
        synthetic: Mapping[str, Any] | None = None,
        synthetic_dir: str | None = None,
        microns_per_pixel: float = 0.25,
        stain_normalization: str = "macenko",
        stain_target: str | None = None,
        sampling: Mapping[str, Any] | None = None,
        val_positives: str = "original",
        batch_size: int = 192,
        eval_batch_size: int = 512,
        num_workers: int = 2,
        pin_memory: bool = False,
        cache_dir: str = "data/cache",
        split_dir: str = "data/splits",
        on_corrupt: str = "fail",
        prepare_workers: int = 2,
    ) -> None:
        super().__init__()
        if synthetic is not None and root is not None:
            raise ConfigError(
                "dataset.root is set, but dataset=tupac16_synthetic generates its own data under paths.data_dir; "
                "use dataset=tupac16 dataset.root=... for real TUPAC16"
            )
        if synthetic is None and root is None:
            raise ConfigError(
                "dataset.root is not set: point it at the folder holding mitoses_image_data/"
            )
        if on_corrupt not in ("fail", "skip"):
            raise ConfigError(f"dataset.on_corrupt={on_corrupt!r}: expected 'fail' or 'skip'")
        if val_positives not in ("original", "all"):
            raise ConfigError(
                f"dataset.val_positives={val_positives!r}: expected 'original' or 'all'"
            )
        if stain_normalization not in ("macenko", "none"):
            raise ConfigError(
                f"dataset.stain_normalization={stain_normalization!r}: expected 'macenko' or 'none'"
            )
        if microns_per_pixel <= 0:
            raise ConfigError(f"dataset.microns_per_pixel={microns_per_pixel} must be positive")
        try:
            self.sampling = PatchSampling(**dict(sampling or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataset.sampling: {err}") from None
        self.fold = fold
        self.split_spec = SplitSpec(**dict(split))
        self._root = Path(root) if root is not None else None
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.synthetic_dir = Path(synthetic_dir) if synthetic_dir else None
        self.microns_per_pixel = float(microns_per_pixel)
        self.stain_normalization = stain_normalization
        self.stain_target = stain_target
        self.val_positives = val_positives
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_dir = Path(cache_dir)
        self.split_dir = Path(split_dir)
        self.on_corrupt = on_corrupt
        self.prepare_workers = prepare_workers
        self.hpfs: pd.DataFrame | None = None
        self.mitoses: dict[int, np.ndarray] = {}
        self.images: MemmapImageCache | None = None
        self.split: pd.DataFrame | None = None
        self.index: pd.DataFrame | None = None
        self.index_counts: dict[str, int] = {}
        self.skipped: list[BadImage] = []
        self.subset_of_hpf: np.ndarray | None = None
        self.hard_examples: tuple[np.ndarray, Sequence[float], int | None, int] | None = None
        self.unlabelled: tuple[pd.DataFrame, MemmapImageCache] | None = None
        self.detect_unlabelled = False
        self._usable = np.zeros(0, dtype=bool)

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None

    def _synthetic_config(self) -> Any:
        from histo_lightning.data.synthetic.tupac16 import SyntheticTupacConfig

        fields = dict(self.synthetic or {})
        preset = fields.pop("preset", "demo")
        try:
            return SyntheticTupacConfig.from_preset(preset, **fields)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataset.synthetic: {err}") from None

    @property
    def name(self) -> str:
        if self.is_synthetic:
            return f"tupac16_synthetic-{self._synthetic_config().fingerprint()}"
        return "tupac16"

    @property
    def root(self) -> Path:
        if self._root is None:
            from histo_lightning.data.synthetic.tupac16 import ensure_synthetic_tupac16

            if self.synthetic_dir is None:
                raise ConfigError(
                    "dataset.synthetic_dir is not set (where to generate synthetic TUPAC16)"
                )
            self._root = ensure_synthetic_tupac16(
                self.synthetic_dir, self._synthetic_config(), workers=self.prepare_workers
            )
        return self._root

    def radius_px(self, microns: float) -> float:
        """A distance in microns as pixels of this dataset."""
        return microns / self.microns_per_pixel

    # ---- preparation ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._materialise()

    def _normalised_cache(self, paths: list[Path], name: str) -> MemmapImageCache:
        normalizer = build_normalizer(self.stain_normalization, self.stain_target)
        return MemmapImageCache.build_or_open(
            paths,
            self.root,
            self.cache_dir / "hpfs",
            name,
            self.prepare_workers,
            preprocess=normalizer,
            preprocess_key=normalizer.key() if normalizer is not None else "",
        )

    def _materialise(self) -> None:
        if self.index is not None:
            return
        hpfs, mitoses = scan_tupac16(self.root)
        cases = pd.DataFrame({"patient": hpfs["case"], "label": hpfs["centre"].clip(lower=0)})
        split = load_or_create_split(
            self.split_dir, self.name, patient_labels(cases), self.split_spec
        )
        check_fold(self.fold, split, f"{self.name}/{self.split_spec.scheme}")
        images = self._normalised_cache([Path(p) for p in hpfs["path"]], self.name)
        usable = np.ones(len(hpfs), dtype=bool)
        if images.bad:
            self._apply_corrupt_policy(images.bad)
            usable = ~hpfs["path"].isin({b.path for b in images.bad}).to_numpy()
        for i in np.flatnonzero(usable):
            height, width = (int(v) for v in images.shapes[i])
            points = mitoses[i]
            outside = (
                (points[:, 0] < 0)
                | (points[:, 0] >= height)
                | (points[:, 1] < 0)
                | (points[:, 1] >= width)
            )
            if outside.any():
                raise DatasetLayoutError(
                    f"{hpfs['label_path'][i]}: point (row={points[outside][0][0]:g}, col={points[outside][0][1]:g}) "
                    f"lies outside its {height}x{width} image (expected 'row,col', row first)"
                )
        shapes = images.shapes.copy()
        shapes[~usable] = 0  # unreadable HPFs yield no patches
        index, counts = build_patch_index(
            shapes, [mitoses[i] for i in range(len(hpfs))], self.sampling
        )
        self.hpfs, self.mitoses, self.images, self.split = hpfs, mitoses, images, split
        self.index, self.index_counts = index, counts
        self._usable = usable
        synthetic = " [SYNTHETIC DATA]" if self.is_synthetic else ""
        log.info(
            f"{self.name}{synthetic}: {len(hpfs)} HPFs of {hpfs['case'].nunique()} cases, "
            f"{counts['mitoses']} mitoses → {counts['positives']} positive patches, "
            f"{counts['negatives']} negative windows ({counts['ignored']} ignored by IoA)"
        )

    def _apply_corrupt_policy(self, bad: list[BadImage]) -> None:
        if self.on_corrupt == "fail":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CorruptImageError(
                f"unreadable image {bad[0].path}: {bad[0].reason}{more}; "
                f"fix or remove it, or set dataset.on_corrupt=skip to leave it out"
            )
        self.skipped = list(bad)
        log.warning(f"dataset.on_corrupt=skip: leaving out {len(bad)} unreadable HPF(s)")

    def index_fingerprint(self) -> str:
        """A digest of the patch index (rows of mined false positives refer to it)."""
        assert self.index is not None
        digest = hashlib.sha256()
        for column in self.index.columns:
            digest.update(np.ascontiguousarray(self.index[column].to_numpy()).tobytes())
        return digest.hexdigest()[:16]

    # ---- subsets ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._materialise()
        assert self.hpfs is not None and self.split is not None
        subsets = subsets_for_fold(self.split, self.fold)
        subset_of_case = {case: name for name, members in subsets.items() for case in members}
        self.subset_of_hpf = self.hpfs["case"].map(subset_of_case).fillna("").to_numpy()
        for subset in ("train", "test"):
            if not (self.subset_of_hpf == subset).any():
                raise ConfigError(
                    f"fold={self.fold} of split {self.split_spec.scheme!r} has no {subset} cases"
                )

    def hpf_ids(self, subset: str) -> np.ndarray:
        """Usable HPFs (rows of ``hpfs``) of ``train``, ``val`` or ``test`` in this fold."""
        assert self.subset_of_hpf is not None
        return np.flatnonzero((self.subset_of_hpf == subset) & self._usable)

    def patch_rows(self, subset: str, originals_only: bool = False) -> np.ndarray:
        """Patch-index rows of the HPFs of ``subset`` (positives: only un-augmented ones if asked)."""
        assert self.index is not None
        mask = np.isin(self.index["hpf"].to_numpy(), self.hpf_ids(subset))
        if originals_only:
            mask &= (self.index["label"].to_numpy() == 0) | self.index["original"].to_numpy()
        return np.flatnonzero(mask)

    def use_hard_examples(
        self,
        false_positives: np.ndarray,
        ratios: Sequence[float] = (1, 1, 3),
        epoch_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        """Train on negatives : positives : false positives drawn in ``ratios`` (None: all patches)."""
        self.hard_examples = (
            np.asarray(false_positives, dtype=np.int64),
            tuple(ratios),
            epoch_samples,
            seed,
        )

    def use_unlabelled_test_set(self, enabled: bool = True) -> None:
        """Make ``test_dataloader`` serve the unlabelled test cases (``mitoses-test-image-data``)."""
        self.detect_unlabelled = enabled

    def unlabelled_hpfs(self) -> tuple[pd.DataFrame, MemmapImageCache] | None:
        """The unlabelled test HPFs and their normalised cache (built on first use), or None."""
        if self.unlabelled is None:
            table = scan_test_set(self.root)
            if table.empty:
                return None
            cache = self._normalised_cache([Path(p) for p in table["path"]], f"{self.name}-test")
            if cache.bad:
                self._apply_corrupt_policy(cache.bad)
            self.unlabelled = (table, cache)
        return self.unlabelled

    # ---- loaders ----------------------------------------------------------------------------------
    def _eval_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            return UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return None

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            **kwargs,
        )

    def refined_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training rows of (negatives that are not false positives, positives, false positives)."""
        assert self.hard_examples is not None and self.index is not None
        rows = self.patch_rows("train")
        labels = self.index["label"].to_numpy()[rows]
        hard = np.intersect1d(self.hard_examples[0], rows)
        negatives = np.setdiff1d(rows[labels == 0], hard)
        return negatives, rows[labels == 1], hard

    def train_dataloader(self) -> DataLoader:
        assert self.images is not None and self.index is not None
        if self.hard_examples is None:
            dataset = PatchDataset(self.images, self.index, self.patch_rows("train"))
            drop = self._drop_lone_sample(len(dataset))
            return self._loader(dataset, self.batch_size, shuffle=True, drop_last=drop)
        _, ratios, epoch_samples, seed = self.hard_examples
        groups = self.refined_groups()
        rows = np.concatenate(groups)
        offsets = np.cumsum([0, *(len(g) for g in groups)])
        positions = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(groups))]
        ratios = [r if len(g) else 0.0 for r, g in zip(ratios, groups)]
        if epoch_samples is None:
            # every false positive once per epoch (or, with none mined, every positive)
            anchor = 2 if len(groups[2]) and ratios[2] > 0 else 1
            epoch_samples = round(len(groups[anchor]) * sum(ratios) / ratios[anchor])
        sampler = RatioSampler(positions, ratios, int(epoch_samples), seed=seed)
        dataset = PatchDataset(self.images, self.index, rows)
        drop = self._drop_lone_sample(len(sampler))
        return self._loader(dataset, self.batch_size, sampler=sampler, drop_last=drop)

    def _drop_lone_sample(self, n_samples: int) -> bool:
        """Drop a training batch of one sample (BatchNorm cannot train on it; utils/batchnorm.py)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return lone_last_batch(n_samples, self.batch_size, world_size)

    def val_dataloader(self) -> DataLoader:
        assert self.images is not None and self.index is not None
        rows = self.patch_rows("val", originals_only=self.val_positives == "original")
        dataset = PatchDataset(self.images, self.index, rows)
        return self._loader(dataset, self.eval_batch_size, sampler=self._eval_sampler(dataset))

    def predict_dataloader(self) -> DataLoader:
        """Every training-case patch (positives and negatives), for hard-example mining."""
        assert self.images is not None and self.index is not None
        dataset = PatchDataset(self.images, self.index, self.patch_rows("train"))
        return self._loader(dataset, self.eval_batch_size, sampler=self._eval_sampler(dataset))

    def test_dataloader(self) -> DataLoader:
        """Whole HPFs, one per batch: the held-out fold's (or the unlabelled test set's)."""
        assert self.images is not None
        if self.detect_unlabelled:
            unlabelled = self.unlabelled_hpfs()
            if unlabelled is None:
                raise DatasetLayoutError(
                    f"no unlabelled test set under {self.root} (mitoses-test-image-data/)"
                )
            table, cache = unlabelled
            usable = ~table["path"].isin({b.path for b in cache.bad}).to_numpy()
            dataset = HpfDataset(cache, np.flatnonzero(usable), None)
        else:
            dataset = HpfDataset(self.images, self.hpf_ids("test"), self.mitoses)
        return self._loader(dataset, 1, sampler=self._eval_sampler(dataset), collate_fn=first_item)

    # ---- reporting --------------------------------------------------------------------------------
    def hpf_name(self, hpf: int, unlabelled: bool = False) -> tuple[str, str]:
        """``(case, NN)`` of an HPF row."""
        table = self.unlabelled[0] if unlabelled and self.unlabelled else self.hpfs
        assert table is not None
        return str(table["case"].iloc[hpf]), str(table["name"].iloc[hpf])

    def describe(self) -> dict[str, Any]:
        """What the run report records about the data."""
        info: dict[str, Any] = {
            "dataset": self.name,
            "root": str(self.root),
            "synthetic": self.is_synthetic,
            "fold": self.fold,
            "split": self.split_spec.__dict__,
            "microns_per_pixel": self.microns_per_pixel,
            "stain_normalization": self.stain_normalization,
            "sampling": self.sampling.__dict__,
            "patch_index": self.index_counts,
            "skipped_images": [b.path for b in self.skipped],
        }
        if self.subset_of_hpf is not None and self.index is not None:
            labels = self.index["label"].to_numpy()
            hpf_of_row = self.index["hpf"].to_numpy()
            for subset in ("train", "val", "test"):
                ids = self.hpf_ids(subset)
                rows = np.isin(hpf_of_row, ids)
                info[subset] = {
                    "cases": int(pd.Series(self.hpfs["case"].to_numpy()[ids]).nunique()),
                    "hpfs": len(ids),
                    "mitoses": int(sum(len(self.mitoses[i]) for i in ids)),
                    "positive_patches": int((rows & (labels == 1)).sum()),
                    "negative_patches": int((rows & (labels == 0)).sum()),
                }
        return info


__all__ = ["HpfDataset", "PatchDataset", "Tupac16DataModule", "first_item"]
