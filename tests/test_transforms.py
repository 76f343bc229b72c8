"""Augmentations repeat with the run's seed: albumentations pipelines are seeded in the main process and
in every DataLoader worker (albumentations 2 keeps its own generator, which seed_everything misses)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.transforms import seed_transforms, worker_init


class Noise(Dataset):
    def __init__(self) -> None:
        self.transform = A.Compose([A.GaussNoise(std_range=(0.1, 0.2), p=1.0)])
        self.image = np.full((8, 8, 3), 128, np.uint8)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(image=self.image)["image"].astype(np.int64))


def _epoch(workers: int, seed: int) -> torch.Tensor:
    pl.seed_everything(seed, workers=True)
    dataset = Noise()
    seed_transforms(dataset)
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, worker_init_fn=worker_init)
    return torch.cat(list(loader))


def test_the_same_seed_gives_the_same_augmentations_in_workers_and_main_process() -> None:
    for workers in (0, 2):
        first, again, other = _epoch(workers, 1), _epoch(workers, 1), _epoch(workers, 2)
        assert torch.equal(first, again)
        assert not torch.equal(first, other)
    # two workers do not repeat each other's draws
    batches = _epoch(2, 1).reshape(2, 4, -1)
    assert not torch.equal(batches[0], batches[1])


def test_seed_transforms_reaches_wrapped_datasets() -> None:
    class Wrapper:
        def __init__(self, dataset: Dataset) -> None:
            self.dataset = dataset

    inner = Noise()
    assert seed_transforms(Wrapper(Wrapper(inner)), 7) == 1
    state = torch.get_rng_state()
    assert seed_transforms(Wrapper(None)) == 0
    assert torch.equal(state, torch.get_rng_state())  # nothing to seed: no draw
    first = inner.transform(image=inner.image)["image"]
    seed_transforms(Wrapper(inner), 7)
    assert np.array_equal(first, inner.transform(image=inner.image)["image"])
