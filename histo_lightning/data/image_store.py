"""Image sources for datasets that index many samples over a set of image files.

A dataset row refers to an image by its position in an image source. Two sources exist:

* :class:`MemmapImageCache` decodes every image once into one flat ``uint8`` memory-mapped file (plus an
  index of offsets and shapes) under the cache folder. DataLoader workers then read pixels with no decoding
  and the OS page cache shares them between workers and processes. The cache is keyed by the relative
  path, size and modification time of every source file, so a changed dataset gets a new cache instead of
  mixing with an old one. It is built in a temporary folder and renamed when complete.
* :class:`FileImageSource` decodes the file on every access (no disk cache; slower, for huge datasets).

Both check every image once (decode for the cache, a full decode for the file source, remembered in a
small manifest) and report unreadable files; the data module then fails naming the file or, with
``on_corrupt=skip``, drops them and lists them at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from filelock import FileLock
from PIL import Image

from histo_lightning.errors import CorruptImageError
from histo_lightning.utils.io import atomic_dir, write_json_atomic
from histo_lightning.utils.logging import get_logger
from histo_lightning.utils.progress import progress_bar

log = get_logger(__name__)

# OpenCV's thread pool does not survive fork(): a forked DataLoader worker that touches it (even to call
# cv2.setNumThreads) after the parent started it deadlocks. Parallelism here comes from DataLoader
# workers and our own thread pools, so OpenCV runs single-threaded from the start, in every process.
cv2.setNumThreads(1)

CACHE_FORMAT_VERSION = 1


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 RGB array; :class:`CorruptImageError` if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError(f"cannot decode image file {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def files_key(paths: Sequence[Path], root: Path, extra: str = "") -> str:
    """A hex digest of everything that determines the decoded pixels: relative path, size, mtime of each file."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{extra}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class BadImage:
    """An image that could not be read, and why."""

    path: str
    reason: str


def _header_shape(path: str) -> tuple[int, int] | str:
    try:
        with Image.open(path) as image:
            width, height = image.size
        return int(height), int(width)
    except Exception as err:  # any failure to read the header means the file is unusable
        return f"{type(err).__name__}: {err}"


Preprocess = Callable[[np.ndarray], np.ndarray]


def output_shape(preprocess: Preprocess | None, height: int, width: int) -> tuple[int, int]:
    """The ``(height, width)`` that ``preprocess`` makes of an image of ``(height, width)``.

    A preprocess that changes the image size says so with an ``output_shape(height, width)`` method
    (e.g. :class:`Rescale`); any other keeps the size.
    """
    if preprocess is not None and hasattr(preprocess, "output_shape"):
        out_height, out_width = preprocess.output_shape(height, width)
        return int(out_height), int(out_width)
    return height, width


class Rescale:
    """A cache ``preprocess``: resize by ``scale`` (OpenCV bicubic, as Rakhlin et al. §2.3), then ``then``.

    The output size is ``round(scale · size)`` per side (2048×1536 at 0.5 → 1024×768). ``key()`` names the
    scale, the interpolation and ``then_key`` (everything ``then`` depends on) for the cache key.
    """

    def __init__(self, scale: float, then: Preprocess | None = None, then_key: str = "") -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if then is not None and not then_key:
            raise ValueError("a preprocess after the rescale needs a key naming what it depends on")
        self.scale, self.then, self.then_key = float(scale), then, then_key

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def key(self) -> str:
        return f"rescale{self.scale:g}-cubic" + (f"+{self.then_key}" if self.then_key else "")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = self.output_shape(*image.shape[:2])
        if (height, width) != image.shape[:2]:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        return image if self.then is None else self.then(image)


def _decode_into(
    flat: np.memmap,
    offset: int,
    height: int,
    width: int,
    path: str,
    preprocess: Preprocess | None = None,
) -> str | None:
    """Decode ``path`` (then ``preprocess`` it) into ``flat`` at ``offset``; the error text if unreadable.

    ``height, width`` are the file header's; the stored image has :func:`output_shape` of them.
    """
    try:
        pixels = read_rgb(path)
    except CorruptImageError as err:
        return str(err)
    if pixels.shape != (height, width, 3):
        return f"decoded shape {pixels.shape} differs from header {(height, width, 3)}"
    if preprocess is not None:
        expected = (*output_shape(preprocess, height, width), 3)
        pixels = preprocess(pixels)
        if pixels.shape != expected or pixels.dtype != np.uint8:
            raise ValueError(
                f"preprocess must return {expected} uint8, got {pixels.shape} {pixels.dtype}"
            )
    flat[offset : offset + pixels.size] = pixels.reshape(-1)
    return None


def _check_decode(path: str) -> str | None:
    try:
        read_rgb(path)
    except CorruptImageError as err:
        return str(err)
    return None


def _map_with_progress(
    fn: Callable[..., str | None], jobs: list[tuple], workers: int, description: str
) -> list[str | None]:
    """``fn(*job)`` for every job on ``workers`` threads (OpenCV decodes without holding the GIL).

    Threads rather than processes: data preparation also runs inside launcher workers (joblib/loky,
    submitit) and DDP ranks, where starting process pools is fragile.
    """
    results: list[str | None] = [None] * len(jobs)
    with progress_bar() as progress, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        task = progress.add_task(description, total=len(jobs))
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            progress.advance(task)
    return results


class MemmapImageCache:
    """All images of a dataset decoded once into ``<cache_dir>/<name>-<key>/pixels.u8``.

    Use :meth:`build_or_open`. Indexing returns a read-only ``(H, W, 3)`` view. The memmap is opened lazily
    in each process, so the object pickles cheaply into DataLoader workers. An optional ``preprocess``
    (e.g. stain normalisation) is applied once, when the cache is built; its ``preprocess_key`` (everything
    that determines its output) enters the cache key, so differently preprocessed caches never mix. A
    preprocess may change the image size if it has an ``output_shape`` method (:class:`Rescale`): the
    cache then holds the resized images (``shapes`` are theirs).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        index = np.load(self.folder / "index.npz")
        self.paths: list[str] = manifest["paths"]
        self.bad = [BadImage(**b) for b in manifest["bad"]]
        self.total_bytes = int(manifest["total_bytes"])
        self.offsets = index["offsets"]
        self.shapes = index["shapes"]
        self._flat: np.memmap | None = None

    @classmethod
    def build_or_open(
        cls,
        paths: Sequence[Path],
        root: Path,
        cache_dir: Path,
        name: str,
        workers: int = 1,
        preprocess: Preprocess | None = None,
        preprocess_key: str = "",
    ) -> MemmapImageCache:
        """Open the cache for exactly these files, building it first if it does not exist yet."""
        if preprocess is not None and not preprocess_key:
            raise ValueError("a preprocess needs a preprocess_key naming everything it depends on")
        key = files_key(paths, root, extra=preprocess_key)[:20]
        folder = Path(cache_dir) / f"{name}-{key}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if not (folder / "manifest.json").exists():
                cls._build(paths, root, folder, key, workers, preprocess, preprocess_key)
            else:
                log.info(f"Image cache: reusing {folder}")
        return cls(folder)

    @staticmethod
    def _build(
        paths: Sequence[Path],
        root: Path,
        folder: Path,
        key: str,
        workers: int,
        preprocess: Preprocess | None = None,
        preprocess_key: str = "",
    ) -> None:
        what = f"decoding and preprocessing ({preprocess_key})" if preprocess else "decoding"
        log.info(f"Image cache: {what} {len(paths)} images once into {folder}")
        headers = np.zeros((len(paths), 2), dtype=np.int64)
        shapes = np.zeros((len(paths), 2), dtype=np.int64)
        bad: dict[int, str] = {}
        for i, result in enumerate(_header_shape(str(p)) for p in paths):
            if isinstance(result, str):
                bad[i] = result
            else:
                headers[i] = result
                shapes[i] = output_shape(preprocess, *result)
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        total = max(int(sizes.sum()), 1)
        with atomic_dir(folder) as tmp:
            flat = np.memmap(tmp / "pixels.u8", dtype=np.uint8, mode="w+", shape=(total,))
            todo = [i for i in range(len(paths)) if i not in bad]
            jobs = [
                (
                    flat,
                    int(offsets[i]),
                    int(headers[i, 0]),
                    int(headers[i, 1]),
                    str(paths[i]),
                    preprocess,
                )
                for i in todo
            ]
            for i, error in zip(
                todo, _map_with_progress(_decode_into, jobs, workers, "decoding images")
            ):
                if error is not None:
                    bad[i] = error
            flat.flush()
            del flat
            np.savez(tmp / "index.npz", offsets=offsets, shapes=shapes)
            manifest = {
                "format_version": CACHE_FORMAT_VERSION,
                "key": key,
                "preprocess": preprocess_key,
                "root": str(root),
                "paths": [os.path.relpath(p, root) for p in paths],
                "bad": [{"path": str(paths[i]), "reason": bad[i]} for i in sorted(bad)],
                "total_bytes": total,
            }
            write_json_atomic(tmp / "manifest.json", manifest)

    def _pixels(self) -> np.memmap:
        if self._flat is None:
            self._flat = np.memmap(
                self.folder / "pixels.u8", dtype=np.uint8, mode="r", shape=(self.total_bytes,)
            )
        return self._flat

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_flat"] = None
        return state

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        height, width = (int(v) for v in self.shapes[i])
        offset = int(self.offsets[i])
        return self._pixels()[offset : offset + height * width * 3].reshape(height, width, 3)


class FileImageSource:
    """Decodes ``paths[i]`` on every access. Checks every file once (remembered in ``<cache_dir>``)."""

    def __init__(self, paths: Sequence[Path], bad: list[BadImage]) -> None:
        self.paths = [str(p) for p in paths]
        self.bad = bad

    @classmethod
    def checked(
        cls, paths: Sequence[Path], root: Path, cache_dir: Path, name: str, workers: int = 1
    ) -> FileImageSource:
        key = files_key(paths, root, extra="check")[:20]
        record = Path(cache_dir) / f"{name}-checked-{key}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(record) + ".lock"):
            if not record.exists():
                log.info(f"Checking that {len(paths)} images decode (once; remembered in {record})")
                errors = _map_with_progress(
                    _check_decode, [(str(p),) for p in paths], workers, "checking images"
                )
                bad = [
                    {"path": str(p), "reason": e} for p, e in zip(paths, errors) if e is not None
                ]
                write_json_atomic(record, {"key": key, "bad": bad})
            bad_list = [BadImage(**b) for b in json.loads(record.read_text())["bad"]]
        return cls(paths, bad_list)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i])
