"""The data module every multiple-instance dataset derives from: bags over instances held once.

:class:`BagDataModule` (a :class:`~histo_lightning.data.base.BaseDataModule`) does, once for Colon, UCSB,
digits bags and MNIST bags, what does not depend on the dataset:

* **folds over bags** (images: Colon and UCSB ship no patient ids), dealt by the versioned split file
  stratified by bag label (:mod:`histo_lightning.data.bag_folds`); ``repeat`` (the top-level key, 1, 2, …)
  reshuffles them with the split seed ``split.seed + 1000 · (repeat − 1)`` (Li et al. §4.0.2: "10-fold/
  4-fold cross-validation and five repetitions"); the experiments reseed training with the same rule;
* **loaders of bags**: ``batch_size`` bags per step (the papers: 1), padded to the largest bag with a mask
  (:func:`~histo_lightning.data.bags.collate_bags`; padding gets zero attention, so a padded batch equals
  its bags one at a time); evaluation loaders are exact under DDP (every bag once, the base's sampler);
  training bags get the random flips and rotations of §4.0.1 (``augment``);
* **predict subsets** for the stages: ``train``/``val``/``test`` are the bags of the fold (mining predicts
  ``train``: items padded to the subset's largest bag, so per-instance outputs have one width), and
  ``instances`` is every instance of the dataset one by one (a frozen encoder writes their features once
  into the shared feature cache, for FMB and for feature bags); :meth:`sample_manifest` names each row;
* **feature bags** (:meth:`use_features`): the same bags over rows of an ``N × D`` feature matrix (the
  feature cache of ``instances``) instead of pixels, for an identity instance encoder (the whole-slide way);
* **generated bags** (:meth:`add_generated_bags`): hard-negative bags (Li et al. §3.0.3) added to the
  training set of this fold for retraining; validation and test bags never change;
* **counts** of images, bags, instances, positive bags and key instances per subset in :meth:`describe`
  (``run_info.json``) and the log. A method's training settings for the dataset (Li et al.'s protocol,
  ``method.protocol``) are not the data's: they live in ``conf/protocol/li_mil/``.

A dataset module sets the class attributes and implements :meth:`read_bags` (build or open its instance
store) and :meth:`data_key`; datasets without folds (digits bags: disjoint training and test pools)
override :meth:`bag_subsets` and :meth:`fold_members`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.bag_folds import bag_table, repeat_spec
from histo_lightning.data.bags import (
    BagDataset,
    FeatureBagDataset,
    InstanceBagDataset,
    InstanceDataset,
)
from histo_lightning.data.base import BaseDataModule
from histo_lightning.errors import ConfigError
from histo_lightning.stores.instance_store import Bags, InstanceStore
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

BAG_SUBSETS = ("train", "val", "test")
INSTANCES = "instances"
#: how test-bag heatmaps draw an instance: a marker at its centre, its grid cell, or a mosaic tile
HEATMAP_STYLES = ("markers", "grid", "mosaic")


def subset_counts(bags: Bags, ids: np.ndarray, extra: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """Bags, positive/negative bags, instances and key instances of the bags ``ids`` (+ ``extra``)."""
    sizes = bags.bag_sizes[ids] if len(ids) else np.zeros(0, np.int64)
    labels = bags.labels[ids]
    members = [bags.members(int(b)) for b in ids]
    instance_labels = (
        bags.instance_labels[np.concatenate(members)] if members else np.zeros(0, np.int8)
    )
    known = (instance_labels >= 0).any()
    out: dict[str, Any] = {
        "bags": len(ids),
        "positive_bags": int((labels == 1).sum()),
        "negative_bags": int((labels == 0).sum()),
        "instances": int(sizes.sum()),
        "key_instances": int((instance_labels == 1).sum()) if known else None,
    }
    if len(extra):
        out["generated_negative_bags"] = len(extra)
        out["generated_instances"] = int(sum(len(m) for m in extra))
    return out


class BagDataModule(BaseDataModule):
    """Bags of one multiple-instance dataset for one fold (see the module docstring).

    Args:
        fold: the test fold, 1…K. split: the ``split`` group (``patient_kfold``: the bag is the patient).
        repeat: the repetition of the protocol (1-based; reshuffles the folds).
        augment: random flips and 90° rotations of training instances (§4.0.1; pixel bags only).
        batch_size: bags per training step (the papers: 1); eval_batch_size: bags per evaluation step.
        **kwargs: :class:`~histo_lightning.data.base.BaseDataModule` arguments.
    """

    #: the image an instance comes from is drawn under the heatmap (``markers``, ``grid``) or not
    heatmap_style: ClassVar[str] = "markers"
    #: what instances are (messages, reports)
    instance_noun: ClassVar[str] = "instances"
    persistent_workers = (
        False  # evaluation loaders of many small stages: no workers kept between them
    )

    def __init__(
        self,
        fold: int,
        split: Mapping[str, Any],
        repeat: int = 1,
        augment: bool = True,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            fold,
            split,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            **kwargs,
        )
        if batch_size < 1:
            raise ConfigError(f"dataset.batch_size={batch_size}: at least one bag per step")
        self.repeat = int(repeat)
        self.base_split_seed = self.split_spec.seed
        self.split_spec = repeat_spec(self.split_spec, self.repeat)  # checks repeat
        self.augment = bool(augment)
        self.bags: Bags | None = None
        self.bag_ids: dict[str, np.ndarray] = {}
        self.generated: list[np.ndarray] = []
        self.generated_source: str | None = None
        self.features: Any = None
        self.features_source: str | None = None

    # ---- what a dataset provides ----------------------------------------------------------------------
    def read_bags(self) -> Bags:
        """Read the dataset and build (or open) its instance store."""
        raise NotImplementedError

    def image_path(self, bag: int) -> Path | None:
        """The image bag ``bag`` was cut from (heatmaps draw on it), or None."""
        return None

    def patch_size(self) -> int:
        """The side of an instance in pixels."""
        assert self.bags is not None
        return int(self.bags.instances.shape[1])

    # ---- reading and folds --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.bags is None:
            self.bags = self.read_bags()
            if len(self.bags) < 2:
                raise ConfigError(f"{self.display_name}: found {len(self.bags)} bag(s), need two")

    def bag_subsets(self) -> dict[str, np.ndarray]:
        """The bags (rows of ``bags``) of ``train``, ``val`` and ``test`` in this fold."""
        assert self.bags is not None
        self.load_split(bag_table(self.bags.names, self.bags.labels.tolist()))
        position = {name: i for i, name in enumerate(self.bags.names)}
        members = self.fold_members()
        return {
            s: np.array(sorted(position[n] for n in members.get(s, [])), dtype=np.int64)
            for s in BAG_SUBSETS
        }

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        if self.bag_ids:
            return
        self.bag_ids = self.bag_subsets()
        for subset in ("train", "test"):
            if not len(self.bag_ids[subset]):
                raise ConfigError(
                    f"fold={self.fold} of {self.name} (split {self.split_spec.scheme}) has no "
                    f"{subset} bags"
                )
        synthetic = " [SYNTHETIC DATA]" if self.is_synthetic else ""
        counts = {s: subset_counts(self.bags, ids) for s, ids in self.bag_ids.items()}
        log.info(
            f"{self.name}{synthetic}, fold {self.fold}, repeat {self.repeat} (split seed "
            f"{self.split_spec.seed}): "
            + "; ".join(
                f"{s}: {c['bags']} bags ({c['positive_bags']} positive), {c['instances']} "
                f"{self.instance_noun}"
                + (f", {c['key_instances']} key" if c["key_instances"] is not None else "")
                for s, c in counts.items()
            )
        )

    # ---- what the pipeline changes ------------------------------------------------------------------
    def add_generated_bags(self, members: Sequence[np.ndarray], source: str) -> None:
        """Train on ``members`` (global instance indices per bag) as extra NEGATIVE bags (Li §3.0.3);
        replaces bags added before."""
        assert self.bags is not None
        members = [np.asarray(m, dtype=np.int64) for m in members]
        n = self.bags.n_instances
        for m in members:
            if len(m) == 0 or m.min() < 0 or m.max() >= n:
                raise ValueError(f"generated bag members must be instance indices in 0…{n - 1}")
        self.generated, self.generated_source = members, source
        log.info(
            f"{self.name}: training on {len(members)} generated negative bag(s) "
            f"({sum(len(m) for m in members)} instances) from {source} as well"
        )

    def use_features(self, features: Any, source: str) -> None:
        """Bags of rows of ``features`` (``N × D``, one row per instance of the dataset) from now on."""
        assert self.bags is not None
        if np.ndim(features) != 2 or len(features) != self.bags.n_instances:
            raise ConfigError(
                f"{source}: features of shape {np.shape(features)} for the {self.bags.n_instances} "
                f"instances of {self.name}; expected one row per instance (subset 'instances')"
            )
        self.features, self.features_source = features, source
        log.info(f"{self.name}: bags of {np.shape(features)[1]}-d features from {source}")

    # ---- datasets and loaders ----------------------------------------------------------------------
    def bag_dataset(self, ids: np.ndarray, train: bool = False, pad: bool = False) -> BagDataset:
        """The bags ``ids`` (+ the generated ones for training) over pixels or features."""
        assert self.bags is not None
        members = [self.bags.members(int(b)) for b in ids]
        labels = [int(self.bags.labels[int(b)]) for b in ids]
        if train and self.generated:
            members += self.generated
            labels += [0] * len(self.generated)
        pad_to = max((len(m) for m in members), default=0) if pad else None
        common = {
            "instance_labels": self.bags.instance_labels,
            "coords": self.bags.coords,
            "pad_to": pad_to,
        }
        if self.features is not None:
            return FeatureBagDataset(self.features, members, labels, **common)
        return InstanceBagDataset(
            self.bags.instances, members, labels, augment=train and self.augment, **common
        )

    def _loader(self, subset: str, train: bool) -> DataLoader:
        dataset = self.bag_dataset(self.bag_ids[subset], train=train)
        return self.loader(dataset, train=train, shuffle=train, collate_fn=dataset.collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def validation_loader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def has_validation(self) -> bool:
        self.setup()
        return len(self.bag_ids["val"]) > 0

    # ---- the contract: what the samples are ---------------------------------------------------------
    def _check_subset(self, subset: str) -> None:
        if subset not in (*BAG_SUBSETS, INSTANCES):
            raise ConfigError(
                f"{self.name} has no subset {subset!r}; expected one of {[*BAG_SUBSETS, INSTANCES]}"
            )
        self.setup()

    def predict_dataset(self, subset: str) -> Dataset:
        """``train``/``val``/``test``: the fold's bags, padded to the subset's largest bag;
        ``instances``: every instance of the dataset, one item each (pixels; its feature row when this
        view uses feature bags)."""
        self._check_subset(subset)
        assert self.bags is not None
        if subset == INSTANCES:
            rows = self.features if self.features is not None else self.bags.instances
            return InstanceDataset(rows, self.bags.instance_labels)
        return self.bag_dataset(self.bag_ids[subset], pad=True)

    def sample_manifest(self, subset: str) -> pd.DataFrame:
        """One row per item of :meth:`predict_dataset`: ``index, origin, patient (the bag), label`` and,
        for bags, ``bag, first_instance, n_instances``; for instances, ``bag, x, y``."""
        self._check_subset(subset)
        bags = self.bags
        assert bags is not None
        if subset == INSTANCES:
            bag_of = bags.bag_of_instance()
            names, origins = np.asarray(bags.names), np.asarray(bags.origins)
            return pd.DataFrame(
                {
                    "index": np.arange(bags.n_instances),
                    "origin": origins[bag_of],
                    "patient": names[bag_of],
                    "label": bags.instance_labels.astype(np.int64),
                    "bag": bag_of,
                    "x": bags.coords[:, 0],
                    "y": bags.coords[:, 1],
                }
            )
        ids = self.bag_ids[subset]
        return pd.DataFrame(
            {
                "index": np.arange(len(ids)),
                "origin": [bags.origins[int(b)] for b in ids],
                "patient": [bags.names[int(b)] for b in ids],
                "label": bags.labels[ids],
                "bag": ids,
                "first_instance": bags.offsets[ids],
                "n_instances": bags.bag_sizes[ids],
            }
        )

    def train_bag_sizes(self) -> np.ndarray:
        """Sizes of this fold's training bags (the dataset's own, not the generated ones)."""
        self.setup()
        assert self.bags is not None
        return self.bags.bag_sizes[self.bag_ids["train"]]

    # ---- identity ----------------------------------------------------------------------------------
    def sample_settings(self) -> dict[str, Any]:
        """The dataset's own sample settings. What a stage's view sets (feature bags, generated bags)
        is not here: the stage configs that declare it (their data hooks) and the upstream stages that
        produced it are in the runner's stage fingerprints, and a rerun that skips those stages must
        compute the same data fingerprint as the run that ran them."""
        return {"repeat": self.repeat, "augment": self.augment}

    def describe(self) -> dict[str, Any]:
        """Counts of images, bags, instances, positive bags and key instances, overall and per subset."""
        info = super().describe()
        info.update(
            repeat=self.repeat,
            split_seed=self.split_spec.seed,
            instances="features" if self.features is not None else "pixels",
            features_source=self.features_source,
        )
        if self.bags is not None:
            info["totals"] = {"images": len(self.bags), **self.bags.describe()}
            for subset, ids in self.bag_ids.items():
                extra = self.generated if subset == "train" else ()
                info[subset] = subset_counts(self.bags, ids, extra)
        return info


class ImageBagDataModule(BagDataModule):
    """A bag data module whose bags are images of a scanned folder (Colon, UCSB).

    ``read_bags`` of a subclass sets ``self.scan`` (its reader's result, with an ``images`` table holding
    each bag's ``path`` in bag order) and returns an :class:`InstanceStore`, whose folder name is the key
    of the data (the store is keyed by everything that built it).
    """

    scan: Any = None

    def image_path(self, bag: int) -> Path | None:
        assert self.scan is not None
        return Path(self.scan.images["path"].iloc[bag])

    def data_key(self) -> str:
        assert isinstance(self.bags, InstanceStore)
        return self.bags.folder.name


__all__ = [
    "BAG_SUBSETS",
    "HEATMAP_STYLES",
    "INSTANCES",
    "BagDataModule",
    "ImageBagDataModule",
    "subset_counts",
]
