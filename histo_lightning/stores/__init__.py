"""On-disk stores: one mechanism (:mod:`.store`) and one digest helper (:mod:`.keys`) for all of them.

The store types built on it (what their files hold) live beside their data: decoded images
(:mod:`histo_lightning.stores.image_store`), instances of MIL bags (:mod:`histo_lightning.stores.instance_store`),
features of frozen networks (:mod:`histo_lightning.stores.feature_cache`), slide patch indexes
(:mod:`histo_lightning.data.wsi`) and synthetic dataset trees (:mod:`histo_lightning.data.synthetic.tree`).
``python -m histo_lightning.caches list|verify|prune`` lists, checks and removes them.
"""

from histo_lightning.stores.keys import (
    array_digest,
    canonical,
    describe_differences,
    digest,
    digest_bytes,
    file_identity,
    files_digest,
    frame_digest,
    sampled_checksum,
)
from histo_lightning.stores.store import (
    INFO_FILE,
    LAST_USED,
    State,
    Status,
    Store,
    StoreError,
    StoreMismatch,
    disk_usage,
    inspect,
    touch_last_used,
)

__all__ = [
    "INFO_FILE",
    "LAST_USED",
    "State",
    "Status",
    "Store",
    "StoreError",
    "StoreMismatch",
    "array_digest",
    "canonical",
    "describe_differences",
    "digest",
    "digest_bytes",
    "disk_usage",
    "file_identity",
    "files_digest",
    "frame_digest",
    "inspect",
    "sampled_checksum",
    "touch_last_used",
]
