"""Image sources for datasets that index many samples over a set of image files.

A dataset row refers to an image by its position in an image source. Two sources exist:

* :class:`MemmapImageCache` decodes every image once into one flat ``uint8`` memory-mapped file (plus an
  index of offsets and shapes) under the cache folder. DataLoader workers then read pixels with no decoding
  and the OS page cache shares them between workers and processes. The cache is keyed by the relative
  path, size and modification time of every source file, so a changed dataset gets a new cache instead of
  mixing with an old one. It is a store of :mod:`histo_lightning.stores.store` (kind ``images``): built
  once under a lock in a temporary folder renamed when complete, checked on every open (a truncated or
  damaged ``pixels.u8`` is rebuilt with a logged line).
* :class:`FileImageSource` decodes the file on every access (no disk cache; slower, for huge datasets).

Both check every image once (decode for the cache, a full decode for the file source, remembered in a
small manifest) and report unreadable files; the data module then fails naming the file or, with
``on_corrupt=skip``, drops them and lists them at the end of the run. Both folders are stores (kinds
``images`` and ``image-check``), listed by ``python -m histo_lightning.caches list``.

**One decoder.** Every image is decoded by Pillow, header and pixels alike (:func:`inspect_image`,
:func:`read_rgb`): the shape that sizes the cache is the shape of the pixels that fill it (the previous
mix of a header from Pillow and pixels from OpenCV called every image with an EXIF orientation
corrupt). An EXIF orientation tag is applied, with a note: pixels are in display orientation, as image
viewers, OpenCV's ``imread`` and Pillow's own TIFF reader show them, so annotation coordinates made on
the displayed image match.

**What is accepted** (the images are H&E photographs; the readers expect 8-bit RGB):

=====================================  ========================================================
stored as                              result
=====================================  ========================================================
8-bit RGB (any codec Pillow reads)     used as is
8-bit palette (``P``)                  converted to RGB, with a logged note (lossless)
8-bit RGBA, alpha opaque everywhere    alpha dropped, with a logged note (viewer exports)
8-bit RGBA with transparent pixels     refused by name: the colour under transparency is undefined
grayscale (``L``, ``I;16``, ``1``...)  refused by name: stain normalisation and the networks
                                       need the colour of an H&E image
16 bits per channel (RGB or RGBA)      refused by name: the useful range (often 12 bits in a 16-bit
                                       container) is not recorded, so no scaling to 8 bits is safe;
                                       convert it to 8-bit RGB yourself
CMYK, LAB, HSV, float, other modes     refused by name (naming the mode)
=====================================  ========================================================

A refused image is reported like an unreadable one (:class:`BadImage`; ``on_corrupt=fail`` names it,
``skip`` leaves it out). Notes about converted images are logged once, when the cache is built, and
kept in its manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from histo_lightning.errors import CorruptImageError
from histo_lightning.stores.keys import files_digest
from histo_lightning.stores.store import Store
from histo_lightning.utils.io import write_json_atomic
from histo_lightning.utils.logging import get_logger
from histo_lightning.utils.progress import progress_bar

log = get_logger(__name__)

# OpenCV's thread pool does not survive fork(): a forked DataLoader worker that touches it (even to call
# cv2.setNumThreads) after the parent started it deadlocks. Parallelism here comes from DataLoader
# workers and our own thread pools, so OpenCV runs single-threaded from the start, in every process.
cv2.setNumThreads(1)

# 2: Pillow decodes header and pixels (was OpenCV pixels), cache.json, converted-image notes
# 3: the store mechanism (histo_lightning.stores)
CACHE_FORMAT_VERSION = 3


EXPECTED = "expected an 8-bit RGB H&E image"
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: its shape and how it will be decoded (``note``: a conversion)."""

    height: int
    width: int
    mode: str
    note: str | None = None


def _is_16_bit(image: Image.Image) -> bool:
    rawmode = image.tile[0][3] if image.tile else None
    rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    bits = image.tag_v2.get(258) if hasattr(image, "tag_v2") else None  # TIFF BitsPerSample
    wide = isinstance(bits, (tuple, list)) and any(int(b) > 8 for b in bits)
    return wide or (isinstance(bits, int) and bits > 8) or ";16" in str(rawmode or "")


def _check_mode(image: Image.Image, path: str | Path) -> str | None:
    """The note for an accepted conversion, or raise :class:`CorruptImageError` for a refused mode."""
    mode = image.mode
    if mode in ("RGB", "RGBA") and _is_16_bit(image):
        raise CorruptImageError(
            f"{path}: 16 bits per channel ({mode}); {EXPECTED} (the useful range is not recorded, "
            "so it is not scaled for you: convert it to 8-bit RGB)"
        )
    if mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") or mode.startswith(
        "I;"
    ):
        raise CorruptImageError(f"{path}: grayscale (mode {mode}); {EXPECTED}")
    if mode == "RGB":
        note = None
    elif mode == "RGBA":
        note = "RGBA: opaque alpha channel dropped"
    elif mode in ("P", "PA"):
        note = "palette image converted to RGB"
    else:
        raise CorruptImageError(f"{path}: unsupported image mode {mode}; {EXPECTED}")
    orientation = _orientation(image)
    if orientation != 1:
        extra = f"EXIF orientation {orientation} applied (pixels in display orientation)"
        note = f"{note}; {extra}" if note else extra
    return note


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except (TypeError, ValueError):
        return 1


def inspect_image(path: str | Path) -> ImageInfo:
    """The header of an image (Pillow, no pixel decoding); :class:`CorruptImageError` if unusable."""
    try:
        with Image.open(path) as image:
            note = _check_mode(image, path)
            width, height = image.size
            if image.format != "TIFF" and _orientation(image) in (5, 6, 7, 8):
                width, height = height, width  # Pillow's TIFF header already reports it turned
            return ImageInfo(int(height), int(width), image.mode, note)
    except CorruptImageError:
        raise
    except Exception as err:  # any failure to read the header means the file is unusable
        raise CorruptImageError(
            f"{path}: cannot decode this image file ({type(err).__name__}: {err})"
        ) from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 RGB array (Pillow; see the module docstring).

    Raises:
        CorruptImageError: the file cannot be decoded, or its mode is refused (naming the file).
    """
    try:
        with Image.open(path) as image:
            _check_mode(image, path)
            image.load()  # Pillow's TIFF reader applies the EXIF orientation here
            image = ImageOps.exif_transpose(image)  # other formats: here (a TIFF: no-op)
            if image.mode == "RGB":
                return np.asarray(image)
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA")
            pixels = np.asarray(image)
    except CorruptImageError:
        raise
    except Exception as err:
        raise CorruptImageError(
            f"{path}: cannot decode this image file ({type(err).__name__}: {err})"
        ) from None
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        if pixels[..., 3].min() < 255:
            raise CorruptImageError(
                f"{path}: RGBA with transparent pixels (the colour under them is undefined); "
                f"{EXPECTED}"
            )
        pixels = pixels[..., :3]
    return np.ascontiguousarray(pixels)


def files_key(paths: Sequence[Path], root: Path, extra: str = "") -> str:
    """A hex digest of everything that determines the decoded pixels: relative path, size, mtime of each
    file, and ``extra`` (:func:`~histo_lightning.stores.keys.files_digest`)."""
    return files_digest(paths, root, f"v{CACHE_FORMAT_VERSION}|{extra}", length=64)


@dataclass
class BadImage:
    """An image that could not be read, and why."""

    path: str
    reason: str


def _reason(err: CorruptImageError, path: str | Path) -> str:
    """The error text without its leading ``<path>: `` (a :class:`BadImage` names the path itself)."""
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _header(path: str) -> ImageInfo | str:
    try:
        return inspect_image(path)
    except CorruptImageError as err:
        return _reason(err, path)


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
        return _reason(err, path)
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
        return _reason(err, path)
    return None


def _map_with_progress(
    fn: Callable[..., str | None], jobs: list[tuple], workers: int, description: str
) -> list[str | None]:
    """``fn(*job)`` for every job on ``workers`` threads (Pillow decodes without holding the GIL).

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


def log_conversions(converted: list[dict[str, str]], shown: int = 5) -> None:
    """Log the images converted on decoding (see the module docstring), a few by name."""
    if not converted:
        return
    listing = "; ".join(f"{c['path']}: {c['note']}" for c in converted[:shown])
    more = (
        f"; and {len(converted) - shown} more (listed in the cache manifest)"
        if len(converted) > shown
        else ""
    )
    log.warning(f"Converted {len(converted)} image(s) on decoding: {listing}{more}")


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
        made_by = {
            "dataset": name,
            "root": str(root),
            "files_key": files_key(paths, root)[:24],
            "images": len(paths),
            "preprocess": preprocess_key or None,
        }
        store = Store.keyed(cache_dir, name, "images", made_by, CACHE_FORMAT_VERSION, length=20)
        if not store.ensure(
            lambda tmp: cls._build(paths, root, tmp, workers, preprocess, preprocess_key),
            f"decoding {len(paths)} images",
        ):
            log.info(f"Image cache: reusing {store.folder}")
        return cls(store.folder)

    @staticmethod
    def _build(
        paths: Sequence[Path],
        root: Path,
        tmp: Path,
        workers: int,
        preprocess: Preprocess | None = None,
        preprocess_key: str = "",
    ) -> None:
        """Decode (and preprocess) every image into ``tmp``, the folder that becomes the cache."""
        what = f"decoding and preprocessing ({preprocess_key})" if preprocess else "decoding"
        log.info(f"Image cache: {what} {len(paths)} images once")
        headers = np.zeros((len(paths), 2), dtype=np.int64)
        shapes = np.zeros((len(paths), 2), dtype=np.int64)
        bad: dict[int, str] = {}
        notes: dict[int, str] = {}
        for i, result in enumerate(_header(str(p)) for p in paths):
            if isinstance(result, str):
                bad[i] = result
            else:
                headers[i] = (result.height, result.width)
                shapes[i] = output_shape(preprocess, result.height, result.width)
                if result.note:
                    notes[i] = result.note
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        total = max(int(sizes.sum()), 1)
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
            "preprocess": preprocess_key,
            "root": str(root),
            "paths": [os.path.relpath(p, root) for p in paths],
            "bad": [{"path": str(paths[i]), "reason": bad[i]} for i in sorted(bad)],
            "converted": [
                {"path": str(paths[i]), "note": notes[i]} for i in sorted(notes) if i not in bad
            ],
            "total_bytes": total,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        log_conversions(manifest["converted"])

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
        made_by = {
            "dataset": name,
            "root": str(root),
            "files_key": files_key(paths, root, extra="check")[:24],
            "images": len(paths),
        }
        store = Store.keyed(
            cache_dir, f"{name}-checked", "image-check", made_by, CACHE_FORMAT_VERSION, length=20
        )

        def check(tmp: Path) -> None:
            log.info(
                f"Checking that {len(paths)} images decode (once; remembered in {store.folder})"
            )
            errors = _map_with_progress(
                _check_decode, [(str(p),) for p in paths], workers, "checking images"
            )
            bad = [{"path": str(p), "reason": e} for p, e in zip(paths, errors) if e is not None]
            converted = []
            for p, e in zip(paths, errors):
                info = _header(str(p)) if e is None else None
                if isinstance(info, ImageInfo) and info.note:
                    converted.append({"path": str(p), "note": info.note})
            write_json_atomic(tmp / "checked.json", {"bad": bad, "converted": converted})
            log_conversions(converted)

        store.ensure(check, f"checking {len(paths)} images")
        bad_list = [
            BadImage(**b) for b in json.loads((store.folder / "checked.json").read_text())["bad"]
        ]
        return cls(paths, bad_list)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i])
