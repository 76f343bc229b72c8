"""Cross-validation folds over bags (images), stratified by bag label, with repetitions.

Colon and UCSB ship no patient ids (Colon's 100 images come from 9 patients that are not identified), so
each image plays the role of a patient in :mod:`histo_lightning.data.splits`: folds are dealt with
``StratifiedKFold`` over images by bag label (when every class has at least K images), written once to
the versioned split file and reused; validation images are carved from each fold's training images.

Li et al. §4.0.2 evaluate by "10-fold/4-fold cross-validation and five repetitions". The ``repeat`` key
(1, 2, …) reshuffles the folds deterministically: repetition ``r`` uses the split seed
``split.seed + 1000 · (r − 1)``, so ``repeat=1`` is the plain split, every repetition is its own split
file (the seed is in its name), and the same ``(split.seed, repeat)`` always gives the same folds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from histo_lightning.data.splits import SplitSpec, load_or_create_split
from histo_lightning.errors import ConfigError

REPEAT_SEED_STRIDE = 1000


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of repetition ``repeat`` (1-based)."""
    if isinstance(repeat, bool) or int(repeat) != repeat or repeat < 1:
        raise ConfigError(f"repeat={repeat} must be a positive integer (1 = the first repetition)")
    return int(seed) + REPEAT_SEED_STRIDE * (int(repeat) - 1)


def repeat_spec(spec: SplitSpec, repeat: int) -> SplitSpec:
    """``spec`` with the seed of repetition ``repeat``."""
    return replace(spec, seed=repeat_seed(spec.seed, repeat))


def bag_table(names: list[str], labels: list[int]) -> pd.DataFrame:
    """The ``patient, label`` table of :mod:`~histo_lightning.data.splits` with one row per bag."""
    if len(set(names)) != len(names):
        raise ValueError("bag names must be unique")
    return pd.DataFrame({"patient": [str(n) for n in names], "label": [int(v) for v in labels]})


def bag_split(
    split_dir: str | Path,
    dataset: str,
    names: list[str],
    labels: list[int],
    spec: SplitSpec,
    repeat: int = 1,
    create: bool = True,
) -> pd.DataFrame:
    """The split table ``fold, patient (= bag name), label, subset`` of repetition ``repeat``."""
    if spec.scheme not in ("auto", "patient_kfold", "holdout"):
        raise ConfigError(
            f"split.scheme={spec.scheme!r}: {dataset} has no official folds; use patient_kfold"
        )
    return load_or_create_split(
        split_dir, dataset, bag_table(names, labels), repeat_spec(spec, repeat), create=create
    )


__all__ = ["REPEAT_SEED_STRIDE", "bag_split", "bag_table", "repeat_seed", "repeat_spec"]
