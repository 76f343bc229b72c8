"""Random streams named, not inherited: every stage and every training epoch starts from its own seed.

A result must not depend on what ran before it in the process (a stage computed or skipped, a feature
cache cold or warm, a run in one go or killed and resumed). So no stage continues the random stream that
earlier stages left behind: the runner (:mod:`histo_lightning.pipelines.runner`) seeds

* each **stage** when it starts, from ``(run seed, "stage", stage name)`` (:func:`seed_stage`: Python,
  numpy, torch and CUDA, with Lightning's ``seed_everything``): the initial weights, a K-means, a
  t-SNE draw from it;
* each **training epoch** of a fit, from ``(stage seed, "epoch", epoch)`` (:class:`EpochSeeding`, which a
  fit stage adds to its trainer). The seed is applied when the epoch's first training batch is fetched
  (:class:`~histo_lightning.data.transforms.EpochSeededLoader`, which makes the epoch's iterator only
  then), the one point that precedes all of an epoch's random draws — the sampler's order, the
  DataLoader workers' seeds, the main-process augmentations, dropout — at the same place in one go and
  after a resume. (Not ``on_train_epoch_start``: Lightning calls none on the first epoch after a resume,
  and makes that epoch's iterator before any hook, sometimes before the loop state is restored.) A fit
  resumed from the ``last.ckpt`` of its last completed epoch therefore continues exactly as in one go;
* each **DataLoader worker** from the epoch's loader seed and its worker id (torch's own rule, then
  Lightning's ``pl_worker_init_function``; :func:`~histo_lightning.data.transforms.worker_init`).

Seeds are derived by hashing names (:func:`derive_seed`), so adding, skipping or reordering a stage
changes no other stage's stream. Without a run seed (``seed=null``) nothing is seeded.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

#: seeds are 32-bit (numpy's legacy seeding and Lightning's ``seed_everything`` take at most this)
SEED_MAX = 2**32 - 1


def derive_seed(seed: int, *names: str | int) -> int:
    """A 32-bit seed that is a function of ``seed`` and the ``names`` (a stage, ``"epoch"``, 3 …) only."""
    payload = json.dumps([int(seed), *(str(n) for n in names)]).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "little")


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch: every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global state that libraries draw from)
    torch.manual_seed(seed)


def seed_run(cfg: DictConfig) -> None:
    """Seed Python, numpy and torch (and DataLoader workers) with ``cfg.seed``, if set (the runner calls
    it once before the data module is built; each stage then seeds itself, :func:`seed_stage`)."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)


def seed_stage(run_seed: int | None, stage: str) -> int | None:
    """Seed everything from ``(run_seed, stage)`` when the stage starts; returns the stage's seed
    (None without a run seed: nothing seeded)."""
    if run_seed is None:
        return None
    seed = derive_seed(run_seed, "stage", stage)
    pl.seed_everything(seed, workers=True, verbose=False)
    return seed


class EpochSeeding(pl.Callback):
    """Carries a fit stage's seed; every training epoch starts from ``derive_seed(seed, "epoch", e)``.

    It does nothing in a hook of its own: the training loader asks it for the epoch's seed at the epoch's
    first fetch (see the module docstring for why there and not in ``on_train_epoch_start``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def epoch_seed(self, epoch: int) -> int:
        return derive_seed(self.seed, "epoch", int(epoch))

    @staticmethod
    def of(trainer: pl.Trainer | None) -> EpochSeeding | None:
        """The trainer's epoch seeding, or None (a trainer outside the stage runner, ``seed=null``)."""
        if trainer is None:
            return None
        for callback in trainer.callbacks:
            if isinstance(callback, EpochSeeding):
                return callback
        return None


__all__ = ["SEED_MAX", "EpochSeeding", "derive_seed", "seed_globals", "seed_run", "seed_stage"]
