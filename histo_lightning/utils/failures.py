"""Failed jobs: ``failed.json`` in the job folder, and a sweep that goes on and ends non-zero.

A job that fails (a user error such as a bad value in one Optuna trial, or a crash in one fold) writes
``<job dir>/failed.json`` atomically (docs/CONTRACTS.md C3)::

    {"error": "<one line>", "type": "<ExceptionClass>", "traceback_file": "<job dir>/<name>.log" | null}

and its full traceback goes to the job's log file only (the console gets the one ``error:`` line). In a
multirun the failing job then returns ``None`` instead of raising, so Hydra's launchers and sweepers
carry on with the other jobs (Optuna records the trial as failed); :class:`SweepFailuresCallback` ends
the sweep with exit code 1 and one line per failed job when the sweep is done. A run folder is thus
always complete: it holds ``metrics.json`` (finished) or ``failed.json`` (failed), or, for a single run
that failed before it started, nothing at all.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from histo_lightning.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

FAILED_FILE = "failed.json"
SWEEP_FAILED_EXIT_CODE = 1


def one_line(err: BaseException, with_type: bool = False) -> str:
    """``str(err)`` on one line (whitespace runs collapsed), optionally prefixed by the class name."""
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}" if with_type else text


def log_files() -> list[Path]:
    """The files the root logger writes to (Hydra's ``<job dir>/<job name>.log``)."""
    return [
        Path(h.baseFilename)
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler)
    ]


def log_traceback_to_files(err: BaseException) -> Path | None:
    """Write ``err``'s traceback into the job's log file(s) only (not to the console); the first file."""
    files = log_files()
    if not files:
        return None
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, "job failed:\n%s", (text.rstrip(),), None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()
    return files[0]


def write_failure(job_dir: str | Path, err: BaseException, traceback_file: Path | None) -> Path:
    """Write ``<job_dir>/failed.json`` (C3) for ``err`` and return its path."""
    user_error = _is_user_error(err)
    return write_json_atomic(
        Path(job_dir) / FAILED_FILE,
        {
            "error": one_line(err, with_type=not user_error),
            "type": type(err).__name__,
            "traceback_file": str(traceback_file) if traceback_file is not None else None,
        },
    )


def read_failures(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{job folder name: failed.json}`` of every failed job of a sweep."""
    failures = {}
    for path in sorted(Path(sweep_dir).glob(f"*/{FAILED_FILE}")):
        record = read_json(path)
        if isinstance(record, dict):
            failures[path.parent.name] = record
    return failures


def unwrap_user_error(err: BaseException) -> BaseException:
    """The user error behind ``err`` when a config resolver raised it: OmegaConf wraps an exception
    raised while resolving an interpolation (``${hl.repeat_seed:...}`` with ``repeat=0``) in its own
    ``InterpolationResolutionError``, whose message and traceback are not the user's business."""
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(err, OmegaConfBaseException):
        return err
    cause: BaseException | None = err
    for _ in range(8):
        cause = cause.__cause__ or cause.__context__ if cause is not None else None
        if cause is None:
            break
        if _is_user_error(cause):
            return cause
    return err


def _is_user_error(err: BaseException) -> bool:
    from histo_lightning.errors import HistoError

    return isinstance(err, HistoError)


class SweepFailuresCallback(Callback):
    """At the end of a multirun: one line per failed job, and exit code 1 if any job failed.

    Registered first under ``hydra.callbacks`` so that it runs last (Hydra calls ``on_multirun_end``
    in reverse order), after the CV summary and the paper tables are written.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = read_failures(sweep_dir)
        if not failures:
            return
        jobs = sum(1 for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
        lines = [f"  {job}: {record.get('error')}" for job, record in failures.items()]
        summary = f"{len(failures)} of {jobs} sweep jobs failed ({sweep_dir}):\n" + "\n".join(lines)
        log.error(summary)
        print(f"error: {summary}", file=sys.stderr, flush=True)
        raise SystemExit(SWEEP_FAILED_EXIT_CODE)


__all__ = [
    "FAILED_FILE",
    "SweepFailuresCallback",
    "log_traceback_to_files",
    "one_line",
    "read_failures",
    "unwrap_user_error",
    "write_failure",
]
