"""The decode-once memmap image cache and the decode-on-access source."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from histo_lightning.data.image_store import FileImageSource, MemmapImageCache, read_rgb
from histo_lightning.errors import CorruptImageError


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
