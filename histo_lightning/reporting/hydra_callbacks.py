"""Hydra callbacks: keep ``cv_summary.{json,md}``, the papers' table layouts and ``paper_vs_ours.{md,html}``
of a sweep up to date.

Each is rewritten after every job (so a crashed or interrupted sweep still has one) and once more when the
sweep ends, when it is also printed (or its path logged).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from histo_lightning.reporting.cv_summary import write_summary

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return (
        int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) == 0
        and int(os.environ.get("LOCAL_RANK", "0")) == 0
    )


class CVSummaryCallback(Callback):
    """Write the cross-validation summary into the sweep directory."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        try:
            write_summary(config.hydra.sweep.dir)
        except Exception as err:  # a summary must never fail the job it summarises
            log.warning(f"could not update the CV summary: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_summary(config.hydra.sweep.dir)
        if written is not None:
            log.info(f"Cross-validation summary: {written[1]}\n{written[1].read_text()}")


class TableReportCallback(Callback):
    """Write ``<method>_tables.{md,json}`` (the papers' table layouts) into the sweep directory.

    Configured by experiments and sweeps under ``hydra.callbacks``, e.g.
    ``layouts: [smse.table6, smse.table7]``; see :mod:`histo_lightning.reporting.tables`.
    """

    def __init__(self, layouts: list[str]) -> None:
        from histo_lightning.reporting.tables import check_layouts

        try:
            check_layouts(list(layouts))
        except ValueError as err:
            raise ValueError(f"hydra.callbacks: {err}") from None
        self.layouts = list(layouts)

    def _write(self, config: DictConfig) -> list:
        from histo_lightning.reporting.tables import write_report

        return write_report([config.hydra.sweep.dir], self.layouts)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        try:
            self._write(config)
        except Exception as err:  # a report must never fail the job it reports on
            log.warning(f"could not update the table report: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for _, markdown in self._write(config):
            log.info(f"Paper tables: {markdown}\n{markdown.read_text()}")


class PaperComparisonCallback(Callback):
    """Write ``paper_vs_ours.{md,html}`` (our rows beside the papers' published numbers) for every sweep.

    Listed in ``conf/hydra/default.yaml``; a sweep whose experiments no paper table summarises gets a
    file that says so. See :mod:`histo_lightning.reporting.compare`.
    """

    def _write(self, config: DictConfig, page: bool = True) -> Any:
        from histo_lightning.reporting.compare import write_comparison

        return write_comparison([config.hydra.sweep.dir], page=page)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        try:  # the markdown after each job; the page with its embedded plots when the sweep ends
            self._write(config, page=False)
        except Exception as err:  # a report must never fail the job it reports on
            log.warning(f"could not update paper_vs_ours: {err}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_rank_zero():
            return
        try:
            written = self._write(config)
        except Exception as err:
            log.warning(f"could not write paper_vs_ours: {err}")
            return
        if written is not None:
            log.info(f"Paper vs ours: {written[0]} and {written[1]}")
