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


def find_transforms(obj: Any) -> list[Any]:
    """Every albumentations pipeline (anything with ``set_random_seed``) reachable from ``obj``: its
    ``transform``, and those of the datasets it wraps."""
    found, seen, stack = [], set(), [obj]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        transform = getattr(current, "transform", None)
        if callable(getattr(transform, "set_random_seed", None)) and id(transform) not in seen:
            seen.add(id(transform))
            found.append(transform)
        stack.extend(getattr(current, name, None) for name in ("dataset", "base", "datasets"))
        if isinstance(current, (list, tuple)):
            stack.extend(current)
    return found


def seed_transforms(obj: Any, seed: int | None = None) -> int:
    """Seed every albumentations pipeline reachable from ``obj`` with ``seed`` (default: a draw from the
    global torch generator, made only when there is a pipeline to seed, so datasets without one leave
    the random state untouched); returns how many were seeded."""
    transforms = find_transforms(obj)
    if transforms and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    for transform in transforms:
        transform.set_random_seed(int(seed) % 2**32)
    return len(transforms)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's worker seeding (when ``seed_everything(workers=True)``
    asked for it), then the worker's transforms from its torch seed."""
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, torch.initial_seed())


__all__ = ["find_transforms", "seed_transforms", "worker_init"]
