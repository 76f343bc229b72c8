"""Generate a synthetic dataset tree once, atomically, under a file lock.

Shared by the synthetic dataset generators: the tree is written into a temporary sibling
``<root>.tmp-<uuid>`` that is renamed to ``root`` when complete (removed on failure), so ``root`` is
either absent or complete; concurrent processes (DDP ranks, parallel sweep jobs) generate it once and the
others reuse it; leftovers of crashed runs are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from histo_lightning.utils.io import fsync_tree

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC_DATA.json"


def config_fingerprint(config: dict, generator_version: int) -> str:
    """Short stable hex hash of a generator's JSON config and version (names the tree's folder)."""
    payload = json.dumps({"config": config, "generator_version": generator_version}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def marker_matches(root: Path, generator_version: int, config: dict) -> bool:
    """Whether ``root`` holds a finished synthetic tree written by this generator version from ``config``."""
    try:
        marker = json.loads((Path(root) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("synthetic") is True
        and marker.get("generator_version") == generator_version
        and marker.get("config") == config
    )


def write_tree_atomically(root: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder and rename it to ``root``.

    Raises:
        FileExistsError: ``root`` exists already, or appeared while writing.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.mkdir()
        write(tmp)
        fsync_tree(tmp)
        try:
            tmp.rename(root)
        except OSError as err:
            if root.exists():
                raise FileExistsError(
                    f"{root} appeared while generating; refusing to overwrite"
                ) from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_tree(
    root: Path, is_complete: Callable[[Path], bool], write: Callable[[Path], None], label: str
) -> Path:
    """``root``, generated once with ``write`` unless ``is_complete(root)`` already.

    Raises:
        FileExistsError: ``root`` exists but is not a complete tree for this config.
    """
    root = Path(root)
    if is_complete(root):
        log.info("Reusing %s (not real data) at %s", label, root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        if is_complete(root):
            log.info("Reusing %s (not real data) at %s", label, root)
            return root
        if root.exists():
            raise FileExistsError(
                f"{root} exists but is not a {label} tree for this config; remove it"
            )
        for stale in root.parent.glob(f"{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("Generating %s (not real data) at %s", label, root)
        return write_tree_atomically(root, write)


__all__ = [
    "MARKER_FILE",
    "config_fingerprint",
    "ensure_tree",
    "marker_matches",
    "write_tree_atomically",
]
