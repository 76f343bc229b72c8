"""The entry of ``python run.py``, and the pieces every task shares.

:func:`run` is ``run.py``'s entry: it calls the task named by the top-level ``task`` key (default: the
stage runner, :func:`histo_lightning.pipelines.runner.run_pipeline`), reports a failing job in one line
(and, in a sweep, lets the other jobs go on), closes W&B and returns ``optimized_metric``.

:func:`train` runs one job of the configured pipeline (``pipeline=fit_test`` for a single model). The
shared pieces (:func:`seed_run`, :func:`build_datamodule`, :func:`log_hyperparameters`,
:func:`write_run_report`, :func:`scalars`) serve every task.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from histo_lightning.errors import ConfigError, HistoError
from histo_lightning.utils.environment import machine_info
from histo_lightning.utils.failures import (
    log_traceback_to_files,
    one_line,
    unwrap_user_error,
    write_failure,
)
from histo_lightning.utils.instantiate import build
from histo_lightning.utils.io import write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a metrics dict (e.g. ``trainer.callback_metrics``) as floats."""
    return {
        k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor) or v.numel() == 1
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def log_hyperparameters(
    cfg: DictConfig, model: pl.LightningModule | None, trainer: pl.Trainer, data: dict
) -> None:
    """Send the resolved config, parameter counts (of ``model``, if given) and data description to every logger."""
    if not trainer.loggers:
        return
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if model is not None:
        hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
        hparams["model/params/trainable"] = sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )
    hparams["data/description"] = data
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
        if data.get("synthetic") and isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.tags = (*logger.experiment.tags, "synthetic-data")


def seed_run(cfg: DictConfig) -> None:
    """Seed Python, numpy and torch (and DataLoader workers) with ``cfg.seed``, if set."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The data module of ``cfg.dataset``, prepared now (dataset read, split written, caches built).

    Preparing before any trainer exists checks the data and the fold before a process is started.
    """
    log.info(f"Data: {cfg.dataset._target_}")
    datamodule = build(cfg.dataset)
    datamodule.prepare_data()
    return datamodule


def run_metadata() -> dict[str, Any]:
    """Where and with what a run ran: git commit, host, library versions, and ``machine``: what can
    make two machines differ (:func:`~histo_lightning.utils.environment.machine_info`)."""
    return {
        "git_commit": _git_commit(),
        "host": platform.node(),
        "versions": {
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "python": platform.python_version(),
        },
        "machine": machine_info(),
    }


def departures_from_paper(cfg: DictConfig) -> dict[str, Any]:
    """``{"departures_from_paper": [...]}`` when the experiment lists them (the demos do), else ``{}``."""
    departures = cfg.get("departures_from_paper")
    if not departures:
        return {}
    return {"departures_from_paper": OmegaConf.to_container(departures, resolve=True)}


def write_run_report(
    cfg: DictConfig,
    datamodule: Any,
    metrics: dict[str, float],
    started: float,
    **info: Any,
) -> None:
    """Write ``metrics.json`` (the ``test/*`` metrics), ``run_info.json`` and ``skipped_images.txt``.

    Call on global rank 0 only. ``info`` adds task-specific entries to ``run_info.json``, which also
    records the experiment's ``departures_from_paper`` (when it lists them) and the machine.
    """
    output_dir = Path(cfg.paths.output_dir)
    test_metrics = {k: v for k, v in metrics.items() if k.startswith("test/")}
    if test_metrics:
        write_json_atomic(output_dir / "metrics.json", test_metrics)
    write_json_atomic(
        output_dir / "run_info.json",
        {
            "task_name": cfg.get("task_name"),
            "task": cfg.get("task"),
            "fold": cfg.get("fold"),
            "seed": cfg.get("seed"),
            "data": datamodule.describe(),
            "synthetic_data": datamodule.is_synthetic,
            **departures_from_paper(cfg),
            **info,
            "trainer_deterministic": cfg.get("trainer", {}).get("deterministic"),
            "duration_s": round(time.time() - started, 1),
            **run_metadata(),
        },
    )
    if datamodule.skipped:
        listing = "\n".join(f"{b.path}\t{b.reason}" for b in datamodule.skipped)
        write_text_atomic(output_dir / "skipped_images.txt", listing + "\n")
        log.warning(
            f"Skipped {len(datamodule.skipped)} unreadable image(s) (dataset.on_corrupt=skip):\n{listing}"
        )
    if datamodule.is_synthetic:
        log.warning(
            "These results are on SYNTHETIC data generated by histo-lightning, not on the real dataset."
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one job (one fold) of the configured pipeline (default: ``fit`` then ``test``); every metric.

    The stages, their folders, skipping and resuming are the stage runner's
    (:mod:`histo_lightning.pipelines.runner`); this is the name the tests and notebooks call.
    """
    from histo_lightning.pipelines.runner import run_pipeline

    return run_pipeline(cfg)


def _run_dir_unstarted(output_dir: Path) -> bool:
    """Whether a run directory holds nothing but Hydra's config and logs (the run never started)."""
    return output_dir.is_dir() and not [
        p for p in output_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"
    ]


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("RANK", "0")) == 0


def _job_failed(cfg: DictConfig, err: Exception) -> None:
    """Report a failed job (see :mod:`histo_lightning.utils.failures`); return None in a multirun.

    Single run: a user error (:class:`HistoError`) is one ``error:`` line and exit code 2, with the run
    folder removed when the run never started and marked by ``failed.json`` otherwise; any other
    exception is marked the same way and re-raised (Hydra prints it). Multirun: ``failed.json``, one
    ``error:`` line, and the job returns so that the other jobs go on.
    """
    user_error = isinstance(err, HistoError)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    output_dir = Path(cfg.paths.output_dir)
    if _is_rank_zero():
        traceback_file = log_traceback_to_files(err)
        if not multirun and user_error and _run_dir_unstarted(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)
        elif output_dir.is_dir():
            write_failure(output_dir, err, traceback_file)
    if not multirun:
        if user_error and not full_error:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise err
    if full_error:
        traceback.print_exception(type(err), err, err.__traceback__)
    print(
        f"error: {one_line(err, with_type=not user_error)} "
        f"(sweep job {output_dir.name} failed, the others go on)",
        file=sys.stderr,
        flush=True,
    )
    return None


def resolve_task(name: str | None) -> Callable[..., Any]:
    """The function named by ``name`` (``package.module.function``, e.g. the ``task`` key); :func:`train` if unset."""
    if not name:
        return train
    module_name, _, function = str(name).rpartition(".")
    try:
        task = getattr(importlib.import_module(module_name), function) if module_name else None
    except ImportError as err:
        raise ConfigError(f"task={name}: cannot import {module_name} ({err})") from None
    if not callable(task):
        raise ConfigError(f"task={name} is not a function (expected package.module.function)")
    return task


def run(cfg: DictConfig) -> float | None:
    """``run.py``'s entry: the configured task, one-line errors, loggers closed, the optimised metric.

    A failing job is reported by :func:`_job_failed`: in a multirun it returns None (Optuna records a
    failed trial) and the sweep goes on; the sweep then ends non-zero
    (:class:`~histo_lightning.utils.failures.SweepFailuresCallback`).
    """
    try:
        metrics = resolve_task(cfg.get("task"))(cfg)
        return optimized_value(cfg, metrics)
    except Exception as err:
        return _job_failed(cfg, unwrap_user_error(err))
    finally:
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` (checked to have been logged), or None when not training."""
    name = cfg.get("optimized_metric")
    if not name or not cfg.get("train"):
        return None
    from histo_lightning.pipelines.runner import optimized_metric

    return optimized_metric(name, metrics)
