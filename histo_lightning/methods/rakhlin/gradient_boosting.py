"""LightGBM on frozen-CNN descriptors (Rakhlin et al. §2.5): the one classifier here that is not a network.

One model per (encoder, crop size, fold, seed), trained on the ``n_augmentations`` rows of every training
image (all views of an image stay in its fold because whole images are chosen). Settings are the authors'
published ones (their ``train_lgbm.py``): multiclass, learning rate 0.1, 191 leaves, feature fraction 0.46,
bagging fraction 0.69 with bagging frequency 0 — which in LightGBM turns bagging off (the fraction is then
unused), as in their code; we keep it — max depth 7, 70 rounds, no early stopping.

Seeds. The paper says only that each dataset is "recycled 5 times with different random seeds in LightGBM"
(§2.5). The authors' code sets, for seed ``s`` (0–4) and their 0-based fold ``f``,
``feature_fraction_seed = 1 + 10 s + f`` and ``bagging_seed = feature_fraction_seed + 1`` and leaves every
other LightGBM seed at its default; :func:`seed_parameters` does the same with our 1-based ``fold``
(``f = fold - 1``), so ``split=official`` fold k trains with the seeds of their fold k. Only the feature
sampling actually varies between seeds (bagging is off).

Reproducibility: ``deterministic=true`` with ``force_col_wise=true`` (LightGBM otherwise picks row- or
column-wise histograms by timing them) and one thread per model by default; models of a run train in
parallel processes instead (``n_jobs``), so a model is the same whatever the number of cores.

Models are saved in LightGBM's text format (never pickled) and load back predicting identically.
Prediction (§2.5): a test image's class probabilities are averaged over its augmentations and the seeds
per model (:func:`average_views_and_seeds`); the fused prediction is the mean over the (encoder, crop)
models (:func:`fuse`), the class its argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from joblib import Parallel, delayed

from histo_lightning.errors import ConfigError
from histo_lightning.utils.io import atomic_path


@dataclass(frozen=True)
class BoostingSettings:
    """The LightGBM settings of §2.5 (defaults: the authors' published values).

    Attributes:
        learning_rate, num_leaves, feature_fraction, bagging_fraction, bagging_freq, max_depth: LightGBM
            parameters of the same names (``bagging_freq=0``: bagging off, as in the authors' code).
        num_rounds: boosting rounds (no early stopping).
        n_seeds: models per (encoder, crop size, fold), each with other seeds (:func:`seed_parameters`).
        seed_base: the authors' ``RANDOM_STATE`` (1).
        num_threads: LightGBM threads per model.
        deterministic: LightGBM's ``deterministic`` (with ``force_col_wise``).
        extra: any other LightGBM parameters, passed through.
    """

    learning_rate: float = 0.1
    num_leaves: int = 191
    feature_fraction: float = 0.46
    bagging_fraction: float = 0.69
    bagging_freq: int = 0
    max_depth: int = 7
    num_rounds: int = 70
    n_seeds: int = 5
    seed_base: int = 1
    num_threads: int = 1
    deterministic: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.n_seeds < 1:
            raise ConfigError(
                f"num_rounds={self.num_rounds} and n_seeds={self.n_seeds} must be >= 1"
            )
        object.__setattr__(self, "extra", dict(self.extra))

    def params(self, num_class: int, fold: int, seed: int) -> dict[str, Any]:
        """The LightGBM parameter dict of one model."""
        return {
            "objective": "multiclass",
            "num_class": int(num_class),
            "metric": "multi_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "max_depth": self.max_depth,
            **seed_parameters(fold, seed, self.seed_base),
            "num_threads": self.num_threads,
            "deterministic": self.deterministic,
            "force_col_wise": True,
            "verbose": -1,
            **self.extra,
        }

    def fingerprint(self) -> dict[str, Any]:
        return {"lightgbm": lgb.__version__, **asdict(self)}


def seed_parameters(fold: int, seed: int, base: int = 1) -> dict[str, int]:
    """The authors' seeds of model ``seed`` (0-based) in ``fold`` (1-based; see the module docstring)."""
    if fold < 1 or seed < 0:
        raise ConfigError(f"fold={fold} must be >= 1 and seed={seed} >= 0")
    feature_fraction_seed = base + 10 * seed + (fold - 1)
    return {
        "feature_fraction_seed": feature_fraction_seed,
        "bagging_seed": feature_fraction_seed + 1,
    }


def _rows(features: np.ndarray) -> np.ndarray:
    """``(n_images, A, D)`` → ``(n_images · A, D)`` float32, image-major (LightGBM's input)."""
    features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"expected (images, augmentations, D) features, got {features.shape}")
    return features.reshape(-1, features.shape[-1]).astype(np.float32, copy=False)


def fit_booster(
    features: np.ndarray, labels: np.ndarray, params: Mapping[str, Any], num_rounds: int
) -> lgb.Booster:
    """A booster trained on every augmentation row of the ``(n_images, A, D)`` ``features``."""
    labels = np.asarray(labels)
    views = np.asarray(features).shape[1]
    dataset = lgb.Dataset(_rows(features), label=np.repeat(labels, views), params={"verbose": -1})
    return lgb.train(dict(params), dataset, num_boost_round=int(num_rounds))


def save_booster(booster: lgb.Booster, path: str | Path) -> Path:
    """Write ``booster`` in LightGBM's text format, atomically."""
    with atomic_path(path) as tmp:
        booster.save_model(str(tmp), num_iteration=-1)
    return Path(path)


def load_booster(path: str | Path) -> lgb.Booster:
    """A booster from its text file."""
    return lgb.Booster(model_file=str(path))


def predict_views(booster: lgb.Booster, features: np.ndarray) -> np.ndarray:
    """``(n_images, A, C)`` class probabilities of every augmentation row."""
    n_images, views = np.asarray(features).shape[:2]
    probs = booster.predict(_rows(features))
    return np.asarray(probs, dtype=np.float64).reshape(n_images, views, -1)


@dataclass(frozen=True)
class BoostingJob:
    """One model: what it is trained on and what it predicts.

    Attributes:
        model: the (encoder, crop size) name, e.g. ``resnet50-400``.
        fold: the fold (1-based). seed: the seed index (0 … n_seeds - 1).
        features: ``(N, A, D)`` descriptors of all images (a memmap is passed by reference).
        labels: ``(N,)`` labels (only the training rows' are used).
        train_index: the training images' rows.
        predict_index: subset name → rows to predict (e.g. ``{"test": ..., "unlabelled": ...}``).
        model_path: where the text model is written.
    """

    model: str
    fold: int
    seed: int
    features: np.ndarray
    labels: np.ndarray
    train_index: np.ndarray
    predict_index: Mapping[str, np.ndarray]
    model_path: str


def run_job(job: BoostingJob, settings: BoostingSettings, num_class: int) -> dict[str, np.ndarray]:
    """Train, save and apply one model: subset → ``(n, A, C)`` probabilities."""
    train = np.asarray(job.train_index)
    booster = fit_booster(
        np.asarray(job.features[train]),
        np.asarray(job.labels)[train],
        settings.params(num_class, job.fold, job.seed),
        settings.num_rounds,
    )
    save_booster(booster, job.model_path)
    return {
        name: predict_views(booster, np.asarray(job.features[np.asarray(index)]))
        for name, index in job.predict_index.items()
    }


def run_jobs(
    jobs: Sequence[BoostingJob], settings: BoostingSettings, num_class: int, n_jobs: int = 1
) -> list[dict[str, np.ndarray]]:
    """:func:`run_job` for every job, in ``n_jobs`` processes (joblib's loky; in-process for 1), in order."""
    if n_jobs <= 1 or len(jobs) <= 1:
        return [run_job(job, settings, num_class) for job in jobs]
    parallel = Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky")
    return list(parallel(delayed(run_job)(job, settings, num_class) for job in jobs))


def average_views_and_seeds(probs: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(n, C)``: the mean over seeds and augmentations of ``(S, n, A, C)`` (or a list of ``(n, A, C)``)."""
    stacked = np.stack(list(probs)) if not isinstance(probs, np.ndarray) else probs
    if stacked.ndim != 4:
        raise ValueError(f"expected (seeds, images, augmentations, classes), got {stacked.shape}")
    return stacked.mean(axis=(0, 2))


def fuse(per_model: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(n, C)``: the mean of the models' ``(n, C)`` probabilities (§2.5 model fusion)."""
    if not per_model:
        raise ValueError("nothing to fuse")
    shapes = {name: np.shape(p) for name, p in per_model.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"models predict different shapes: {shapes}")
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in per_model.values()]), axis=0)


__all__ = [
    "BoostingJob",
    "BoostingSettings",
    "average_views_and_seeds",
    "fit_booster",
    "fuse",
    "load_booster",
    "predict_views",
    "run_job",
    "run_jobs",
    "save_booster",
    "seed_parameters",
]
