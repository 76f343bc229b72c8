"""The one digest helper of the project: keys of stores, fingerprints of stages, checksums of files.

Everything that names or checks what produced something condenses it here, with one hash (sha256):

* :func:`digest` of a JSON-able document (keys sorted): store keys (``made_by``), stage fingerprints;
* :func:`frame_digest` of a table's values, :func:`array_digest` of arrays (a sample manifest, a patch
  index, the bags of a dataset);
* :func:`file_identity` / :func:`files_digest`: relative path, size and modification time of the files
  behind a store (what says a file is still the same file, without reading it);
* :func:`sampled_checksum`: a cheap checksum of a (possibly huge) file read in a few blocks, which the
  store mechanism (:mod:`histo_lightning.stores.store`) records and checks on every open;
* :func:`describe_differences`: why a recorded document and a requested one differ, key by key, so that a
  refusal or a redo can name its reason.

All of them rest on :func:`digest_bytes` (sha256 of byte chunks, hex, cut to ``length``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if (
    TYPE_CHECKING
):  # numpy and pandas load on first use: `python -m histo_lightning.caches` starts fast
    import numpy as np
    import pandas as pd

BLOCK = 64 * 1024  # bytes read per sampled block
BLOCKS = 16  # blocks a sampled checksum reads at most (1 MiB): files up to that size are read whole
CHECKSUM = f"sha256/{BLOCKS}x{BLOCK // 1024}KiB"


def digest_bytes(chunks: Iterable[bytes], length: int | None = 16) -> str:
    """The sha256 of the concatenated ``chunks`` as hex, cut to ``length`` characters (None: all 64)."""
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    text = sha.hexdigest()
    return text if length is None else text[:length]


def digest_int(text: str) -> int:
    """A stable 64-bit number for ``text`` (the first 8 bytes of its sha256, little-endian): the same on
    every machine and run, for seeding a random stream by a name (an image, a slide)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def canonical(value: Any) -> Any:
    """The JSON form of ``value`` (tuples as lists, numpy scalars and paths as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def digest(value: Any, length: int | None = 16) -> str:
    """A short sha256 of a JSON-able value (keys sorted)."""
    return digest_bytes([json.dumps(canonical(value), sort_keys=True).encode()], length)


def frame_digest(frame: pd.DataFrame, length: int | None = 16) -> str:
    """A short sha256 of a table's values (row order and column names included)."""
    import numpy as np
    import pandas as pd

    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return digest_bytes(
        [",".join(map(str, frame.columns)).encode(), np.ascontiguousarray(hashes).tobytes()], length
    )


def array_digest(arrays: Sequence[np.ndarray], length: int | None = 16) -> str:
    """A short sha256 of the bytes of ``arrays`` in order (what they hold, not how they are typed)."""
    import numpy as np

    return digest_bytes((np.ascontiguousarray(a).tobytes() for a in arrays), length)


def file_identity(path: str | Path | None, root: str | Path) -> dict[str, Any] | None:
    """Relative path, size and modification time: what says a file is still the same file."""
    if path is None:
        return None
    stat = os.stat(path)
    return {"path": os.path.relpath(path, root), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def files_digest(paths: Sequence[Path], root: Path, extra: str = "", length: int = 24) -> str:
    """A digest of the identities (:func:`file_identity`) of ``paths`` in order, and of ``extra``."""
    lines = (
        "{path}|{size}|{mtime_ns}\n".format(**file_identity(p, root)).encode()  # type: ignore[arg-type]
        for p in paths
    )
    return digest_bytes([f"{extra}\n".encode(), *lines], length)


def sampled_checksum(path: str | Path, size: int | None = None) -> str:
    """A checksum of ``path`` from its size and at most :data:`BLOCKS` blocks (the first, the last and
    evenly spaced ones between): about a millisecond for any file, so it runs on every open.

    A truncated or extended file changes its size; damage inside a sampled block changes the checksum.
    A file up to ``BLOCKS × BLOCK`` bytes is read whole.
    """
    size = os.stat(path).st_size if size is None else int(size)
    sha = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as handle:
        if size <= BLOCKS * BLOCK:
            sha.update(handle.read())
        else:
            last = size - BLOCK
            for i in range(BLOCKS):
                handle.seek(last * i // (BLOCKS - 1))
                sha.update(handle.read(BLOCK))
    return sha.hexdigest()[:32]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` for ``{"a": {"b": 1}}`` (lists stay values)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def describe_differences(
    recorded: Mapping[str, Any],
    requested: Mapping[str, Any],
    here: str = "here",
    there: str = "recorded",
    limit: int = 8,
) -> list[str]:
    """``key: <requested> <here>, <recorded> <there>`` for each flattened key that differs (at most ``limit``)."""
    old, new = flatten(canonical(recorded)), flatten(canonical(requested))
    lines = [
        f"{key}: {new.get(key, '<absent>')!r} {here}, {old.get(key, '<absent>')!r} {there}"
        for key in sorted(set(old) | set(new))
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


__all__ = [
    "CHECKSUM",
    "array_digest",
    "canonical",
    "describe_differences",
    "digest",
    "digest_bytes",
    "digest_int",
    "file_identity",
    "files_digest",
    "flatten",
    "frame_digest",
    "sampled_checksum",
]
