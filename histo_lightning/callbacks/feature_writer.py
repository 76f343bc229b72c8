"""A Lightning prediction writer that stores per-sample outputs in a :class:`FeatureCache`.

The module's ``predict_step`` returns a dict with ``"index"`` (the sample rows, ``(B,)``) and the output
named by ``key`` (``(B, D)`` or ``(B, A, D)``). Rows are buffered and written every ``flush_every``
samples, so a killed prediction keeps what was flushed; each rank writes its own samples. At the end of
the prediction the ranks meet, and rank 0 marks the cache complete when no row is missing.

The cache is given by the stage that runs the prediction (:mod:`histo_lightning.pipelines.stages`), which
opens it with the producer's fingerprint and serves only the missing samples. Callbacks that use the
finished features (hard-example mining) do not read this writer: the stage calls their
``on_features_ready(cache, ctx)`` once the cache is complete
(:class:`~histo_lightning.pipelines.protocols.FeatureConsumer`).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from histo_lightning.stores.feature_cache import FeatureCache


class FeatureCacheWriter(BasePredictionWriter):
    """Writes ``prediction[key]`` at rows ``prediction["index"]`` of ``cache``.

    Args:
        cache: the opened cache (set by the stage, or later with :meth:`use`).
        key: which entry of the ``predict_step`` output to store.
        flush_every: samples buffered before a chunk is written and recorded.
    """

    def __init__(
        self, cache: FeatureCache | None = None, key: str = "features", flush_every: int = 1024
    ) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache
        self.key = key
        self.flush_every = int(flush_every)
        self._indices: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._buffered = 0
        self._chunk = 0
        self._session = ""
        self.written = 0

    def use(self, cache: FeatureCache) -> None:
        self.cache = cache

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cache is None:
            raise RuntimeError("FeatureCacheWriter has no cache (the stage sets it)")
        self._indices, self._values, self._buffered, self.written = [], [], 0, 0
        self._session = uuid.uuid4().hex[:8]  # progress files of this prediction never collide

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._indices.append(prediction["index"].detach().cpu().numpy().astype(np.int64))
        self._values.append(prediction[self.key].detach().float().cpu().numpy())
        self._buffered += len(self._indices[-1])
        if self._buffered >= self.flush_every:
            self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        if not self._buffered:
            return
        assert self.cache is not None
        tag = f"r{trainer.global_rank}-{self._session}-{self._chunk:06d}"
        self.cache.write(np.concatenate(self._indices), np.concatenate(self._values), tag)
        self.written += self._buffered
        self._indices, self._values, self._buffered = [], [], 0
        self._chunk += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
        trainer.strategy.barrier("feature_cache_written")
        assert self.cache is not None
        if trainer.is_global_zero:
            self.cache.finalize()
        trainer.strategy.barrier("feature_cache_finalized")


__all__ = ["FeatureCacheWriter"]
