"""Digits bags (scikit-learn, zero download) and MNIST bags from IDX files: Ilse's MNIST-bags protocol."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from histo_lightning.data.datasets.digits_bags import (
    BagSampling,
    digits_bags,
    digits_pools,
    mnist_bags,
    read_idx,
    sample_bags,
)
from histo_lightning.errors import ConfigError, DatasetLayoutError


def test_defaults_are_ilse_protocol_balanced_and_labelled_by_the_target() -> None:
    bags = digits_bags()
    train, test = bags["train"], bags["test"]
    assert len(train) == 100 and len(test) == 200
    for subset in (train, test):
        assert subset.labels.sum() == len(subset) // 2  # balanced
        assert subset.instances.shape[1:] == (8, 8, 1) and subset.instances.dtype == np.uint8
        for b in range(len(subset)):
            members = subset.members(b)
            assert subset.labels[b] == int(subset.instance_labels[members].any())
        sizes = subset.bag_sizes
        assert sizes.min() >= 1 and 8.5 < sizes.mean() < 11.5 and 1.0 < sizes.std() < 3.5
    # the key instances are the target digit 9: compare with the pool's labels
    pools = digits_pools()
    images, digits = pools["train"]
    pool_index = train.coords[:, 0]
    np.testing.assert_array_equal(train.instances[..., 0], images[pool_index])
    np.testing.assert_array_equal(train.instance_labels, (digits[pool_index] == 9).astype(np.int8))


def test_training_and_test_pools_are_disjoint() -> None:
    pools = digits_pools()
    train = {im.tobytes() + bytes([d]) for im, d in zip(*pools["train"])}
    test = {im.tobytes() + bytes([d]) for im, d in zip(*pools["test"])}
    assert len(pools["train"][0]) + len(pools["test"][0]) == 1797
    # sklearn's digits hold a few exact duplicates; the pools split indices, so overlap is rare
    assert len(train & test) < 10
    bags = digits_bags()
    assert bags["train"].coords[:, 0].max() < len(pools["train"][0])
    assert bags["test"].coords[:, 0].max() < len(pools["test"][0])


def test_seeded_and_configurable() -> None:
    spec = BagSampling(mean_bag_size=20, std_bag_size=1, n_train_bags=50, n_test_bags=10, seed=3)
    first, again = digits_bags(spec), digits_bags(spec)
    np.testing.assert_array_equal(first["train"].instances, again["train"].instances)
    other = digits_bags(BagSampling(n_train_bags=50, n_test_bags=10, seed=4))
    assert len(first["train"]) == 50 and len(first["test"]) == 10
    assert 18 < first["train"].bag_sizes.mean() < 22
    assert other["train"].n_instances != first["train"].n_instances


def test_bag_size_rounding_and_minimum() -> None:
    images = np.zeros((20, 8, 8), np.uint8)
    digits = np.array([9, 1] * 10)

    class FixedRng:
        """normal() returns a fixed value, integers() the first indices."""

        def __init__(self, value: float) -> None:
            self.value = value

        def normal(self, mean: float, std: float) -> float:
            return self.value

        def integers(self, low: int, high: int, size: int) -> np.ndarray:
            return np.arange(size) % high

    for value, rounding, size in ((2.6, "round", 3), (2.6, "truncate", 2), (-3.0, "round", 1)):
        spec = BagSampling(size_rounding=rounding, sampling="unbalanced")
        bags = sample_bags(images, digits, 2, spec, FixedRng(value))  # type: ignore[arg-type]
        assert bags.bag_sizes.tolist() == [size, size]


def test_unbalanced_sampling_is_the_authors_dataloader() -> None:
    bags = digits_bags(BagSampling(sampling="unbalanced", n_train_bags=400, n_test_bags=2))
    share = bags["train"].labels.mean()
    assert 0.5 < share < 0.8  # 1 - 0.9 ** 10 ≈ 0.65


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.sampling"):
        BagSampling(sampling="stratified")
    with pytest.raises(ConfigError, match=r"dataset\.target"):
        BagSampling(target=12)


def _write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _mnist(root: Path, gz: bool, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_bags_from_idx_files_in_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    images, labels = _mnist(tmp_path, gz)
    spec = BagSampling(n_train_bags=6, n_test_bags=4)
    for root in (tmp_path, tmp_path / "MNIST", tmp_path / "MNIST" / "raw"):
        bags = mnist_bags(root, spec)
        train = bags["train"]
        assert len(train) == 6 and train.instances.shape[1:] == (28, 28, 1)
        index = train.coords[:, 0]
        np.testing.assert_array_equal(train.instances[..., 0], images[index])
        np.testing.assert_array_equal(train.instance_labels, (labels[index] == 9).astype(np.int8))


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    _mnist(tmp_path, gz=False)
    raw = tmp_path / "MNIST" / "raw"
    labels = raw / "train-labels-idx1-ubyte"
    with pytest.raises(DatasetLayoutError, match=r"IDX magic number 2049, expected 2051"):
        read_idx(labels, 2051)
    labels.write_bytes(labels.read_bytes()[:-5])
    with pytest.raises(DatasetLayoutError, match=r"train-labels-idx1-ubyte: 55 data bytes"):
        mnist_bags(tmp_path)
    (raw / "t10k-images-idx3-ubyte").unlink()
    labels.unlink()
    _write_idx(labels, np.arange(60) % 10, 2049, gz=False)
    with pytest.raises(DatasetLayoutError, match=r"missing .*t10k-images-idx3-ubyte\[\.gz\]"):
        mnist_bags(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no MNIST IDX files under"):
        mnist_bags(tmp_path / "empty")
