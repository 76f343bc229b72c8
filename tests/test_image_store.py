"""The decode-once memmap image cache and the decode-on-access source."""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from histo_lightning.errors import CorruptImageError
from histo_lightning.stores.image_store import FileImageSource, MemmapImageCache, read_rgb
from histo_lightning.stores.store import State, inspect


def _images(root: Path, n: int = 5) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, size=(10 + i, 17, 3), dtype=np.uint8)  # varied heights
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_memmap_cache_returns_the_decoded_pixels(tmp_path: Path) -> None:
    paths = _images(tmp_path)
    cache = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    assert len(cache) == 5 and not cache.bad
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(cache[i], read_rgb(path))
    assert not list((tmp_path / "cache").glob(".*tmp"))  # built in a temp dir, renamed


def test_memmap_cache_is_reused_and_keyed_by_the_files(tmp_path: Path) -> None:
    paths = _images(tmp_path)
    first = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    again = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    assert again.folder == first.folder
    # a changed file gets a new cache instead of mixing with the old one
    cv2.imwrite(str(paths[0]), np.zeros((3, 3, 3), np.uint8))
    changed = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    assert changed.folder != first.folder
    assert changed[0].shape == (3, 3, 3)


def test_memmap_cache_pickles_without_its_pixels(tmp_path: Path) -> None:
    import pickle

    cache = MemmapImageCache.build_or_open(_images(tmp_path), tmp_path, tmp_path / "cache", "toy")
    cache[0]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._flat is None
    np.testing.assert_array_equal(clone[2], cache[2])


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_images_are_reported(tmp_path: Path, workers: int) -> None:
    paths = _images(tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:40])  # truncated PNG: header readable, pixels not
    paths[3].write_bytes(b"not an image")
    cache = MemmapImageCache.build_or_open(
        paths, tmp_path, tmp_path / "cache", "toy", workers=workers
    )
    assert sorted(Path(b.path).name for b in cache.bad) == ["img1.png", "img3.png"]
    np.testing.assert_array_equal(cache[4], read_rgb(paths[4]))
    source = FileImageSource.checked(paths, tmp_path, tmp_path / "cache", "toy", workers=workers)
    assert sorted(Path(b.path).name for b in source.bad) == ["img1.png", "img3.png"]
    with pytest.raises(CorruptImageError, match=r"img3.png"):
        source[3]


def test_a_truncated_cache_is_rebuilt_with_a_logged_line(tmp_path: Path, caplog) -> None:
    paths = _images(tmp_path)
    cache = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    assert inspect(cache.folder).state == State.COMPLETE
    with open(cache.folder / "pixels.u8", "r+b") as handle:
        handle.truncate(10)
    assert inspect(cache.folder).state == State.CORRUPT
    with caplog.at_level(logging.WARNING):
        again = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    assert again.folder == cache.folder and inspect(again.folder).state == State.COMPLETE
    (line,) = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert str(cache.folder) in line and "pixels.u8 holds 10 bytes" in line
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(again[i], read_rgb(path))


def _build_concurrently(root: str, built_log: str) -> None:
    original = MemmapImageCache._build

    def slow_build(*args, **kwargs) -> None:  # a build that takes a while: the other process waits
        with open(built_log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        original(*args, **kwargs)

    MemmapImageCache._build = staticmethod(slow_build)  # type: ignore[method-assign]
    paths = sorted(Path(root).glob("img*.png"))
    cache = MemmapImageCache.build_or_open(paths, Path(root), Path(root) / "cache", "toy")
    np.testing.assert_array_equal(cache[2], read_rgb(paths[2]))


def test_two_processes_building_one_cache_both_succeed_and_it_is_built_once(tmp_path: Path) -> None:
    _images(tmp_path)
    context = multiprocessing.get_context("fork")
    log = tmp_path / "built.txt"
    workers = [
        context.Process(target=_build_concurrently, args=(str(tmp_path), str(log)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert log.read_text().splitlines() == ["built"]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
