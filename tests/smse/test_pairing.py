"""Pairs and triplets (SMSE Algorithms 1 and 2): sampling invariants, epochs, workers, DDP, balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.sampling.pairing import (
    PairingSampler,
    draw_tuples,
    epoch_anchors,
    fixed_tuples,
)
from histo_lightning.data.torch_datasets import PairedDataset
from histo_lightning.errors import ConfigError

# 3 benign, 9 malignant: the imbalance of BreakHis
LABELS = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1])


def _check_triplets(rows: np.ndarray, labels: np.ndarray) -> None:
    anchor, positive, negative = rows.T
    assert (labels[positive] == labels[anchor]).all(), "a positive is of the anchor's class"
    assert (positive != anchor).all(), "a positive is never the anchor itself"
    assert (labels[negative] != labels[anchor]).all(), "a negative is of another class"


def test_triplets_every_image_is_anchor_once() -> None:
    rows = draw_tuples(LABELS, "triplet", np.random.default_rng(0))
    assert rows.shape == (len(LABELS), 3)
    assert sorted(rows[:, 0]) == list(range(len(LABELS)))
    _check_triplets(rows, LABELS)


def test_pairs_follow_algorithm_1() -> None:
    labels = np.repeat([0, 1], 500)
    rows = draw_tuples(labels, "pair", np.random.default_rng(1))
    anchor, partner, same = rows.T
    assert sorted(anchor) == list(range(len(labels)))
    assert ((labels[partner] == labels[anchor]) == (same == 1)).all()
    assert (partner[same == 1] != anchor[same == 1]).all()
    assert 0.45 < same.mean() < 0.55  # a fair coin picks positive or negative


def test_partners_are_redrawn_every_epoch_and_fixed_by_seed() -> None:
    sampler = PairingSampler(LABELS, "triplet", seed=7)
    epochs = [sampler.tuples(e) for e in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert np.array_equal(PairingSampler(LABELS, "triplet", seed=7).tuples(1), epochs[1])
    assert not np.array_equal(PairingSampler(LABELS, "triplet", seed=8).tuples(1), epochs[1])
    sampler.set_epoch(2)
    assert np.array_equal(np.array(list(sampler)), epochs[2])
    # without set_epoch (a plain loop), each pass is the next epoch
    plain = PairingSampler(LABELS, "triplet", seed=7)
    assert np.array_equal(np.array(list(plain)), epochs[0])
    assert np.array_equal(np.array(list(plain)), epochs[1])


def test_fixed_evaluation_partners() -> None:
    rows = fixed_tuples(LABELS, "triplet", seed=3)
    assert list(rows[:, 0]) == list(range(len(LABELS)))  # in order: each image once, as anchor
    _check_triplets(rows, LABELS)
    assert np.array_equal(rows, fixed_tuples(LABELS, "triplet", seed=3))
    assert not np.array_equal(rows, fixed_tuples(LABELS, "triplet", seed=4))


def test_class_balanced_option() -> None:
    rng = np.random.default_rng(0)
    anchors = epoch_anchors(LABELS, rng, balanced=True)
    counts = np.bincount(LABELS[anchors])
    assert counts[0] == counts[1] == 9  # each class as many anchors as the largest one
    seen = np.bincount(anchors, minlength=len(LABELS))
    assert (seen >= 1).all()  # still every image at least once
    assert set(seen[LABELS == 0]) == {3}  # minority images repeated evenly
    assert len(PairingSampler(LABELS, "pair", balanced=True)) == 18
    # three classes: negatives come from a uniformly chosen other class, not in proportion to its size
    labels = np.array([0] * 50 + [1] * 500 + [2] * 50)
    rows = draw_tuples(labels, "triplet", np.random.default_rng(1), balanced=True)
    _check_triplets(rows, labels)
    neg_of_class1 = labels[rows[labels[rows[:, 0]] == 1, 2]]
    assert 0.4 < (neg_of_class1 == 0).mean() < 0.6
    plain = draw_tuples(labels, "triplet", np.random.default_rng(1))
    assert (labels[plain[labels[plain[:, 0]] == 0, 2]] == 1).mean() > 0.75  # uniform over images


def test_unpairable_sets_are_named() -> None:
    with pytest.raises(ConfigError, match="all 4 images are of class 1"):
        draw_tuples(np.ones(4, int), "triplet", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="class 0 has a single image"):
        PairingSampler(np.array([0, 1, 1]), "pair")
    with pytest.raises(ConfigError, match=r"dataset\.pairing=.quad."):
        draw_tuples(LABELS, "quad", np.random.default_rng(0))


class _IdentityImages(Dataset):
    """Image i is a tensor holding i, so a batch shows which images were served."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.tensor([float(i)]), "label": int(self.labels[i]), "index": i}


def _served_rows(loader: DataLoader) -> np.ndarray:
    rows = []
    for batch in loader:
        rows.append(
            torch.stack([batch["image"][:, 0], batch["positive"][:, 0], batch["negative"][:, 0]], 1)
        )
    return torch.cat(rows).long().numpy()


@pytest.mark.timeout(120)
def test_persistent_workers_see_new_partners_every_epoch() -> None:
    """Partners are drawn in the main process, so persistent workers serve each epoch's new draw."""
    sampler = PairingSampler(LABELS, "triplet", seed=5)
    loader = DataLoader(
        PairedDataset(_IdentityImages(LABELS), "triplet"),
        batch_size=4,
        sampler=sampler,
        num_workers=2,
        persistent_workers=True,
    )
    served = []
    for epoch in range(2):
        sampler.set_epoch(epoch)  # what Lightning does at the start of each epoch
        served.append(_served_rows(loader))
    for epoch, rows in enumerate(served):
        assert np.array_equal(rows, sampler.tuples(epoch))
        _check_triplets(rows, LABELS)
    assert not np.array_equal(served[0], served[1])


def test_lightning_ddp_wrapper_shards_the_same_draw() -> None:
    """Under DDP Lightning wraps the sampler; both ranks draw the same rows and share them out."""
    shards = []
    for rank in (0, 1):
        sampler = PairingSampler(LABELS, "triplet", seed=5)
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True)
        wrapped.set_epoch(3)  # forwarded to our sampler
        assert sampler.epoch == 3
        shards.append([tuple(r) for r in wrapped])
    expected = {
        tuple(int(v) for v in r) for r in PairingSampler(LABELS, "triplet", seed=5).tuples(3)
    }
    assert set(shards[0]) | set(shards[1]) == expected
    assert len(shards[0]) == len(shards[1]) == len(LABELS) // 2


def test_paired_dataset_items() -> None:
    base = _IdentityImages(LABELS)
    pair_rows = fixed_tuples(LABELS, "pair", seed=0)
    item = PairedDataset(base, "pair", fixed=pair_rows)[2]
    assert item["image"].item() == 2 and item["partner"].item() == pair_rows[2, 1]
    assert item["same"] == pair_rows[2, 2]
    assert (item["partner_label"] == item["label"]) == (item["same"] == 1)
    with pytest.raises(TypeError, match="PairingSampler"):
        PairedDataset(base, "triplet")[0]
