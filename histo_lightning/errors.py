"""User-facing errors.

Everything a user can fix without reading our code (a wrong path, an out-of-range ``fold``, a dataset laid
out differently from what the reader expects, an unreadable image) raises a :class:`HistoError`.
``run.py`` prints such an error as one line and exits non-zero; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations


class HistoError(Exception):
    """An error caused by the user's input or configuration, reported in one line."""


class ConfigError(HistoError):
    """A configuration key holds a value we cannot use; the message names the key."""


class DatasetLayoutError(HistoError):
    """A dataset root is missing or not laid out as the reader expects; the message names the path."""


class CorruptImageError(HistoError):
    """An image file cannot be decoded; the message names the file."""


class NonFiniteLossError(HistoError):
    """Training produced a NaN or infinite loss; the message names the stage, epoch and batch."""
