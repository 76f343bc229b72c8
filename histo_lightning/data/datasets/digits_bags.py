"""MIL sanity sets with known key instances: digits bags (zero download) and MNIST bags.

Ilse, Tomczak & Welling (2018) §5.1, "MNIST-bags": a bag is a set of digit images, positive iff it holds
at least one target digit (9); the bag size is drawn from a normal distribution; training and test bags
are drawn from disjoint image pools (MNIST's training and test sets). Every instance keeps its label
(target digit or not), so attention can be scored against it.

* ``digits_bags``: the 1,797 8×8 images of scikit-learn's bundled ``load_digits`` (no download), split
  once into a training pool and a disjoint test pool (``test_pool_fraction``, stratified by digit,
  seeded). Pixel values 0–16 are stored as uint8 0–255 (``round(v * 255 / 16)``).
* ``mnist_bags``: MNIST's IDX files in torchvision's layout,
  ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (magic 2051 / 2049), parsed with
  numpy; the training pool is ``train``, the test pool ``t10k``. ``root`` may also be the ``MNIST``
  or the ``raw`` folder itself.

Bag sampling (:func:`sample_bags`), defaults mean 10, std 2, 100 training / 200 test bags, target 9:

* ``sampling="balanced"`` (default): half of the bags are positive, in alternation starting with a
  positive bag, as the authors' ``mnist_bags_loader.py``: a positive bag is a random bag (size and
  instances drawn afresh) accepted only when it holds a target digit (so its number of targets follows
  the natural conditional distribution); a negative bag draws non-target instances only.
* ``sampling="unbalanced"``: every bag is a random bag, labelled by its content, as their
  ``dataloader.py`` (with mean 10 and p(9) ≈ 0.1, about 65 % of the bags are positive).

In both, instances are drawn uniformly from the pool with replacement, as in the authors' code. Bag size:
``round(N(mean, std))`` (the paper's "closest integer value"), at least 1; ``size_rounding="truncate"``
gives the authors' code's ``int(N(mean, std))`` instead.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import sklearn.datasets
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from histo_lightning.data.bag_datamodule import BAG_SUBSETS, BagDataModule
from histo_lightning.data.bag_folds import repeat_seed
from histo_lightning.data.splits import carve_validation
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.stores.instance_store import BagArrays
from histo_lightning.stores.keys import array_digest

TARGET_DIGIT = 9
SAMPLING = ("balanced", "unbalanced")
ROUNDING = ("round", "truncate")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_LAYOUT = (
    "<root>/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] and {train,t10k}-labels-idx1-ubyte[.gz]"
)


@dataclass(frozen=True)
class BagSampling:
    """How bags are drawn from a pool (see the module docstring). All fields are config values."""

    target: int = TARGET_DIGIT
    mean_bag_size: float = 10.0
    std_bag_size: float = 2.0
    n_train_bags: int = 100
    n_test_bags: int = 200
    sampling: str = "balanced"
    size_rounding: str = "round"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise ConfigError(f"dataset.sampling={self.sampling!r} is not one of {SAMPLING}")
        if self.size_rounding not in ROUNDING:
            raise ConfigError(
                f"dataset.size_rounding={self.size_rounding!r} is not one of {ROUNDING}"
            )
        if not 0 <= self.target <= 9:
            raise ConfigError(f"dataset.target={self.target} must be a digit 0…9")
        if self.mean_bag_size < 1 or self.std_bag_size < 0:
            raise ConfigError("dataset.mean_bag_size must be >= 1 and dataset.std_bag_size >= 0")
        if self.n_train_bags < 2 or self.n_test_bags < 2:
            raise ConfigError("dataset.n_train_bags and dataset.n_test_bags must be at least 2")


def _bag_size(rng: np.random.Generator, spec: BagSampling) -> int:
    value = rng.normal(spec.mean_bag_size, spec.std_bag_size)
    size = int(value) if spec.size_rounding == "truncate" else int(np.floor(value + 0.5))
    return max(1, size)


def sample_bags(
    images: np.ndarray,
    digits: np.ndarray,
    n_bags: int,
    spec: BagSampling,
    rng: np.random.Generator,
    name_prefix: str = "bag",
) -> BagArrays:
    """``n_bags`` bags of ``images`` (a pool, ``(N, H, W)`` or ``(N, H, W, 1)`` uint8) labelled by ``digits``."""
    digits = np.asarray(digits)
    is_target = digits == spec.target
    non_target = np.flatnonzero(~is_target)
    if not is_target.any() or not len(non_target):
        raise ConfigError(f"the pool needs target digits ({spec.target}) and other digits")
    members = []
    for b in range(n_bags):
        if spec.sampling == "unbalanced":
            members.append(rng.integers(0, len(digits), _bag_size(rng, spec)))
        elif b % 2 == 0:  # positive: a random bag accepted only if it holds a target
            while True:
                draw = rng.integers(0, len(digits), _bag_size(rng, spec))
                if is_target[draw].any():
                    members.append(draw)
                    break
        else:  # negative: non-target instances only
            members.append(non_target[rng.integers(0, len(non_target), _bag_size(rng, spec))])
    index = np.concatenate(members)
    instances = images[index]
    if instances.ndim == 3:
        instances = instances[..., None]
    instance_labels = is_target[index].astype(np.int8)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in members])])
    labels = np.array([int(is_target[m].any()) for m in members])
    return BagArrays(
        instances=np.ascontiguousarray(instances, dtype=np.uint8),
        offsets=offsets,
        labels=labels,
        instance_labels=instance_labels,
        coords=np.stack([index, np.zeros_like(index)], 1),  # (pool index, 0): where each came from
        names=[f"{name_prefix}{b}" for b in range(n_bags)],
        origins=[f"{name_prefix}{b}" for b in range(n_bags)],
    )


def digits_pools(
    test_pool_fraction: float = 0.5, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, digits), "test": (...)}``: disjoint pools of scikit-learn's 8×8 digits."""
    if not 0.0 < test_pool_fraction < 1.0:
        raise ConfigError(f"dataset.test_pool_fraction={test_pool_fraction} must be in (0, 1)")
    data = load_digits()
    images = np.floor(data.images * (255.0 / 16.0) + 0.5).astype(np.uint8)
    train, test = train_test_split(
        np.arange(len(images)),
        test_size=test_pool_fraction,
        stratify=data.target,
        random_state=seed,
    )
    return {
        "train": (images[np.sort(train)], data.target[np.sort(train)]),
        "test": (images[np.sort(test)], data.target[np.sort(test)]),
    }


def make_bags(
    pools: dict[str, tuple[np.ndarray, np.ndarray]], spec: BagSampling
) -> dict[str, BagArrays]:
    """Training bags from the training pool and test bags from the disjoint test pool (seeded)."""
    rng_train = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    rng_test = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    return {
        "train": sample_bags(*pools["train"], spec.n_train_bags, spec, rng_train, "train"),
        "test": sample_bags(*pools["test"], spec.n_test_bags, spec, rng_test, "test"),
    }


def digits_bags(
    spec: BagSampling | None = None, test_pool_fraction: float = 0.5, pool_seed: int = 0
) -> dict[str, BagArrays]:
    """The ``digits_bags`` training and test bags (zero download)."""
    return make_bags(digits_pools(test_pool_fraction, pool_seed), spec or BagSampling())


# --------------------------------------------------------------------------------------------
# MNIST IDX files
# --------------------------------------------------------------------------------------------


def _open_idx(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise DatasetLayoutError(f"cannot read {path}: {err}") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX array (big-endian header: magic, then one int32 per dimension, then uint8 data)."""
    path = Path(path)
    raw = _open_idx(path)
    if len(raw) < 8:
        raise DatasetLayoutError(f"{path} is too short for an IDX file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetLayoutError(f"{path}: IDX magic number {found}, expected {magic}")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">i4"))
    if len(raw) - header != int(np.prod(shape)):
        raise DatasetLayoutError(
            f"{path}: {len(raw) - header} data bytes for an IDX array of shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_mnist_raw(root: str | Path) -> Path:
    """The folder holding MNIST's IDX files: ``<root>/MNIST/raw``, ``<root>/raw`` or ``root``."""
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected {MNIST_LAYOUT}"
        )
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if any(
            (candidate / f"{name}{ext}").is_file()
            for name in MNIST_FILES["train"]
            for ext in ("", ".gz")
        ):
            return candidate
    raise DatasetLayoutError(
        f"no MNIST IDX files under {root} (dataset.root); expected {MNIST_LAYOUT}"
    )


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"missing {folder / name}[.gz]; expected {MNIST_LAYOUT}")


def mnist_pools(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images (60000, 28, 28) uint8, digits), "test": (10000 ...)}`` from the IDX files."""
    folder = find_mnist_raw(root)
    pools = {}
    for subset, (image_name, label_name) in MNIST_FILES.items():
        images = read_idx(_idx_file(folder, image_name), IDX_IMAGES_MAGIC)
        labels = read_idx(_idx_file(folder, label_name), IDX_LABELS_MAGIC)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetLayoutError(
                f"{folder}: {subset} images {images.shape} and labels {labels.shape} do not match"
            )
        pools[subset] = (images, labels.astype(np.int64))
    return pools


def mnist_bags(root: str | Path, spec: BagSampling | None = None) -> dict[str, BagArrays]:
    """The ``mnist_bags`` training bags (from ``train``) and test bags (from ``t10k``)."""
    return make_bags(mnist_pools(root), spec or BagSampling())


class DigitPoolBagsDataModule(BagDataModule):
    """The base of ``digits_bags`` and ``mnist_bags``: bags drawn from two pools of digit images, whichever
    images the subclass's :meth:`pools` holds (Ilse et al. §5.1): training bags from the training pool, test bags from the
    disjoint test pool, validation bags carved from the training bags (``split.val_fraction``).

    There are no folds (``fold`` must be 1); ``repeat`` r draws other bags (sampling seed
    ``seed + 1000 · (r − 1)``) and, in the experiments, reseeds training: Ilse et al. report the mean
    over five such repetitions.

    Args:
        fold, split, repeat, batch sizes, ...: see
            :class:`~histo_lightning.data.bag_datamodule.BagDataModule` (``augment`` is off: digits
            are not rotation-invariant).
        target, mean_bag_size, std_bag_size, n_train_bags, n_test_bags, sampling, size_rounding, seed:
            :class:`BagSampling` (the bag-drawing protocol).
    """

    heatmap_style = "mosaic"
    instance_noun = "digits"
    pool_kind: ClassVar[str] = ""

    def __init__(
        self,
        fold: int,
        split: Any,
        target: int = TARGET_DIGIT,
        mean_bag_size: float = 10.0,
        std_bag_size: float = 2.0,
        n_train_bags: int = 100,
        n_test_bags: int = 200,
        sampling: str = "balanced",
        size_rounding: str = "round",
        seed: int = 1,
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(fold, split, augment=augment, **kwargs)
        if fold != 1:
            raise ConfigError(
                f"fold={fold}: {self.display_name} has one training/test protocol (disjoint pools, "
                "Ilse et al. §5.1), so fold must be 1; use repeat=1,2,… for repetitions"
            )
        self.spec = BagSampling(
            target=target,
            mean_bag_size=mean_bag_size,
            std_bag_size=std_bag_size,
            n_train_bags=n_train_bags,
            n_test_bags=n_test_bags,
            sampling=sampling,
            size_rounding=size_rounding,
            seed=repeat_seed(seed, self.repeat),
        )
        self.subset_bags: dict[str, BagArrays] = {}

    def pools(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def read_bags(self) -> BagArrays:
        made = make_bags(self.pools(), self.spec)
        self.subset_bags = made
        train, test = made["train"], made["test"]
        n_train = len(train)
        return BagArrays(
            np.concatenate([train.instances, test.instances]),
            np.concatenate([train.offsets, test.offsets[1:] + train.offsets[-1]]),
            np.concatenate([train.labels, test.labels]),
            np.concatenate([train.instance_labels, test.instance_labels]),
            np.concatenate([train.coords, test.coords]),
            [*train.names, *test.names],
            [f"{self.pool_kind}:train-pool" for _ in range(n_train)]
            + [f"{self.pool_kind}:test-pool" for _ in range(len(test))],
        )

    def bag_subsets(self) -> dict[str, np.ndarray]:
        assert self.bags is not None
        n_train = self.spec.n_train_bags
        train = np.arange(n_train)
        table = pd.DataFrame(
            {"patient": np.asarray(self.bags.names)[train], "label": self.bags.labels[train]}
        )
        val_names = carve_validation(
            table, self.split_spec.val_fraction, seed=self.split_spec.seed * 1000 + 1
        )
        is_val = np.isin(np.asarray(self.bags.names)[train], sorted(val_names))
        return {
            "train": train[~is_val],
            "val": train[is_val],
            "test": np.arange(n_train, len(self.bags)),
        }

    def fold_members(self) -> dict[str, list[str]]:
        self.setup()
        assert self.bags is not None
        names = np.asarray(self.bags.names)
        return {s: sorted(names[self.bag_ids[s]].tolist()) for s in BAG_SUBSETS}

    def data_key(self) -> str:
        assert self.bags is not None
        return array_digest([self.bags.instances, self.bags.offsets, self.bags.labels])

    def sample_settings(self) -> dict[str, Any]:
        return {**super().sample_settings(), "sampling": self.spec.__dict__}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["bag_sampling"] = self.spec.__dict__
        info.pop("split", None)
        info["validation_fraction"] = self.split_spec.val_fraction
        return info


class DigitsBagsDataModule(DigitPoolBagsDataModule):
    """``digits_bags``: scikit-learn's bundled 8×8 digits (no download); see :class:`DigitPoolBagsDataModule`.

    Args:
        test_pool_fraction: share of the 1,797 images in the test pool (stratified by digit).
        pool_seed: the seed of that pool split.
    """

    dataset_name = "digits_bags"
    display_name = "digits bags (scikit-learn 8×8 digits, Ilse's MNIST-bags protocol)"
    root_hint = "nothing (scikit-learn ships the digits)"
    pool_kind = "sklearn-digits"

    def __init__(
        self,
        fold: int,
        split: Any,
        test_pool_fraction: float = 0.5,
        pool_seed: int = 0,
        root: str | None = None,
        **kwargs: Any,
    ) -> None:
        bundled = Path(sklearn.datasets.__file__).parent / "data"
        super().__init__(fold, split, root=root or str(bundled), **kwargs)
        self.test_pool_fraction = float(test_pool_fraction)
        self.pool_seed = int(pool_seed)

    def pools(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return digits_pools(self.test_pool_fraction, self.pool_seed)

    def sample_settings(self) -> dict[str, Any]:
        return {
            **super().sample_settings(),
            "test_pool_fraction": self.test_pool_fraction,
            "pool_seed": self.pool_seed,
        }


class MnistBagsDataModule(DigitPoolBagsDataModule):
    """``mnist_bags``: MNIST's IDX files in torchvision's layout under ``dataset.root`` (training bags
    from ``train``, test bags from ``t10k``); see :class:`DigitPoolBagsDataModule`."""

    dataset_name = "mnist_bags"
    display_name = "MNIST bags (Ilse et al. 2018)"
    root_hint = "the folder holding MNIST/raw/ (torchvision's layout)"
    pool_kind = "mnist"

    def pools(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return mnist_pools(self.root)


__all__ = [
    "MNIST_LAYOUT",
    "TARGET_DIGIT",
    "BagSampling",
    "DigitPoolBagsDataModule",
    "DigitsBagsDataModule",
    "MnistBagsDataModule",
    "digits_bags",
    "digits_pools",
    "find_mnist_raw",
    "make_bags",
    "mnist_bags",
    "mnist_pools",
    "read_idx",
    "sample_bags",
]
