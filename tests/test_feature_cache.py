"""The feature cache: keyed by its producer (refuses anything else, naming the difference), resumable
by chunks, float16 by default, one memmap of N x D or N x A x D rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histo_lightning.data.feature_cache import (
    FeatureCache,
    FeatureCacheMismatch,
    default_cache_dir,
)
from histo_lightning.errors import ConfigError


def _manifest(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "origin": [f"img{i // 2}.png" for i in range(n)],
            "patient": [f"p{i // 4}" for i in range(n)],
            "label": np.arange(n) % 2,
        }
    )


MADE_BY = {
    "encoder": {"name": "resnet18", "weights_sha256": "abc123", "take": "pooled"},
    "transform": {"resize": 224, "normalize": "imagenet"},
    "data": {"dataset": "toy", "samples": "d1"},
    "code_version": 1,
}


def _producer(**changes: dict) -> dict:
    return {**MADE_BY, **changes}


def test_another_encoder_or_transform_is_refused_naming_the_difference(tmp_path: Path) -> None:
    folder = tmp_path / "features"
    FeatureCache.open(folder, MADE_BY, _manifest(6), (4,))
    other_encoder = _producer(encoder={**MADE_BY["encoder"], "name": "vgg16"})
    with pytest.raises(FeatureCacheMismatch, match=r"encoder.*vgg16|vgg16.*encoder") as refused:
        FeatureCache.open(folder, other_encoder, _manifest(6), (4,))
    assert "never mixed or overwritten" in str(refused.value)
    other_transform = _producer(transform={**MADE_BY["transform"], "resize": 256})
    with pytest.raises(FeatureCacheMismatch, match=r"transform") as refused:
        FeatureCache.open(folder, other_transform, _manifest(6), (4,))
    assert "256" in str(refused.value) and "224" in str(refused.value)
    # the same producer finds its cache again; a keyed folder separates producers
    assert FeatureCache.open(folder, MADE_BY, _manifest(6), (4,)).n == 6
    assert default_cache_dir(tmp_path, "toy", MADE_BY) != default_cache_dir(
        tmp_path, "toy", other_encoder
    )


def test_other_samples_or_shape_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "features"
    FeatureCache.open(folder, MADE_BY, _manifest(6), (4,))
    with pytest.raises(FeatureCacheMismatch, match="shape"):
        FeatureCache.open(folder, MADE_BY, _manifest(6), (8,))
    with pytest.raises(FeatureCacheMismatch, match="manifest"):
        FeatureCache.open(folder, MADE_BY, _manifest(7), (4,))


def test_chunks_resume_and_rows_are_float16_by_default(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 3, 4)).astype(np.float32)  # 3 augmented views per sample
    cache = FeatureCache.open(tmp_path / "f", MADE_BY, _manifest(6), (3, 4))
    cache.write(np.array([4, 0]), values[[4, 0]], "r0-a-000000")  # a chunk, then a "crash"
    reopened = FeatureCache.open(tmp_path / "f", MADE_BY, _manifest(6), (3, 4))
    assert reopened.missing().tolist() == [1, 2, 3, 5] and not reopened.complete
    with pytest.raises(RuntimeError, match="incomplete"):
        reopened.features()
    reopened.write(np.array([1, 2, 3, 5]), values[[1, 2, 3, 5]], "r1-b-000000")  # another rank
    assert reopened.finalize() and reopened.complete
    stored = reopened.features()
    assert stored.dtype == np.float16 and stored.shape == (6, 3, 4)
    np.testing.assert_allclose(stored, values, atol=2e-3)
    wide = FeatureCache.open(tmp_path / "g", MADE_BY, _manifest(6), (4,), dtype="float32")
    assert wide.dtype == np.float32


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    cache = FeatureCache.open(tmp_path / "f", MADE_BY, _manifest(3), (2,))
    with pytest.raises(ValueError, match="rows of shape"):
        cache.write(np.array([0]), np.zeros((1, 3)), "t0")
    with pytest.raises(ConfigError, match="float16 range"):
        cache.write(np.array([0]), np.full((1, 2), 1e6), "t1")
    with pytest.raises(ConfigError, match="NaN"):
        cache.write(np.array([0]), np.full((1, 2), np.nan), "t2")
    assert cache.missing().tolist() == [0, 1, 2]  # nothing recorded by a refused write
    with pytest.raises(ConfigError, match="dtype"):
        FeatureCache.open(tmp_path / "h", MADE_BY, _manifest(3), (2,), dtype="int8")
