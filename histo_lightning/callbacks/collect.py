"""The base of callbacks that write files from what ``test_step`` returned, complete under DDP."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from histo_lightning.utils.distributed import gather_objects


class TestOutputCollector(pl.Callback):
    """Keeps one record per test batch (:meth:`record`) and gathers every process's records at the end.

    Each process tested a disjoint share of the test set (unrepeated sampler), so :meth:`gathered`, called
    on every process in ``on_test_end`` (it is a collective), returns all records, rank by rank.
    """

    def __init__(self) -> None:
        self._records: list[Any] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._records = []

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        record = self.record(outputs)
        if record is not None:
            self._records.append(record)

    def record(self, outputs: Any) -> Any | None:
        """What to keep of one batch's ``test_step`` outputs (picklable), or None for nothing."""
        raise NotImplementedError

    def gathered(self) -> list[Any]:
        """The records of every process, in rank order (call on every process)."""
        return [record for part in gather_objects(self._records) for record in part]


__all__ = ["TestOutputCollector"]
