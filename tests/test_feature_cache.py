"""The feature cache: keyed by its producer (refuses anything else, naming the difference), partial then
complete (resumable by chunks), checked on open (a truncated file is rebuilt, or refused in one line by a
reader), filled by one process at a time, float16 by default, one memmap of N x D or N x A x D rows."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histo_lightning.errors import ConfigError
from histo_lightning.stores.feature_cache import (
    FeatureCache,
    FeatureCacheMismatch,
    default_cache_dir,
)
from histo_lightning.stores.store import State, StoreError


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
    assert reopened.missing().tolist() == [1, 2, 3, 5] and reopened.state == State.PARTIAL
    with pytest.raises(StoreError, match=r"is partial \(4 of 6 rows missing\)"):
        reopened.features()  # readers only ever see complete caches
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


def test_states_absent_partial_complete_and_a_truncated_file_rebuilt(
    tmp_path: Path, caplog
) -> None:
    folder = tmp_path / "f"
    values = np.arange(24, dtype=np.float32).reshape(6, 4)
    cache = FeatureCache.open(folder, MADE_BY, _manifest(6), (4,), dtype="float32")
    info = json.loads((folder / "cache.json").read_text())
    assert info["state"] == "partial" and info["kind"] == "features"
    assert info["made_by"]["encoder"]["name"] == "resnet18"
    cache.write(np.arange(6), values, "r0-a-000000")
    assert cache.finalize() and cache.state == State.COMPLETE
    info = json.loads((folder / "cache.json").read_text())
    assert info["state"] == "complete" and info["files"]["features.npy"]["checksum"]
    assert info["files"]["features.npy"]["size"] == (folder / "features.npy").stat().st_size
    with open(folder / "features.npy", "r+b") as handle:  # cut short
        handle.truncate(100)
    # a reader of a finished stage's cache cannot recompute it: one line naming it and why
    with pytest.raises(
        StoreError, match=r"f is corrupt \(features.npy holds 100 bytes, 224 recorded"
    ):
        FeatureCache.reopen(folder)
    with pytest.raises(StoreError, match="corrupt"):
        cache.features()
    # its producer rebuilds it, saying so, and computes every row again (never "all rows cached")
    with caplog.at_level(logging.WARNING):
        rebuilt = FeatureCache.open(folder, MADE_BY, _manifest(6), (4,), dtype="float32")
    assert any(
        "features.npy holds 100 bytes" in r.getMessage() and "rebuilding it" in r.getMessage()
        for r in caplog.records
    )
    assert rebuilt.state == State.PARTIAL and rebuilt.missing().tolist() == list(range(6))
    # a cache written before the store mechanism (no store_format) is never mixed: in a folder the user
    # chose it is refused in one line; in a keyed folder (owned) it is rebuilt once
    rebuilt.write(np.arange(6), values, "r0-b-000000")
    rebuilt.finalize()
    info = json.loads((folder / "cache.json").read_text())
    del info["store_format"]
    (folder / "cache.json").write_text(json.dumps(info))
    with pytest.raises(StoreError, match=r"is old format .* delete it"):
        FeatureCache.open(folder, MADE_BY, _manifest(6), (4,), "float32")
    again = FeatureCache.open(folder, MADE_BY, _manifest(6), (4,), "float32", owned=True)
    assert again.state == State.PARTIAL and len(again.missing()) == 6


def _fill(folder: str, log_file: str, worker: int) -> None:
    """One process needing the cache: open, fill what is missing in chunks (slowly), complete."""
    cache = FeatureCache.open(Path(folder), MADE_BY, _manifest(12), (2,), dtype="float32")
    with cache.filling():
        missing = cache.missing()
        for chunk in np.array_split(missing, 3) if len(missing) else []:
            time.sleep(0.2)
            cache.write(
                chunk, np.stack([chunk, chunk], 1).astype(np.float32), f"w{worker}-{chunk[0]}"
            )
            with open(log_file, "a") as handle:
                handle.write(f"{worker} {len(chunk)}\n")
        cache.finalize()
    assert cache.complete


def test_two_processes_needing_one_cache_compute_each_row_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    log_file = tmp_path / "written.txt"
    workers = [
        context.Process(target=_fill, args=(str(tmp_path / "f"), str(log_file), w)) for w in (1, 2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]  # neither fails
    written = [line.split() for line in log_file.read_text().splitlines()]
    assert sum(int(n) for _, n in written) == 12  # every row computed once: one filled, one waited
    cache = FeatureCache.reopen(tmp_path / "f", require_complete=True)
    np.testing.assert_array_equal(cache.features()[:, 0], np.arange(12))
