"""``python -m histo_lightning.caches list|prune``: caches describe themselves; stale ones go."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from histo_lightning.caches import find_caches, list_caches, prune
from histo_lightning.data.image_store import MemmapImageCache
from histo_lightning.data.wsi import mark_index_cache
from tests.conftest import ROOT

DAY = 86400.0


def _image_cache(root: Path, cache_dir: Path, name: str = "toy") -> MemmapImageCache:
    paths = []
    for i in range(3):
        path = root / f"{name}{i}.png"
        if not path.exists():  # the same files give the same cache
            Image.fromarray(np.full((8, 9, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    return MemmapImageCache.build_or_open(paths, root, cache_dir / "images", name)


def _age(path: Path, days: float) -> None:
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))


def test_list_shows_kind_size_origin_and_use(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    images = _image_cache(tmp_path, cache_dir)
    mark_index_cache(cache_dir / "patch_index" / "paip2019", tmp_path)
    out = io.StringIO()
    entries = list_caches(cache_dir, out=out)
    assert {e.kind for e in entries} == {"images", "patch_index"}
    (entry,) = [e for e in entries if e.kind == "images"]
    assert entry.path == images.folder and entry.size_bytes > 3 * 8 * 9 * 3
    assert entry.made_by["dataset"] == "toy" and entry.made_by["images"] == 3
    text = out.getvalue()
    assert "images" in text and "dataset=toy" in text and "total in 2 cache(s)" in text
    # opening a cache again marks it used
    _age(images.folder / ".last_used", 10)
    _image_cache(tmp_path, cache_dir)
    (again,) = [e for e in find_caches(cache_dir) if e.kind == "images"]
    assert again.age_days() < 0.01


def test_prune_removes_stale_caches_and_leftovers_but_not_a_running_build(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    stale = _image_cache(tmp_path, cache_dir, "old").folder
    fresh = _image_cache(tmp_path, cache_dir, "new").folder
    _age(stale / ".last_used", 40)
    # a build killed an hour ago (no lock held) and one running now (its lock is held)
    killed = cache_dir / "images" / ".dead-0123.abcd.tmp"
    killed.mkdir()
    (killed / "pixels.u8").write_bytes(b"x" * 100)
    _age(killed, 0.1)
    running = cache_dir / "images" / ".busy-4567.efgh.tmp"
    running.mkdir()
    lock = FileLock(str(cache_dir / "images" / "busy-4567.lock"))
    with lock:
        out = io.StringIO()
        would = prune(cache_dir, older_than_days=30, dry_run=True, out=out)
        assert {e.path for e in would} == {stale, killed} and stale.is_dir() and killed.is_dir()
        assert "would remove" in out.getvalue()
        removed = prune(cache_dir, older_than_days=30, out=io.StringIO())
        assert {e.path for e in removed} == {stale, killed}
        assert not stale.exists() and not killed.exists() and not Path(f"{stale}.lock").exists()
        assert fresh.is_dir() and running.is_dir()
    # the build's lock is free now: its folder is a leftover
    assert [e.path for e in prune(cache_dir, None, out=io.StringIO())] == [running]
    assert fresh.is_dir()


def test_the_command_line(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _image_cache(tmp_path, cache_dir)
    command = [sys.executable, "-m", "histo_lightning.caches", "--cache-dir", str(cache_dir)]
    listed = subprocess.run([*command, "list"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and "images" in listed.stdout, listed.stderr
    dry = subprocess.run(
        [*command, "prune", "--older-than", "0", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0 and "Would free" in dry.stdout and "toy-" in dry.stdout
    assert len(list(find_caches(cache_dir))) == 1
