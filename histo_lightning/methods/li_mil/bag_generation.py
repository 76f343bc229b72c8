"""Hard-negative bag generation (Li et al. §3.0.3): SB, MB and FMB.

Given the mined hard negatives ``{h_1, …, h_M}`` (global instance indices, :mod:`.mining`), new NEGATIVE
bags are made for retraining:

* **SB** (:func:`single_bag`): all hard negatives in one bag (its size is M, not bounded by the
  training bag sizes).
* **MB** (:func:`random_bags`): several bags; each bag's size is drawn as below and its instances are
  drawn at random from the hard negatives.
* **FMB** (:func:`cluster_bags`): the hard negatives' features (from a pretrained CNN) are clustered by
  K-means into ``c`` groups of ``N_1 … N_c`` instances; each bag's size is drawn as below; its instances
  are drawn cluster by cluster with ``P_j = N_j / Σ N``.

Bag sizes: ``round(N(μ, σ))`` with ``μ, σ`` the mean and (population) standard deviation of the training
bag sizes, clipped to ``[Z_min, Z_max]``, the smallest and largest training bag (§3.0.3).

A generated bag never holds the same instance twice (a bag is a set of instances; a repeated instance
would only weigh more in the attention sum): instances are drawn without replacement, and a drawn size
above the pool (the M hard negatives) is capped at M; FMB takes at most ``N_j`` instances from cluster
``j`` and gives what a cluster cannot supply to the clusters with instances left (those furthest below
their share ``size · P_j`` first). :attr:`GeneratedBags.capped` counts the bags whose drawn size was
capped; ``generation.json`` reports it (few hard negatives: mining on the training bags often finds
fewer hard negatives than a training bag holds).

The paper leaves how FMB's "weighted sampling strategy" draws from the clusters open. Drawing each
instance's cluster independently with ``P_j`` (``allocation="multinomial"``) and then an instance of it
uniformly gives every hard negative the same chance ``1/ΣN``: FMB would equal MB in distribution and the
clustering would do nothing. The default ``allocation="proportional"`` reads "select diverse patches
into each negative bag" (§3.0.3) as stratified sampling: each bag takes ``size · P_j`` instances from
cluster ``j``, the fractional parts rounded by systematic sampling so the expected count is exactly
``size · P_j``; every bag then covers the clusters in proportion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans

ALLOCATIONS = ("proportional", "multinomial")


@dataclass(frozen=True)
class BagSizeStats:
    """μ, σ, Z_min, Z_max of the training bag sizes."""

    mean: float
    std: float
    z_min: int
    z_max: int

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> BagSizeStats:
        sizes = np.asarray(sizes, dtype=np.float64)
        if len(sizes) == 0 or sizes.min() < 1:
            raise ValueError("training bag sizes must be a non-empty list of positive integers")
        return cls(float(sizes.mean()), float(sizes.std()), int(sizes.min()), int(sizes.max()))


@dataclass
class GeneratedBags:
    """New negative bags: ``members[b]`` are global instance indices; ``clusters[b]`` (FMB) their clusters."""

    method: str
    members: list[np.ndarray]
    clusters: list[np.ndarray] = field(default_factory=list)
    #: the sizes drawn before capping at the pool of hard negatives (MB, FMB)
    drawn_sizes: list[int] = field(default_factory=list)

    @property
    def capped(self) -> int:
        """How many bags were made smaller than their drawn size (the pool held fewer instances)."""
        return sum(int(d > len(m)) for d, m in zip(self.drawn_sizes, self.members))

    @property
    def labels(self) -> np.ndarray:
        return np.zeros(len(self.members), dtype=np.int64)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)

    def describe(self) -> dict:
        sizes = self.sizes
        return {
            "method": self.method,
            "bags": len(self.members),
            "instances": int(sizes.sum()),
            "unique_instances": len(np.unique(np.concatenate(self.members))) if self.members else 0,
            "bag_size": {"min": int(sizes.min()), "max": int(sizes.max())} if len(sizes) else {},
            "capped_bags": self.capped,
            **(
                {"drawn_size": {"min": min(self.drawn_sizes), "max": max(self.drawn_sizes)}}
                if self.drawn_sizes
                else {}
            ),
        }


def draw_bag_sizes(n: int, stats: BagSizeStats, rng: np.random.Generator) -> np.ndarray:
    """``n`` sizes ``round(N(μ, σ))`` clipped to ``[Z_min, Z_max]``."""
    sizes = np.floor(rng.normal(stats.mean, stats.std, size=n) + 0.5)
    return np.clip(sizes, stats.z_min, stats.z_max).astype(np.int64)


def _draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct elements of ``pool`` (``n ≤ len(pool)``: the callers cap it)."""
    if n > len(pool):
        raise ValueError(f"cannot draw {n} distinct instances from a pool of {len(pool)}")
    return rng.choice(pool, size=n, replace=False)


def _check_hard(hard: np.ndarray) -> np.ndarray:
    hard = np.asarray(hard, dtype=np.int64)
    if hard.ndim != 1 or len(hard) == 0:
        raise ValueError("no hard negative instances to build bags from (did mining find any?)")
    return hard


def single_bag(hard: Sequence[int]) -> GeneratedBags:
    """SB: all hard negatives in one bag."""
    return GeneratedBags("SB", [_check_hard(np.asarray(hard)).copy()])


def random_bags(
    hard: Sequence[int], n_bags: int, stats: BagSizeStats, rng: np.random.Generator
) -> GeneratedBags:
    """MB: ``n_bags`` bags of sizes from :func:`draw_bag_sizes`, instances drawn at random."""
    hard = _check_hard(np.asarray(hard))
    sizes = draw_bag_sizes(n_bags, stats, rng)
    members = [_draw(hard, min(int(s), len(hard)), rng) for s in sizes]
    return GeneratedBags("MB", members, drawn_sizes=[int(s) for s in sizes])


def kmeans_clusters(features: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-means cluster of each row of ``features`` (scikit-learn; ``c`` capped at the number of rows)."""
    features = np.asarray(features, dtype=np.float64)
    c = max(1, min(int(n_clusters), len(features)))
    if c == 1:
        return np.zeros(len(features), dtype=np.int64)
    model = KMeans(n_clusters=c, n_init=10, random_state=seed)
    return model.fit_predict(features).astype(np.int64)


def allocate(size: int, p: np.ndarray, rng: np.random.Generator, allocation: str) -> np.ndarray:
    """Instances per cluster for one bag of ``size``: expected ``size · p_j`` (see the module docstring)."""
    if allocation == "multinomial":
        return rng.multinomial(size, p)
    if allocation != "proportional":
        raise ValueError(f"allocation {allocation!r} is not one of {ALLOCATIONS}")
    exact = size * p
    counts = np.floor(exact).astype(np.int64)
    fraction = exact - counts
    remainder = round(float(fraction.sum()))
    if remainder:  # systematic sampling: cluster j gets one more with probability fraction[j]
        points = rng.uniform() + np.arange(remainder)
        edges = np.concatenate([[0.0], np.cumsum(fraction)])
        chosen = np.searchsorted(edges, points, side="right") - 1
        np.add.at(counts, np.clip(chosen, 0, len(p) - 1), 1)
    return counts


def cap_allocation(counts: np.ndarray, capacity: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``counts`` per cluster with none above its ``capacity``: what a full cluster cannot supply goes,
    one instance at a time, to the cluster with room that is furthest below its share ``p_j · size``
    (ties: the lower index). ``counts.sum() ≤ capacity.sum()`` is required."""
    counts = np.asarray(counts, dtype=np.int64).copy()
    capacity = np.asarray(capacity, dtype=np.int64)
    size = int(counts.sum())
    if size > int(capacity.sum()):
        raise ValueError(f"a bag of {size} from clusters of {capacity.sum()} instances in all")
    excess = int(np.maximum(counts - capacity, 0).sum())
    counts = np.minimum(counts, capacity)
    for _ in range(excess):
        deficit = np.where(counts < capacity, size * p - counts, -np.inf)
        counts[int(np.argmax(deficit))] += 1
    return counts


def cluster_bags(
    hard: Sequence[int],
    clusters: Sequence[int],
    n_bags: int,
    stats: BagSizeStats,
    rng: np.random.Generator,
    allocation: str = "proportional",
) -> GeneratedBags:
    """FMB: bags drawn cluster by cluster with ``P_j = N_j / Σ N``.

    Args:
        hard: global indices of the hard negatives.
        clusters: the cluster of each hard negative (e.g. :func:`kmeans_clusters` of their features).
        n_bags: how many bags to make.
        stats: training bag size statistics.
        allocation: ``proportional`` (default) or ``multinomial`` (see the module docstring).
    """
    hard = _check_hard(np.asarray(hard))
    clusters = np.asarray(clusters, dtype=np.int64)
    if clusters.shape != hard.shape:
        raise ValueError(f"{len(clusters)} cluster ids for {len(hard)} hard negatives")
    ids, counts = np.unique(clusters, return_counts=True)
    p = counts / counts.sum()
    pools = [np.flatnonzero(clusters == j) for j in ids]
    members, member_clusters = [], []
    drawn = draw_bag_sizes(n_bags, stats, rng)
    for size in drawn:
        size = min(int(size), len(hard))
        per_cluster = cap_allocation(allocate(size, p, rng, allocation), counts, p)
        positions = np.concatenate(
            [_draw(pool, int(n), rng) for pool, n in zip(pools, per_cluster) if n > 0]
        )
        members.append(hard[positions])
        member_clusters.append(clusters[positions])
    return GeneratedBags("FMB", members, member_clusters, [int(s) for s in drawn])


__all__ = [
    "ALLOCATIONS",
    "BagSizeStats",
    "GeneratedBags",
    "allocate",
    "cap_allocation",
    "cluster_bags",
    "draw_bag_sizes",
    "kmeans_clusters",
    "random_bags",
    "single_bag",
]
