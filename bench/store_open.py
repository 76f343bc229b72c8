"""What does checking a store on every open cost? The store mechanism's check against reading the file.

    python bench/store_open.py [--gigabytes 1.0] [--folder /tmp/store_bench]

Writes a complete feature cache of about ``--gigabytes`` of float16 rows (random values, 1024 per row)
through :class:`~histo_lightning.stores.feature_cache.FeatureCache`, then measures:

1. ``open check``: :func:`histo_lightning.stores.store.inspect` of the cache, i.e. what every open does:
   every recorded size compared, the sampled sha256 (1 MiB whatever the size) of the largest files;
2. ``full read``: a sha256 of the whole ``features.npy`` (what a full checksum on every open would cost),

both with the file in the page cache (just written) and prints their times and the ratio. The sampled
check's cost does not grow with the file: a 10 GB cache costs the same as a 1 GB one; the full read grows
linearly (ten times the printed time at 10 GB, more when the file is not cached).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

# this checkout's histo_lightning first (an installed copy would otherwise win)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.stores.store import State, inspect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/store_bench"))
    args = parser.parse_args()
    dim = 1024
    rows = int(args.gigabytes * 2**30 / (2 * dim))
    shutil.rmtree(args.folder, ignore_errors=True)
    manifest = pd.DataFrame(
        {"index": np.arange(rows), "origin": "x", "patient": "p", "label": np.zeros(rows, int)}
    )
    cache = FeatureCache.open(args.folder, {"bench": 1}, manifest, (dim,))
    rng = np.random.default_rng(0)
    chunk = 65536
    for start in range(0, rows, chunk):
        index = np.arange(start, min(rows, start + chunk))
        cache.write(index, rng.standard_normal((len(index), dim), np.float32), f"c{start}")
    began = time.perf_counter()
    cache.finalize()
    completing = time.perf_counter() - began
    size = (args.folder / "features.npy").stat().st_size

    repeats = 20
    began = time.perf_counter()
    for _ in range(repeats):
        assert inspect(args.folder).state == State.COMPLETE
    check = (time.perf_counter() - began) / repeats
    began = time.perf_counter()
    sha = hashlib.sha256()
    with open(args.folder / "features.npy", "rb") as handle:
        while block := handle.read(2**24):
            sha.update(block)
    full = time.perf_counter() - began
    print(f"feature cache: {rows:,} rows x {dim} float16 = {size / 2**30:.2f} GiB")
    print(f"completing (record sizes + sampled checksums): {completing * 1000:.1f} ms")
    print(f"open check (sizes + sampled checksums):        {check * 1000:.2f} ms")
    print(f"full sha256 of features.npy:                   {full * 1000:.1f} ms")
    print(f"ratio full / open check: {full / check:.0f}x")
    shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
