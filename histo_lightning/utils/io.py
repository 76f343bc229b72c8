"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash or a kill never leaves a half-written ``metrics.json``, split file or cache behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json(path: str | Path) -> Any | None:
    """The JSON document at ``path``, or None when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block succeeds.

    If ``path`` appeared meanwhile (another process built the same thing), the new copy is discarded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_dir_once(folder: str | Path, marker: str, build: Callable[[Path], None]) -> bool:
    """Build ``folder`` once, safely between processes.

    Under the file lock ``<folder>.lock``: if ``folder/marker`` exists the folder is complete and kept;
    otherwise ``build(tmp)`` fills a temporary sibling (:func:`atomic_dir`) that is renamed to
    ``folder``, so ``folder`` is either absent or complete. Returns whether it was built now.
    """
    from filelock import FileLock

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / marker).exists():
            return False
        with atomic_dir(folder) as tmp:
            build(tmp)
        return True
