"""``python -m histo_lightning.caches list|verify|prune``: stores describe themselves (what made them,
their state, their size on disk), verify finds the corrupt ones, stale ones go."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image

from histo_lightning.caches import find_caches, list_caches, prune, verify
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.stores.image_store import MemmapImageCache
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


def _features(folder: Path, n: int, rows: int, encoder: str = "resnet18") -> FeatureCache:
    """A feature cache of ``n`` rows of 256 float16 values, ``rows`` of them written (all: complete)."""
    manifest = pd.DataFrame(
        {"index": np.arange(n), "origin": "x.png", "patient": "p", "label": np.arange(n) % 2}
    )
    made_by = {"producer": {"encoder": {"name": encoder}}, "data": {"dataset": "toy"}}
    cache = FeatureCache.open(folder, made_by, manifest, (256,))
    cache.write(np.arange(rows), np.ones((rows, 256), np.float32), "r0-test-000000")
    cache.finalize()
    return cache


def test_list_shows_state_kind_real_size_origin_and_use(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    images = _image_cache(tmp_path, cache_dir)
    complete = _features(cache_dir / "features" / "done", 64, 64)
    partial = _features(cache_dir / "features" / "half", 40_000, 100, encoder="vgg16")
    corrupt = _features(cache_dir / "features" / "cut", 64, 64)
    with open(corrupt.folder / "features.npy", "r+b") as handle:
        handle.truncate(1000)
    out = io.StringIO()
    entries = {e.path: e for e in list_caches(cache_dir, out=out)}
    assert {e.kind for e in entries.values()} == {"images", "features"}
    assert entries[images.folder].made_by["dataset"] == "toy"
    assert entries[images.folder].made_by["images"] == 3
    states = {p: entries[p].state for p in (complete.folder, partial.folder, corrupt.folder)}
    assert states == {
        complete.folder: "complete",
        partial.folder: "partial",
        corrupt.folder: "corrupt",
    }
    # the real size on disk: a partial cache allocates 20 MB (sparse) and holds 100 rows
    apparent = (partial.folder / "features.npy").stat().st_size
    assert apparent > 40_000 * 256 * 2 and entries[partial.folder].size_bytes < apparent / 4
    text = out.getvalue()
    assert "dataset=toy" in text and "encoder.name=vgg16" in text and "total in 4 item(s)" in text
    assert "features.npy holds 1,000 bytes" in text  # why the corrupt one is corrupt
    # opening a store again marks it used
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


def test_verify_names_the_corrupt_store_and_the_command_line(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _image_cache(tmp_path, cache_dir)
    _features(cache_dir / "features" / "half", 64, 10)
    command = [sys.executable, "-m", "histo_lightning.caches", "--cache-dir", str(cache_dir)]
    listed = subprocess.run([*command, "list"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and "images" in listed.stdout, listed.stderr
    assert "partial" in listed.stdout and "complete" in listed.stdout
    checked = subprocess.run([*command, "verify"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0 and "Checked 2 store(s): 0 corrupt" in checked.stdout
    # damage inside the pixels (same size): the checksum finds it
    (pixels,) = cache_dir.glob("images/*/pixels.u8")
    data = bytearray(pixels.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pixels.write_bytes(bytes(data))
    err = io.StringIO()
    assert [e.path for e in verify(cache_dir, out=io.StringIO(), err=err)] == [pixels.parent]
    assert err.getvalue().startswith(f"error: images store {pixels.parent} is corrupt: pixels.u8")
    checked = subprocess.run([*command, "verify"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 1 and str(pixels.parent) in checked.stderr
    dry = subprocess.run(
        [*command, "prune", "--older-than", "0", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0 and "Would free" in dry.stdout and "toy-" in dry.stdout
    assert len(list(find_caches(cache_dir))) == 2
    # without an age, prune removes only what can never be read again (the corrupt store)
    assert [e.path for e in prune(cache_dir, None, out=io.StringIO())] == [pixels.parent]
