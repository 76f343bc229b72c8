"""Fingerprints of configurations and of what produced a file (kept for imports).

The helpers live in :mod:`histo_lightning.stores.keys`, the one digest helper of the project.
"""

from __future__ import annotations

from histo_lightning.stores.keys import (
    canonical,
    describe_differences,
    digest,
    flatten,
    frame_digest,
)

__all__ = ["canonical", "describe_differences", "digest", "flatten", "frame_digest"]
