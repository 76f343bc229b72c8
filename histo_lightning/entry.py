"""The entry of ``python run.py``: one job of the stage runner, one-line errors, loggers closed.

:func:`run` runs the configured pipeline (:func:`histo_lightning.pipelines.runner.run_pipeline`), reports
a failing job in one line (and, in a sweep, lets the other jobs go on), closes W&B and returns
``optimized_metric`` to a sweeper. Nothing imports this module back (the runner, the stages and the run
report sit below it); see ``docs/architecture.md``.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from histo_lightning.errors import HistoError
from histo_lightning.pipelines.runner import optimized_metric, run_pipeline
from histo_lightning.utils.failures import (
    log_traceback_to_files,
    one_line,
    unwrap_user_error,
    write_failure,
)


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


def run(cfg: DictConfig) -> float | None:
    """``run.py``'s entry: the configured pipeline, one-line errors, loggers closed, the optimised metric.

    A failing job is reported by :func:`_job_failed`: in a multirun it returns None (Optuna records a
    failed trial) and the sweep goes on; the sweep then ends non-zero
    (:class:`~histo_lightning.utils.failures.SweepFailuresCallback`).
    """
    try:
        metrics = run_pipeline(cfg)
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
    return optimized_metric(name, metrics)


__all__ = ["optimized_value", "run"]
