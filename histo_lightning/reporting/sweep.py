"""The one reader of Hydra sweeps, for the cross-validation summary and the paper tables.

A sweep folder (``logs/<task>/multiruns/<time>/``) holds one folder per job (``<n>_fold<k>/``) with
``.hydra/config.yaml`` (the job's composed config) and ``.hydra/overrides.yaml`` (its command-line
overrides), and, depending on how the job ended (docs/CONTRACTS.md C3):

* ``metrics.json`` (the ``test/*`` metrics) and ``run_info.json`` (data, stages, versions): finished;
* ``failed.json`` = ``{"error": "<one line>", "type": "<ExceptionClass>", "traceback_file": ...}``: failed;
* neither: missing (still running, or killed).

A job folder that was rerun after a failure holds both result files; the newer one counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FAILED_FILE = "failed.json"
FINISHED, FAILED, MISSING = "finished", "failed", "missing"


@dataclass
class Job:
    """One job of a sweep: where it ran, what it was, and how it ended."""

    dir: Path
    fold: int | None
    config: dict[str, Any]
    overrides: dict[str, str]
    metrics: dict[str, float] | None
    info: dict[str, Any] | None
    failure: dict[str, Any] | None

    @property
    def status(self) -> str:
        """``finished`` (metrics.json), ``failed`` (failed.json) or ``missing`` (neither)."""
        if self.failure is not None:
            return FAILED
        return FINISHED if self.metrics is not None else MISSING

    @property
    def synthetic(self) -> bool | None:
        """Whether the job ran on synthetic data, None if unknown: ``run_info.json``'s ``synthetic_data``
        (or ``data.synthetic``), else the job's config (a ``dataset.synthetic`` generator setting marks
        the data modules' generated twins)."""
        info = self.info or {}
        for flag in (info.get("synthetic_data"), (info.get("data") or {}).get("synthetic")):
            if flag is not None:
                return bool(flag)
        dataset = self.config.get("dataset")
        if isinstance(dataset, dict) and "synthetic" in dataset:
            return dataset["synthetic"] is not None
        return None

    @property
    def error(self) -> str | None:
        """The failure in one line: ``<ExceptionClass>: <error>``."""
        if self.failure is None:
            return None
        text = " ".join(str(self.failure.get("error", "")).split())
        kind = self.failure.get("type")
        return f"{kind}: {text}" if kind else text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_job(job_dir: str | Path) -> Job | None:
    """The job in ``job_dir``, or None if it is not a Hydra job folder (no ``.hydra/``)."""
    job_dir = Path(job_dir)
    hydra = job_dir / ".hydra"
    if not ((hydra / "config.yaml").is_file() or (hydra / "overrides.yaml").is_file()):
        return None
    config = _read_yaml(hydra / "config.yaml") or {}
    overrides = _read_yaml(hydra / "overrides.yaml") or []
    metrics_file, failed_file = job_dir / "metrics.json", job_dir / FAILED_FILE
    metrics = _read_json(metrics_file) if metrics_file.is_file() else None
    failure = _read_json(failed_file) if failed_file.is_file() else None
    if metrics is not None and failure is not None:  # rerun: the newer result counts
        if metrics_file.stat().st_mtime_ns >= failed_file.stat().st_mtime_ns:
            failure = None
        else:
            metrics = None
    if failed_file.is_file() and failure is None and metrics is None:
        failure = {"error": f"{FAILED_FILE} is unreadable", "type": None}
    return Job(
        dir=job_dir,
        fold=config.get("fold"),
        config=config,
        overrides=dict(
            str(o).split("=", 1)
            for o in overrides
            if "=" in str(o) and not str(o).startswith("fold=")
        ),
        metrics=metrics,
        info=_read_json(job_dir / "run_info.json"),
        failure=failure,
    )


def read_jobs(sweep_dirs: str | Path | Sequence[str | Path]) -> list[Job]:
    """Every job folder directly under the sweep folder(s), in name order."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    jobs = []
    for sweep in sweep_dirs:
        for job_dir in sorted(p for p in Path(sweep).iterdir() if p.is_dir()):
            job = read_job(job_dir)
            if job is not None:
                jobs.append(job)
    return jobs


def sweep_folders(sweep_dir: str | Path) -> list[Path]:
    """``sweep_dir`` and the folders of the same sweep under other task names.

    Hydra names a sweep folder ``<log_dir>/<task_name>/multiruns/<time>`` with the task name of the config
    it is composed from: the sweep's own (``train``, without the swept ``experiment``) and, for each job,
    the job's. The MIL experiments share one (``<log_dir>/mil/multiruns/<time>``); other sweeps may spread
    their jobs over ``mil_ilse/``, ``mil_aw/``, ... with the same ``<time>``.
    """
    sweep_dir = Path(sweep_dir)
    siblings = sorted(sweep_dir.parent.parent.parent.glob(f"*/multiruns/{sweep_dir.name}"))
    return [sweep_dir, *(s for s in siblings if s.resolve() != sweep_dir.resolve())]


def synthetic_data(jobs: Iterable[Job]) -> bool | str | None:
    """True/False when every job that says agrees, ``mixed`` when they differ, None when none says."""
    flags = {j.synthetic for j in jobs if j.synthetic is not None}
    if len(flags) == 1:
        return flags.pop()
    return "mixed" if flags else None


__all__ = ["FAILED_FILE", "Job", "read_job", "read_jobs", "sweep_folders", "synthetic_data"]
