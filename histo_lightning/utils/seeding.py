"""Reproducible augmentation: albumentations pipelines seeded from torch's seed of each process.

albumentations 2 gives every ``Compose`` built without ``seed`` a random state from the operating
system's entropy, so two runs of the same command augmented differently and trained to different
numbers, seed or not. Fixing ``Compose(seed=...)`` in the config is no cure either: every DataLoader
worker would then replay the same augmentation stream, and the transforms of one pipeline would get
identical streams (a horizontal flip whenever a vertical one).

:func:`seed_transform` gives a pipeline one shared random state seeded from ``torch.initial_seed()`` of
the process that uses it: in the main process the run's seed (``seed_everything``), in a DataLoader
worker Lightning's per-worker seed (different for every worker and epoch, and a function of the run's
seed). The datasets call it before transforming an image; it reseeds only when that seed changes.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

_SEEDED_FOR = "_histo_lightning_seeded_for"


def seed_transform(transform: Any) -> None:
    """Seed an albumentations pipeline (anything with ``set_random_state``) for this process/worker."""
    if not hasattr(transform, "set_random_state"):
        return
    worker = get_worker_info()
    seed = torch.initial_seed() % 2**32
    key = (os.getpid(), worker.id if worker is not None else -1, seed)
    if getattr(transform, _SEEDED_FOR, None) == key:
        return
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    setattr(transform, _SEEDED_FOR, key)


__all__ = ["seed_transform"]
