"""Image pairs and triplets from any image-label dataset: SMSE (Sun et al.) §III-B, Algorithms 1 and 2.

Every image of the dataset is an anchor once per epoch. For each anchor ``x_i`` with label ``y_i``:

* triplets (Algorithm 2): a positive drawn uniformly from the other images of class ``y_i`` (never
  ``x_i`` itself) and a negative drawn uniformly from the images of the other classes;
* pairs (Algorithm 1): a fair coin ``s ∈ {0, 1}`` picks a positive (``s = 1``) or a negative (``s = 0``)
  partner, drawn as above.

A draw is a ``(N, 3)`` integer array of rows ``(anchor, positive, negative)`` or ``(anchor, partner, s)``.

Training partners are redrawn every epoch by :class:`PairingSampler`: its ``__iter__`` runs in the main
process at the start of every epoch, seeded by ``(seed, epoch)``, and yields the rows; the DataLoader
hands each row to :class:`~histo_lightning.data.torch_datasets.PairedDataset` as the index. Nothing has to reach the DataLoader workers (a
dataset attribute changed in the main process would not reach persistent workers), every rank of a DDP
job draws the same rows (Lightning shards them with ``DistributedSamplerWrapper``, which forwards
``set_epoch``), and a resumed run redraws exactly the partners of the epoch it resumes at. Validation and
test partners are drawn once from a fixed seed (:func:`fixed_tuples`).

``balanced=True`` is the class-balanced option (§III-C: "we could indirectly eliminate the impact of the
class imbalance problem … by controlling the sampling process"): every class contributes as many anchors
per epoch as the largest class (each image is an anchor at least once; images of smaller classes are
repeated as evenly as possible), and negatives come from a uniformly chosen other class (then a uniform
image of it) instead of uniformly from all other-class images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from histo_lightning.errors import ConfigError

PAIRING_MODES = ("pair", "triplet")


def check_mode(mode: str) -> None:
    if mode not in PAIRING_MODES:
        raise ConfigError(
            f"dataset.pairing={mode!r}: expected one of null, auto, {', '.join(PAIRING_MODES)}"
        )


def class_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Indices of the images of each class present in ``labels``."""
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def check_pairable(labels: np.ndarray, mode: str, what: str = "the dataset") -> None:
    """Raise a :class:`ConfigError` unless every image can get a positive and a negative partner."""
    check_mode(mode)
    members = class_members(labels)
    if len(members) < 2:
        only = next(iter(members), None)
        raise ConfigError(
            f"cannot build {mode}s for {what}: all {len(labels)} images are of class {only} "
            "(a negative partner must be of another class)"
        )
    lonely = [c for c, idx in members.items() if len(idx) < 2]
    if lonely:
        raise ConfigError(
            f"cannot build {mode}s for {what}: class {lonely[0]} has a single image "
            "(a positive partner must be another image of the same class, never the anchor itself)"
        )


def epoch_anchors(labels: np.ndarray, rng: np.random.Generator, balanced: bool) -> np.ndarray:
    """This epoch's anchors in random order: every image once, or class-balanced (see module doc)."""
    n = len(labels)
    if not balanced:
        return rng.permutation(n)
    members = class_members(labels)
    largest = max(len(idx) for idx in members.values())
    parts = []
    for idx in members.values():
        repeats = -(-largest // len(idx))  # ceil
        tiled = np.concatenate([rng.permutation(idx) for _ in range(repeats)])
        parts.append(tiled[:largest])
    return rng.permutation(np.concatenate(parts))


def _positives(
    anchors: np.ndarray,
    labels: np.ndarray,
    members: dict[int, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """A uniform other image of the anchor's class for every anchor (vectorised)."""
    out = np.empty(len(anchors), dtype=np.int64)
    anchor_labels = labels[anchors]
    for c, idx in members.items():
        which = np.flatnonzero(anchor_labels == c)
        if not len(which):
            continue
        position = np.searchsorted(idx, anchors[which])  # idx is sorted: where the anchor sits
        shift = rng.integers(1, len(idx), size=len(which))  # 1..n_c-1: never the anchor itself
        out[which] = idx[(position + shift) % len(idx)]
    return out


def _negatives(
    anchors: np.ndarray,
    labels: np.ndarray,
    members: dict[int, np.ndarray],
    rng: np.random.Generator,
    balanced: bool,
) -> np.ndarray:
    """An image of another class for every anchor: uniform over those images, or over classes first."""
    out = np.empty(len(anchors), dtype=np.int64)
    anchor_labels = labels[anchors]
    classes = sorted(members)
    for c in classes:
        which = np.flatnonzero(anchor_labels == c)
        if not len(which):
            continue
        others = [k for k in classes if k != c]
        if balanced:
            pick = rng.integers(0, len(others), size=len(which))
            for j, k in enumerate(others):
                chosen = which[pick == j]
                out[chosen] = rng.choice(members[k], size=len(chosen))
        else:
            pool = np.concatenate([members[k] for k in others])
            out[which] = rng.choice(pool, size=len(which))
    return out


def draw_tuples(
    labels: Sequence[int] | np.ndarray,
    mode: str,
    rng: np.random.Generator,
    balanced: bool = False,
    anchors: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``(anchor, positive, negative)`` (triplets) or ``(anchor, partner, s)`` (pairs).

    ``anchors`` defaults to every image once in random order (:func:`epoch_anchors`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    check_pairable(labels, mode)
    members = class_members(labels)
    if anchors is None:
        anchors = epoch_anchors(labels, rng, balanced)
    anchors = np.asarray(anchors, dtype=np.int64)
    positives = _positives(anchors, labels, members, rng)
    negatives = _negatives(anchors, labels, members, rng, balanced)
    if mode == "triplet":
        return np.stack([anchors, positives, negatives], axis=1)
    same = rng.integers(0, 2, size=len(anchors))  # Algorithm 1: n ← randomly select {0, 1}
    partners = np.where(same == 1, positives, negatives)
    return np.stack([anchors, partners, same], axis=1)


def fixed_tuples(
    labels: Sequence[int] | np.ndarray, mode: str, seed: int, what: str = "the dataset"
) -> np.ndarray:
    """Validation/test partners: every image an anchor once, in order, partners from ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    check_pairable(labels, mode, what)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE7A1]))
    return draw_tuples(labels, mode, rng, anchors=np.arange(len(labels)))


class PairingSampler(Sampler[tuple[int, int, int]]):
    """Yields this epoch's ``(anchor, ·, ·)`` rows, redrawn every epoch from ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (directly, or through
    ``DistributedSamplerWrapper`` under DDP). Without it (a plain loop) each new iteration advances the epoch.
    """

    def __init__(
        self, labels: Sequence[int] | np.ndarray, mode: str, seed: int = 0, balanced: bool = False
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        check_pairable(self.labels, mode, "the training set")
        self.mode = mode
        self.seed = int(seed)
        self.balanced = balanced
        self.epoch = 0
        self._epoch_was_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_was_set = True

    def tuples(self, epoch: int) -> np.ndarray:
        """The rows of ``epoch`` (a pure function of seed, epoch, labels and options)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5A17, int(epoch)]))
        return draw_tuples(self.labels, self.mode, rng, self.balanced)

    def __len__(self) -> int:
        if not self.balanced:
            return len(self.labels)
        counts = np.bincount(self.labels)
        return int(counts.max() * np.count_nonzero(counts))

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        rows = self.tuples(self.epoch)
        if not self._epoch_was_set:
            self.epoch += 1
        self._epoch_was_set = False
        return (tuple(int(v) for v in row) for row in rows)
