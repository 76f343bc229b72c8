"""Samplers for training sets made of several groups drawn in fixed proportions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def allocate(total: int, ratios: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integers proportional to ``ratios`` (largest remainders; the sum is exact)."""
    weights = np.asarray(ratios, dtype=np.float64)
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


class RatioSampler(Sampler[int]):
    """Every epoch draws exactly ``allocate(num_samples, ratios)`` items from the groups, shuffled together.

    CHS-Net §3.2/§4.2.3 trains the refined network on negatives : positives : false positives sampled
    1 : 1 : 3. Within a group, items are taken without replacement and in a fresh random order, cycling
    through the group when it has fewer items than its share (so every item is seen equally often).

    Args:
        groups: dataset positions of each group.
        ratios: the proportions (one per group); groups with ratio 0 are never drawn.
        num_samples: items per epoch.
        seed: random seed; the epoch's order is a function of ``(seed, epoch)``, identical in every process.
    """

    def __init__(
        self, groups: Sequence[np.ndarray], ratios: Sequence[float], num_samples: int, seed: int = 0
    ) -> None:
        if len(groups) != len(ratios):
            raise ValueError(f"{len(groups)} groups but {len(ratios)} ratios")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"ratios {list(ratios)} must be >= 0 and not all 0")
        empty = [i for i, (g, r) in enumerate(zip(groups, ratios)) if r > 0 and len(g) == 0]
        if empty:
            raise ValueError(f"group(s) {empty} are empty but have a non-zero ratio")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.ratios = [float(r) for r in ratios]
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.counts = allocate(self.num_samples, self.ratios)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> np.ndarray:
        """The positions drawn in ``epoch``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        parts = []
        for group, count in zip(self.groups, self.counts):
            if count == 0:
                continue
            cycles = -(-count // len(group))
            order = np.concatenate([rng.permutation(group) for _ in range(cycles)])
            parts.append(order[:count])
        drawn = np.concatenate(parts)
        return drawn[rng.permutation(len(drawn))]

    def __iter__(self) -> Iterator[int]:
        drawn = self.indices(self.epoch)
        self.epoch += 1
        return iter(drawn.tolist())


__all__ = ["RatioSampler", "allocate"]
