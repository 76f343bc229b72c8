"""Random augmentations and training loaders that repeat: seeded from the run's seed, never from history.

albumentations 2.x keeps its own random generator in every ``Compose`` (seeded from the operating system
unless ``seed`` is given), so ``seed_everything`` does not reach it and two runs of the same command
augment differently. The data modules therefore seed every training transform they serve:

* in the main process (``num_workers=0``), when a training loader is built, from a draw of the global
  torch generator (which ``seed_everything`` seeded): :func:`seed_transforms`;
* in each DataLoader worker, from that worker's torch seed (``torch.initial_seed()``: the loader's base
  seed, drawn from the loader's generator every epoch, plus the worker id), so workers differ from each
  other and from epoch to epoch, and the same run repeats: :func:`worker_init`.

Under the stage runner every training loader is an :class:`EpochSeededLoader`: at an epoch's first fetch it
reseeds the global generators, its own generator (sampler order, worker seeds), the sampler's
epoch and the main-process transforms from the epoch's seed (:class:`~histo_lightning.utils.seeding.
EpochSeeding`), so an epoch is a function of (run seed, stage, epoch) and a resumed fit repeats the epochs
it redoes exactly. Its workers are started afresh every epoch (persistent workers would keep the random
state of the epochs before).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader

from histo_lightning.utils.seeding import EpochSeeding, derive_seed, seed_globals

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


def epoch_starting(trainer: Any) -> int:
    """The epoch whose first batch is being fetched: the epoch progress's ``processed`` count (what
    Lightning gives ``set_epoch``); after a resume from an end-of-epoch checkpoint ``current_epoch`` may
    still name the epoch that finished."""
    loop = getattr(trainer, "fit_loop", None)
    progress = getattr(getattr(loop, "epoch_progress", None), "current", None)
    if progress is not None:
        return int(progress.processed)
    return int(trainer.current_epoch)


class EpochSeededLoader(DataLoader):
    """A training DataLoader whose every epoch starts from the epoch's seed (module docstring).

    Its iterator is made when the epoch's FIRST BATCH is fetched, right after seeding, not when Lightning
    asks for it: Lightning makes the first epoch's iterator early (before a resumed fit's loop state is
    restored when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``) and then calls
    hooks, so only the first fetch comes at the same point of an epoch in one go and after a resume.
    There the global generators, the loader's generator (shuffled order, worker seeds), the sampler's
    epoch and the main-process transforms are seeded from ``(stage seed, epoch)``; workers start then.

    Args:
        owner: the data module that built it; its ``trainer`` (attached by Lightning) says the epoch and
            holds the stage's :class:`~histo_lightning.utils.seeding.EpochSeeding`. Without one (a loader
            used outside a seeded trainer) it is a plain DataLoader.
        *args, **kwargs: DataLoader arguments (``persistent_workers`` is always false; a ``generator`` is
            made when none is given).
    """

    def __init__(self, *args: Any, owner: Any = None, **kwargs: Any) -> None:
        kwargs["persistent_workers"] = False
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(*args, **kwargs)
        self.owner = owner

    def seeding(self) -> tuple[Any, EpochSeeding] | None:
        """The trainer and its epoch seeding, or None."""
        trainer = getattr(self.owner, "trainer", None)
        seeding = EpochSeeding.of(trainer)
        return None if seeding is None else (trainer, seeding)

    def seed_epoch(self, trainer: Any, seeding: EpochSeeding) -> None:
        """Seed everything the epoch draws from (class docstring)."""
        epoch = epoch_starting(trainer)
        seed = seeding.epoch_seed(epoch)
        seed_globals(seed)
        self.generator.manual_seed(derive_seed(seed, "loader"))
        for sampler in {id(s): s for s in (self.sampler, self.batch_sampler)}.values():
            for candidate in (sampler, getattr(sampler, "sampler", None)):
                if callable(getattr(candidate, "set_epoch", None)):
                    candidate.set_epoch(epoch)
        if self.num_workers == 0:
            seed_transforms(self.dataset, derive_seed(seed, "transforms"))

    def __iter__(self) -> Any:
        if self.seeding() is None:
            return super().__iter__()
        return _FirstFetchIterator(self)


class _FirstFetchIterator:
    """An epoch of an :class:`EpochSeededLoader`: seeds and makes the real iterator at the first fetch."""

    def __init__(self, loader: EpochSeededLoader) -> None:
        self.loader = loader
        self.iterator: Any = None

    def __iter__(self) -> _FirstFetchIterator:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> Any:
        if self.iterator is None:
            found = self.loader.seeding()
            if found is not None:
                self.loader.seed_epoch(*found)
            self.iterator = DataLoader.__iter__(self.loader)
        return next(self.iterator)


__all__ = [
    "EpochSeededLoader",
    "epoch_starting",
    "find_transforms",
    "seed_transforms",
    "worker_init",
]
