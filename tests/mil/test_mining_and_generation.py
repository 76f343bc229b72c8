"""Eq. 3 hard-negative mining and SB / MB / FMB bag generation against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from histo_lightning.methods.li_mil.bag_generation import (
    BagSizeStats,
    allocate,
    cap_allocation,
    cluster_bags,
    draw_bag_sizes,
    kmeans_clusters,
    random_bags,
    single_bag,
)
from histo_lightning.methods.li_mil.mining import (
    false_positive_bags,
    hard_instances,
    mine_hard_negatives,
)


def test_false_positive_bags_are_negative_bags_predicted_positive() -> None:
    labels = [0, 0, 1, 0, 1, 0]
    probs = [0.9, 0.2, 0.8, 0.5, 0.1, 0.49]
    assert false_positive_bags(labels, probs).tolist() == [0, 3]
    assert false_positive_bags(labels, probs, threshold=0.95).tolist() == []


def test_eq_3_hand_worked() -> None:
    # w = (0.1, 0.1, 0.1, 0.7): mean 0.25, population std sqrt((3·0.15² + 0.45²)/4) = 0.2598...
    # threshold 0.5098: only the 0.7 instance is hard
    assert hard_instances([0.1, 0.1, 0.1, 0.7], k=1).tolist() == [3]
    # w = (0.4, 0.35, 0.15, 0.1): mean 0.25, std sqrt(0.065 / 4) = 0.1275 → threshold 0.3775: only 0.4
    assert hard_instances([0.4, 0.35, 0.15, 0.1], k=1).tolist() == [0]
    # k = 0: everything at or above the mean
    assert hard_instances([0.4, 0.35, 0.15, 0.1], k=0).tolist() == [0, 1]
    # equal weights (std 0): every instance is at the threshold, so every one is hard
    assert hard_instances([0.2] * 5).tolist() == [0, 1, 2, 3, 4]
    assert hard_instances([1.0]).tolist() == [0]


def test_mining_collects_hard_negatives_of_false_positive_bags_only() -> None:
    labels = [0, 1, 0, 0]
    probs = [0.8, 0.9, 0.3, 0.7]
    attention = [[0.1, 0.1, 0.1, 0.7], [0.9, 0.1], [0.5, 0.5], [0.4, 0.35, 0.15, 0.1]]
    members = [[10, 11, 12, 13], [20, 21], [30, 31], [40, 41, 42, 43]]
    result = mine_hard_negatives(labels, probs, attention, members, k=1.0)
    assert result.bags.tolist() == [0, 3]
    assert result.instances.tolist() == [13, 40]
    assert result.source_bag.tolist() == [0, 3]
    assert np.allclose(result.weights, [0.7, 0.4])
    assert result.describe() == {"false_positive_bags": 2, "hard_negatives": 2}
    empty = mine_hard_negatives([0, 1], [0.1, 0.9], [[1.0], [1.0]], [[0], [1]])
    assert empty.instances.size == 0 and empty.bags.size == 0


def test_bag_size_statistics_and_draws_respect_z_min_z_max() -> None:
    stats = BagSizeStats.from_sizes([10, 20, 30, 300])
    assert (stats.z_min, stats.z_max) == (10, 300) and stats.mean == 90.0
    assert np.isclose(stats.std, np.std([10, 20, 30, 300]))
    sizes = draw_bag_sizes(5000, stats, np.random.default_rng(0))
    assert sizes.min() == 10 and sizes.max() <= 300  # wide σ: both clips are hit
    assert (sizes == 10).sum() > 100


def test_single_bag_holds_all_hard_negatives() -> None:
    bags = single_bag([5, 9, 2])
    assert len(bags.members) == 1 and bags.members[0].tolist() == [5, 9, 2]
    assert bags.labels.tolist() == [0] and bags.method == "SB"
    with pytest.raises(ValueError, match="no hard negative"):
        single_bag([])


def test_random_bags_respect_sizes_hard_negatives_and_labels() -> None:
    hard = np.array([3, 17, 42, 99, 120, 121, 500])
    stats = BagSizeStats(mean=5.0, std=3.0, z_min=2, z_max=9)
    bags = random_bags(hard, 300, stats, np.random.default_rng(0))
    assert len(bags.members) == 300 and (bags.labels == 0).all() and bags.method == "MB"
    assert bags.sizes.min() >= 2 and bags.sizes.max() <= 9
    assert all(set(m.tolist()) <= set(hard.tolist()) for m in bags.members)
    # a bag never holds an instance twice; sizes above the pool (7) are capped and counted
    assert all(len(set(m.tolist())) == len(m) for m in bags.members)
    assert bags.sizes.max() <= len(hard) and bags.capped == sum(s > 7 for s in bags.drawn_sizes) > 0
    big = random_bags(hard[:3], 5, BagSizeStats(8.0, 0.0, 8, 8), np.random.default_rng(0))
    assert (big.sizes == 3).all() and big.capped == 5
    assert big.describe()["capped_bags"] == 5 and big.describe()["drawn_size"] == {
        "min": 8,
        "max": 8,
    }


def test_fmb_bags_never_repeat_an_instance_and_fill_from_other_clusters() -> None:
    hard, features, _ = _clustered((6, 3, 1))  # 10 hard negatives; bags of 8 to 20 drawn
    clusters = kmeans_clusters(features, 3, seed=0)
    stats = BagSizeStats(mean=12.0, std=4.0, z_min=8, z_max=20)
    bags = cluster_bags(hard, clusters, 200, stats, np.random.default_rng(2), "proportional")
    assert all(len(set(m.tolist())) == len(m) for m in bags.members)
    assert bags.sizes.max() == 10 and bags.sizes.min() >= 8
    # every bag got min(drawn size, 10) instances, each cluster at most its own size
    assert bags.sizes.tolist() == [min(d, 10) for d in bags.drawn_sizes]
    _, n_j = np.unique(clusters, return_counts=True)
    assert all((np.bincount(c, minlength=3) <= n_j).all() for c in bags.clusters)
    assert bags.capped == sum(d > 10 for d in bags.drawn_sizes) > 0
    # a full cluster's share goes to the cluster furthest below its share
    assert cap_allocation(
        np.array([5, 1, 0]), np.array([3, 3, 3]), np.array([0.5, 0.3, 0.2])
    ).tolist() == [3, 2, 1]


def _clustered(n_per: tuple[int, ...] = (60, 30, 10)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    features = np.concatenate([c + rng.normal(0, 0.3, (n, 2)) for c, n in zip(centres, n_per)])
    truth = np.repeat(np.arange(len(n_per)), n_per)
    hard = np.arange(len(features)) * 7 + 1000  # global instance indices
    return hard, features, truth


def test_kmeans_recovers_the_feature_groups() -> None:
    _, features, truth = _clustered()
    found = kmeans_clusters(features, 3, seed=0)
    # same partition up to relabelling
    pairs = {(int(a), int(b)) for a, b in zip(found, truth)}
    assert len(pairs) == 3
    assert kmeans_clusters(features[:2], 5).tolist() in ([0, 1], [1, 0])  # c capped at M


@pytest.mark.parametrize("allocation", ["proportional", "multinomial"])
def test_fmb_bags_follow_p_j_over_many_draws(allocation: str) -> None:
    hard, features, _ = _clustered()
    clusters = kmeans_clusters(features, 3, seed=0)
    stats = BagSizeStats(mean=12.0, std=4.0, z_min=5, z_max=20)
    bags = cluster_bags(hard, clusters, 2000, stats, np.random.default_rng(1), allocation)
    assert bags.method == "FMB" and (bags.labels == 0).all()
    assert bags.sizes.min() >= 5 and bags.sizes.max() <= 20
    assert set(np.concatenate(bags.members).tolist()) <= set(hard.tolist())
    drawn = np.concatenate(bags.clusters)
    _, n_j = np.unique(clusters, return_counts=True)
    p_j = n_j / n_j.sum()
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(share, p_j, atol=0.01)
    # members and their clusters agree
    lookup = dict(zip(hard.tolist(), clusters.tolist()))
    assert all(
        lookup[m] == c for ms, cs in zip(bags.members, bags.clusters) for m, c in zip(ms, cs)
    )


def test_proportional_allocation_is_exact_in_expectation_and_stratified() -> None:
    p = np.array([0.6, 0.3, 0.1])
    rng = np.random.default_rng(0)
    counts = np.array([allocate(7, p, rng, "proportional") for _ in range(20000)])
    assert (counts.sum(1) == 7).all()
    assert np.allclose(counts.mean(0), 7 * p, atol=0.02)
    # stratified: every bag's count of cluster j is floor or ceil of size · P_j
    assert set(counts[:, 0].tolist()) <= {4, 5} and set(counts[:, 2].tolist()) <= {0, 1}
    multinomial = np.array([allocate(7, p, rng, "multinomial") for _ in range(2000)])
    assert multinomial[:, 0].max() > 5  # the literal per-instance draw is not stratified
