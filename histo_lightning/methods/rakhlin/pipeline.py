"""Rakhlin et al. (2018) as stages: descriptors → LightGBM → fusion and report (``conf/pipeline/rakhlin.yaml``).

The descriptor stages are predict stages of :class:`~histo_lightning.methods.rakhlin.descriptors.DescriptorExtractor`,
one per (encoder, crop size) model, each filling a shared feature cache over every BACH image
(``subset: all``); the two function stages here use them:

* :func:`fit_lightgbm` (§2.5): for every descriptor stage that ran (model) and every seed, one LightGBM model
  trained on the 50 augmented descriptors of each of this fold's training images, with the authors'
  settings (:class:`~histo_lightning.methods.rakhlin.gradient_boosting.BoostingSettings`); the models of the
  run train in ``n_jobs`` parallel processes and are saved as LightGBM text files under
  ``<stage>/models/``. Each model predicts every augmentation of the fold's test images and of the
  unlabelled images; the probabilities averaged over augmentations and seeds are kept per model in
  ``<stage>/probabilities.npz`` (``<model>/<subset>``), and for the test images also each seed's own,
  averaged over augmentations only (``<model>/test@seed<k>``).
* :func:`report` (§3, Fig. 4): fusion = mean of the models' probabilities, argmax; the 4-class accuracy
  fused (``test/acc``) and per model (``test/acc_<model>``, of the seed-averaged probabilities), each
  seed's accuracy per model (``test/acc_<model>@seed<k>``: Table 1's per-model cells are their mean over
  seeds, its std the s.d. over all seed × fold values), the 2-class numbers (carcinoma vs not:
  ``test/acc2``, ``test/auc2``, ``test/sensitivity2@0.33`` ... at the setpoints, see
  :mod:`histo_lightning.methods.rakhlin.metrics`), ``roc.png`` (Fig. 4a), ``confusion.png`` (Fig. 4b), also sent to
  W&B/TensorBoard, ``predictions.csv`` per test image, and for the unlabelled images
  ``submission.csv`` (``image,label``, this fold's models) and ``unlabelled_probabilities.csv`` (which the
  sweep summary averages over the folds' models, as the authors' submission did).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from histo_lightning.data.datasets.bach import CLASS_NAMES
from histo_lightning.errors import ConfigError
from histo_lightning.methods.rakhlin.descriptors import DescriptorExtractor
from histo_lightning.methods.rakhlin.gradient_boosting import (
    BoostingJob,
    BoostingSettings,
    average_views_and_seeds,
    fuse,
    run_jobs,
)
from histo_lightning.methods.rakhlin.metrics import CARCINOMA_RULES, SETPOINTS, four_class_accuracy
from histo_lightning.methods.rakhlin.multicrop import ViewSettings
from histo_lightning.methods.rakhlin.report import (
    CONFUSION_FILE,
    ROC_FILE,
    write_probabilities,
    write_report,
    write_submission,
)
from histo_lightning.reporting.plots import log_image
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.choices import declare_choices
from histo_lightning.utils.instantiate import target_class
from histo_lightning.utils.io import atomic_path
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

PROBABILITIES_FILE = "probabilities.npz"
MODELS_DIR = "models"
SUBMISSION_FILE = "submission.csv"
UNLABELLED_FILE = "unlabelled_probabilities.csv"
PREDICTED_SUBSETS = ("test", "unlabelled")


def _is_descriptor_node(node: Any) -> bool:
    if node.get("kind") != "predict":
        return False
    module_class = target_class(node.get("module") or {})
    return module_class is not None and issubclass(module_class, DescriptorExtractor)


def is_descriptor_stage(ctx: Any, name: str) -> bool:
    """Whether stage ``name`` is a predict stage of a :class:`DescriptorExtractor`."""
    return _is_descriptor_node(ctx.runner.pipeline.stages[name])


def check_config(cfg: Any) -> None:
    """``pipeline.checks`` of the rakhlin pipelines: the settings are usable before any data is read.

    The views and LightGBM settings are valid, every descriptor stage that will run names an encoder
    and a crop size (``experiment=rakhlin_single`` needs ``encoder=<name> crop=<px>``), and a run that
    classifies has at least one descriptor stage.
    """
    settings = cfg.method
    try:
        ViewSettings(**dict(settings.views))
    except TypeError as err:
        raise ConfigError(f"method.views: {err}") from None
    try:
        BoostingSettings(**dict(settings.lightgbm))
    except TypeError as err:
        raise ConfigError(f"method.lightgbm: {err}") from None
    pipeline = cfg.pipeline
    order = list(pipeline.get("order") or pipeline.stages.keys())
    running = [n for n in order if pipeline.stages[n].get("enabled", True)]
    descriptors = [n for n in running if _is_descriptor_node(pipeline.stages[n])]
    for name in descriptors:
        module = pipeline.stages[name].module
        if module.get("encoder") is None:
            raise ConfigError(
                f"pipeline.stages.{name}: no encoder; experiment=rakhlin_single needs encoder=<name> "
                "(resnet50, vgg16_blocks, inception_v3, uni, ...) and crop=<px>"
            )
        if module.get("crop_size") is None:
            raise ConfigError(
                f"pipeline.stages.{name}: no crop size; experiment=rakhlin_single needs crop=<px> "
                "(the paper: 400 or 650 on the half-scale image)"
            )
    classifies = any(n in running for n in ("lightgbm", "report"))
    if classifies and not descriptors:
        raise ConfigError(
            f"pipeline.order={order} runs no descriptor stage before LightGBM; "
            f"descriptor stages: {[n for n in pipeline.stages if _is_descriptor_node(pipeline.stages[n])]}"
        )


def descriptor_caches(ctx: Any, stages: Sequence[str] | None = None) -> dict[str, FeatureCache]:
    """``{model name: finished feature cache}`` of the descriptor stages ``stages`` (default: every
    descriptor stage that ran before this one, in pipeline order); the model name is the module's
    ``name`` (``resnet50_400``)."""
    ran = [n for n in ctx.runner.results if is_descriptor_stage(ctx, n)]
    if stages is None:
        stages = ran
    unknown = [n for n in stages if n not in ran]
    if unknown:
        raise ConfigError(
            f"descriptor stage(s) {unknown} did not run before stage {ctx.name!r} (disabled, "
            f"misspelt or not descriptor stages); descriptor stages that ran: {ran}"
        )
    if not stages:
        raise ConfigError(
            f"stage {ctx.name!r} found no descriptor stage before it: the pipeline needs at least one "
            "(encoder, crop) descriptor stage (conf/stage/rakhlin_descriptors.yaml)"
        )
    caches: dict[str, FeatureCache] = {}
    for stage in stages:
        name = str(ctx.runner.pipeline.stages[stage].module.get("name") or stage)
        if name in caches:
            raise ConfigError(f"two descriptor stages are both named {name!r} (module.name)")
        caches[name] = FeatureCache.reopen(ctx.result(stage).path("cache"), require_complete=True)
    return caches


def _check_rows(model: str, cache: FeatureCache, manifest: pd.DataFrame) -> None:
    ours = manifest[["origin", "label"]].reset_index(drop=True)
    theirs = cache.manifest[["origin", "label"]].reset_index(drop=True)
    if len(ours) != len(theirs) or not (ours.astype(str) == theirs.astype(str)).all().all():
        raise ConfigError(
            f"the descriptors of {model} ({cache.folder}) are not of this data module's images"
        )


def fit_lightgbm(
    ctx: Any,
    lightgbm: Mapping[str, Any] | None = None,
    n_jobs: int = 1,
    descriptors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train and apply the LightGBM models of this fold (module docstring, §2.5).

    Args:
        lightgbm: :class:`~histo_lightning.methods.rakhlin.gradient_boosting.BoostingSettings` fields.
        n_jobs: models trained at once, each in its own process.
        descriptors: the descriptor stages to use (default: all that ran before this stage).
    """
    datamodule = ctx.datamodule
    manifest = datamodule.sample_manifest("all")
    rows = datamodule.fold_rows()
    labels = manifest["label"].to_numpy()
    try:
        settings = BoostingSettings(**dict(lightgbm or {}))
    except TypeError as err:
        raise ConfigError(f"method.lightgbm: {err}") from None
    caches = descriptor_caches(ctx, descriptors)
    if len(rows["val"]):
        log.warning(
            f"{len(rows['val'])} validation images are not used: LightGBM trains on the fold's training "
            "images without early stopping (§2.5); set split.val_fraction=0 to train on them"
        )
    predict = {name: rows[name] for name in PREDICTED_SUBSETS}
    model_dir = ctx.dir / MODELS_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for model, cache in caches.items():
        _check_rows(model, cache, manifest)
        features = cache.features()
        jobs += [
            BoostingJob(
                model=model,
                fold=int(datamodule.fold),
                seed=seed,
                features=features,
                labels=labels,
                train_index=rows["train"],
                predict_index=predict,
                model_path=str(model_dir / f"{model}_seed{seed}.txt"),
            )
            for seed in range(settings.n_seeds)
        ]
    log.info(
        f"LightGBM: {len(jobs)} models ({len(caches)} descriptor sets × {settings.n_seeds} seeds) on "
        f"{len(rows['train'])} training images × {next(iter(caches.values())).shape[1]} augmentations, "
        f"{n_jobs} parallel processes"
    )
    began = time.time()
    outputs = run_jobs(jobs, settings, len(CLASS_NAMES), n_jobs=n_jobs)
    seconds = time.time() - began
    arrays: dict[str, np.ndarray] = {f"rows/{s}": idx for s, idx in predict.items()}
    for model in caches:
        per_seed = [out for job, out in zip(jobs, outputs) if job.model == model]
        for subset in PREDICTED_SUBSETS:
            arrays[f"{model}/{subset}"] = average_views_and_seeds([o[subset] for o in per_seed])
        for seed, out in enumerate(per_seed):
            arrays[f"{model}/test@seed{seed}"] = average_views_and_seeds([out["test"]])
    with atomic_path(ctx.dir / PROBABILITIES_FILE) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    log.info(f"LightGBM: {len(jobs)} models trained and applied in {seconds:.1f} s")
    return {
        "metrics": {"fit_seconds": seconds, "models_per_second": len(jobs) / max(seconds, 1e-9)},
        "outputs": {"probabilities": PROBABILITIES_FILE, "models": MODELS_DIR},
        "models": list(caches),
        "n_models": len(jobs),
        "settings": settings.fingerprint(),
    }


def read_probabilities(ctx: Any, stage: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(models, arrays)`` of a :func:`fit_lightgbm` stage: ``<model>/<subset>`` and ``rows/<subset>``."""
    result = ctx.result(stage)
    with np.load(result.path("probabilities")) as data:
        arrays = {k: data[k] for k in data.files}
    return list(result.info["models"]), arrays


def metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """:func:`~histo_lightning.methods.rakhlin.metrics.bach_metrics` keys as logged: ``acc4`` → ``test/acc``,
    ``acc4/<model>`` → ``test/acc_<model>``, ``auc2`` → ``test/auc2`` ..."""
    out = {}
    for key, value in metrics.items():
        if key == "acc4":
            out["test/acc"] = value
        elif key.startswith("acc4/"):
            out[f"test/acc_{key.split('/', 1)[1]}"] = value
        else:
            out[f"test/{key}"] = value
    return out


@declare_choices(rule=CARCINOMA_RULES)
def report(
    ctx: Any,
    lightgbm: str = "lightgbm",
    setpoints: Sequence[float] = SETPOINTS,
    rule: str = "max",
) -> dict[str, Any]:
    """Fuse the models, score this fold's test images, write the figures and the submission (§3)."""
    models, arrays = read_probabilities(ctx, lightgbm)
    manifest = ctx.datamodule.sample_manifest("all")
    test_rows = arrays["rows/test"]
    per_model = {m: arrays[f"{m}/test"] for m in models}
    fused = fuse(per_model)
    synthetic = " (SYNTHETIC data)" if ctx.datamodule.is_synthetic else ""
    metrics = write_report(
        ctx.dir,
        manifest["image"].to_numpy()[test_rows].tolist(),
        manifest["label"].to_numpy()[test_rows],
        fused,
        per_model,
        setpoints,
        rule,
        title=f"fold {ctx.datamodule.fold}, {len(models)}-model fusion{synthetic}",
    )
    outputs = {"roc": ROC_FILE, "confusion": CONFUSION_FILE, "predictions": "predictions.csv"}
    unlabelled = arrays["rows/unlabelled"]
    if len(unlabelled):
        images = manifest["image"].to_numpy()[unlabelled].tolist()
        per_model_u = {m: arrays[f"{m}/unlabelled"] for m in models}
        write_submission(ctx.dir / SUBMISSION_FILE, images, fuse(per_model_u))
        write_probabilities(ctx.dir / UNLABELLED_FILE, images, fuse(per_model_u), per_model_u)
        outputs.update(submission=SUBMISSION_FILE, unlabelled_probabilities=UNLABELLED_FILE)
    for name in ("roc", "confusion"):
        log_image(ctx.loggers, f"test/{name}", ctx.dir / outputs[name])
    logged = metric_names(metrics)
    labels = manifest["label"].to_numpy()[test_rows]
    for model in models:
        seeds = sorted(
            (int(k.rsplit("@seed", 1)[1]), k) for k in arrays if k.startswith(f"{model}/test@seed")
        )
        for seed, key in seeds:
            logged[f"test/acc_{model}@seed{seed}"] = four_class_accuracy(labels, arrays[key])
    shown = ", ".join(
        f"{k.removeprefix('test/')} {v:.3f}" for k, v in logged.items() if "@seed" not in k
    )
    log.info(f"Fold {ctx.datamodule.fold}{synthetic}: {shown}")
    return {"metrics": logged, "outputs": outputs, "models": models}


__all__ = [
    "check_config",
    "descriptor_caches",
    "fit_lightgbm",
    "is_descriptor_stage",
    "metric_names",
    "read_probabilities",
    "report",
]
