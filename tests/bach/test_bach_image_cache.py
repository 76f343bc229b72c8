"""Half-scale + Macenko once per image (§2.3), held by the memmap image cache (a size-changing preprocess)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from histo_lightning.data.stain import MacenkoNormalizer
from histo_lightning.data.synthetic.he_render import (
    render_optical_density,
    sample_stain_style,
    smooth_noise,
)
from histo_lightning.stores.image_store import MemmapImageCache, Rescale, read_rgb


def _he_tiffs(root: Path, n: int = 3, shape: tuple[int, int] = (96, 128)) -> list[Path]:
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        hema = np.clip(0.4 + 0.3 * smooth_noise(rng, shape, 6.0), 0.0, None)
        eosin = np.clip(0.35 + 0.2 * smooth_noise(rng, shape, 9.0), 0.0, None)
        rgb = render_optical_density(hema, eosin, sample_stain_style(rng, gain_sigma=0.3))
        path = root / f"img{i}.tif"
        cv2.imwrite(str(path), np.clip(np.rint(rgb), 0, 255).astype(np.uint8)[..., ::-1])
        paths.append(path)
    return paths


def test_rescale_output_shape_and_key() -> None:
    half = Rescale(0.5)
    assert half.output_shape(1536, 2048) == (768, 1024)
    normalizer = MacenkoNormalizer()
    both = Rescale(0.5, normalizer, normalizer.key())
    assert both.key().startswith("rescale0.5-cubic+macenko-") and half.key() == "rescale0.5-cubic"
    image = np.zeros((15, 21, 3), dtype=np.uint8)
    assert half(image).shape == (8, 10, 3) == (*half.output_shape(15, 21), 3)


def test_cache_holds_the_halved_normalised_images(tmp_path: Path) -> None:
    paths = _he_tiffs(tmp_path)
    normalizer = MacenkoNormalizer(min_tissue=100)
    preprocess = Rescale(0.5, normalizer, normalizer.key())
    cache = MemmapImageCache.build_or_open(
        paths,
        tmp_path,
        tmp_path / "cache",
        "bach",
        preprocess=preprocess,
        preprocess_key=preprocess.key(),
    )
    assert not cache.bad and cache.shapes.tolist() == [[48, 64]] * 3
    for i, path in enumerate(paths):
        original = read_rgb(path)
        halved = cv2.resize(original, (64, 48), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_array_equal(cache[i], normalizer(halved))
        assert not np.array_equal(cache[i], halved)  # the normalisation did something
    # the stains of differently stained images end up closer after normalisation
    before = [
        cv2.resize(read_rgb(p), (64, 48), interpolation=cv2.INTER_CUBIC).mean((0, 1)) for p in paths
    ]
    after = [cache[i].mean((0, 1)) for i in range(3)]
    assert np.std(after, axis=0).sum() < np.std(before, axis=0).sum()
    plain = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "bach")
    assert plain.folder != cache.folder and plain.shapes.tolist() == [[96, 128]] * 3
