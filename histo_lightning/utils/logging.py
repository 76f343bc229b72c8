"""Loggers that print once in a multi-process (DDP) run."""

from __future__ import annotations

import logging

from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    """A logger that logs on global rank 0 only (unless ``rank_zero_only=False``), rank-prefixed."""

    def __init__(self, name: str = __name__, rank_zero_only: bool = True) -> None:
        super().__init__(logger=logging.getLogger(name), extra=None)
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        if not self.isEnabledFor(level):
            return
        msg, kwargs = self.process(msg, kwargs)
        rank = getattr(rank_zero_only, "rank", 0)
        if self.rank_zero_only and rank != 0:
            return
        if rank != 0:
            msg = rank_prefixed_message(str(msg), rank)
        self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str) -> RankedLogger:
    """Return the rank-zero logger for module ``name``."""
    return RankedLogger(name)
