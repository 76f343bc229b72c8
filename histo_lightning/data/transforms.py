"""Random augmentations that repeat: albumentations pipelines seeded from the run's seed.

albumentations 2.x keeps its own random generator in every ``Compose`` (seeded from the operating system
unless ``seed`` is given), so ``seed_everything`` does not reach it and two runs of the same command
augment differently. The data modules therefore seed every training transform they serve:

* in the main process (``num_workers=0``), when a training loader is built, from a draw of the global
  torch generator (which ``seed_everything`` seeded): :func:`seed_transforms`;
* in each DataLoader worker, from that worker's torch seed (``torch.initial_seed()``: the loader's base
  seed, drawn from the global generator every epoch, plus the worker id), so workers differ from each
  other and from epoch to epoch, and the same run repeats: :func:`worker_init`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

_SEEN = "_seeded_transform_ids"


def seed_transforms(obj: Any, seed: int) -> int:
    """Seed every albumentations pipeline reachable from ``obj`` (its ``transform``, its wrapped
    ``dataset``s); returns how many were seeded."""
    seeded, seen, stack = 0, set(), [obj]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        transform = getattr(current, "transform", None)
        if callable(getattr(transform, "set_random_seed", None)):
            transform.set_random_seed(int(seed) % 2**32)
            seeded += 1
        stack.extend(getattr(current, name, None) for name in ("dataset", "base", "datasets"))
        if isinstance(current, (list, tuple)):
            stack.extend(current)
    return seeded


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's worker seeding (when ``seed_everything(workers=True)``
    asked for it), then the worker's transforms from its torch seed."""
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, torch.initial_seed())


def main_process_seed() -> int:
    """A seed for transforms used in the main process, drawn from the (seeded) global torch generator."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


__all__ = ["main_process_seed", "seed_transforms", "worker_init"]
