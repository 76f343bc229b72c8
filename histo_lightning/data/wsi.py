"""Whole-slide images: slides, masks, tissue detection, patch sampling and on-the-fly patch reading.

The machinery every slide-based experiment uses (first: SMSE on PAIP 2019, §IV-D):

* **Slides** are read through openslide (Aperio SVS, generic tiled TIFF and the other formats it knows);
  :func:`open_slide` turns any failure into a :class:`~histo_lightning.errors.CorruptImageError` naming the
  file, :func:`slide_info` gives the pyramid and the pixel size (``openslide.mpp-x``, which openslide
  reads from Aperio's ``MPP`` or from the TIFF resolution tags).
* **Masks** (e.g. PAIP's full-resolution ``*_viable.tif``, 0/1 per pixel) are read by :class:`TiledMask`
  through tifffile, one tile or strip at a time: a region read decodes only the segments it touches, and
  per-block pixel counts are accumulated segment by segment, so a level-0 mask of 10⁹ pixels is never
  held whole in memory.
* **Tissue** is found by Otsu's threshold on the saturation of a low-resolution level
  (:func:`tissue_mask`).
* **Patches** (:func:`sample_patches`): a grid of ``patch_size`` patches (non-overlapping by default, as
  the SMSE paper's "non-overlapping cropping") is laid over the slide; patches with enough tissue are
  candidates, labelled from the mask by a configurable rule for border patches (:class:`PatchSpec`), and a
  random ``n_per_slide`` of them is kept, half of each class where the slide allows.
* **Caching** (:func:`load_or_sample_patches`): each slide's coordinate index is a store of
  :mod:`histo_lightning.stores.store` (kind ``patch_index``), ``<cache>/<slide>-<key>/patches.csv``; the
  key covers the slide and mask files (path, size, modification time), every sampling parameter and the
  sampler version, so an index is never mixed with one made differently (a record that disagrees with its
  key, or a damaged file, is resampled with a logged line).
* **Reading** (:class:`SlidePatchSource`): patches are read on the fly in DataLoader workers, each process
  holding one lazily opened openslide handle per slide (:class:`SlideHandles`; a forked worker never uses
  its parent's handles).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import pandas as pd
import tifffile

from histo_lightning.errors import ConfigError, CorruptImageError
from histo_lightning.stores.keys import digest_int, file_identity
from histo_lightning.stores.store import Store
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

SAMPLER_VERSION = 1
INDEX_FORMAT = 2  # 2: one store per slide (histo_lightning.stores)
LABEL_RULES = ("fraction", "centre", "pure")


# ---- slides ------------------------------------------------------------------------------------------------
def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a whole-slide image with openslide; :class:`CorruptImageError` naming it if that fails."""
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise CorruptImageError(
            f"cannot open slide {path}: {type(err).__name__}: {err}".rstrip(": ")
        ) from err


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is: its pyramid and pixel size."""

    path: str
    vendor: str | None
    dimensions: tuple[int, int]  # level 0 (width, height)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None  # microns per pixel (x, y) at level 0

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)


def slide_info(slide: openslide.OpenSlide, path: str | Path = "") -> SlideInfo:
    props = slide.properties
    try:
        mpp = (
            float(props[openslide.PROPERTY_NAME_MPP_X]),
            float(props[openslide.PROPERTY_NAME_MPP_Y]),
        )
    except (KeyError, ValueError):
        mpp = None
    return SlideInfo(
        path=str(path),
        vendor=props.get(openslide.PROPERTY_NAME_VENDOR),
        dimensions=tuple(slide.dimensions),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=mpp,
    )


def read_region_rgb(
    slide: openslide.OpenSlide, x: int, y: int, level: int, width: int, height: int
) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB at level-0 position ``(x, y)``; transparent pixels become white."""
    rgba = np.asarray(slide.read_region((int(x), int(y)), int(level), (int(width), int(height))))
    rgb = rgba[..., :3].copy()
    alpha = rgba[..., 3]
    if (alpha < 255).any():  # openslide returns premultiplied RGBA: blend onto white
        a = alpha[..., None].astype(np.float32) / 255.0
        rgb = np.clip(rgb.astype(np.float32) + 255.0 * (1.0 - a), 0, 255).astype(np.uint8)
    return rgb


# ---- masks -------------------------------------------------------------------------------------------------
class TiledMask:
    """A single-channel mask TIFF (tiled or stripped) read one segment at a time with tifffile.

    ``shape`` is ``(height, width)`` of the full-resolution (first) page. :meth:`read` decodes only the
    tiles/strips a region touches (with a small cache), :meth:`block_counts` streams every segment once.
    Pixel values > 0 count as foreground. Thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(self.path))
            page = self._tif.pages.first
            self._page = page
            shape = tuple(page.shape)
        except Exception as err:  # tifffile raises many types for broken files
            raise CorruptImageError(
                f"cannot read mask {self.path}: {type(err).__name__}: {err}"
            ) from err
        if len(shape) == 3 and shape[-1] == 1:
            shape = shape[:2]
        if len(shape) != 2:
            raise CorruptImageError(
                f"mask {self.path} has shape {shape}; expected a single-channel (height, width) image"
            )
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self._lock = threading.Lock()
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = int(min(page.rowsperstrip, self.shape[0])), self.shape[1]
        self._per_row = math.ceil(self.shape[1] / self._seg_w)
        self._decode_cached = lru_cache(maxsize=64)(self._decode)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> TiledMask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, index: int) -> np.ndarray:
        """Segment ``index`` as a 2-d array cropped to the image."""
        page = self._page
        with self._lock:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count) if count else None
        row, col = divmod(index, self._per_row)
        h = min(self._seg_h, self.shape[0] - row * self._seg_h)
        w = min(self._seg_w, self.shape[1] - col * self._seg_w)
        if data is None:
            return np.zeros((h, w), dtype=np.uint8)
        try:
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as err:
            raise CorruptImageError(
                f"cannot decode segment {index} of mask {self.path}: {type(err).__name__}: {err}"
            ) from err
        segment = np.asarray(segment).reshape(segment.shape[1], segment.shape[2], -1)[..., 0]
        return segment[:h, :w]

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """The mask in rows ``y…y+height``, columns ``x…x+width`` (zeros outside the image)."""
        out = np.zeros((height, width), dtype=np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + height, self.shape[0]), min(x + width, self.shape[1])
        if y0 >= y1 or x0 >= x1:
            return out
        for row in range(y0 // self._seg_h, (y1 - 1) // self._seg_h + 1):
            for col in range(x0 // self._seg_w, (x1 - 1) // self._seg_w + 1):
                segment = self._decode_cached(row * self._per_row + col)
                sy, sx = row * self._seg_h, col * self._seg_w
                ya, yb = max(y0, sy), min(y1, sy + segment.shape[0])
                xa, xb = max(x0, sx), min(x1, sx + segment.shape[1])
                out[ya - y : yb - y, xa - x : xb - x] = segment[
                    ya - sy : yb - sy, xa - sx : xb - sx
                ]
        return out

    def segments(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Every segment once, as ``(y, x, array)`` (not cached)."""
        rows = math.ceil(self.shape[0] / self._seg_h)
        for index in range(rows * self._per_row):
            row, col = divmod(index, self._per_row)
            yield row * self._seg_h, col * self._seg_w, self._decode(index)

    def block_counts(self, block: int) -> np.ndarray:
        """Foreground pixels per ``block × block`` block: ``(ceil(H / block), ceil(W / block))`` int64."""
        out = np.zeros(
            (math.ceil(self.shape[0] / block), math.ceil(self.shape[1] / block)), np.int64
        )
        for y, x, segment in self.segments():
            fg = (segment > 0).astype(np.int32)
            # reduce columns, then rows, at the block boundaries falling inside this segment
            col_starts = np.unique(np.r_[0, np.arange(-x % block, fg.shape[1], block)])
            col_starts = col_starts[col_starts < fg.shape[1]]
            cols = np.add.reduceat(fg, col_starts, axis=1)
            row_starts = np.unique(np.r_[0, np.arange(-y % block, fg.shape[0], block)])
            row_starts = row_starts[row_starts < fg.shape[0]]
            sums = np.add.reduceat(cols, row_starts, axis=0)
            by, bx = (y + row_starts) // block, (x + col_starts) // block
            out[np.ix_(by, bx)] += sums
        return out


# ---- tissue ------------------------------------------------------------------------------------------------
def tissue_mask(
    slide: openslide.OpenSlide, downsample: float = 32.0, min_saturation: int = 15
) -> tuple[np.ndarray, float]:
    """Tissue (True) vs background at about ``downsample``: Otsu's threshold on the HSV saturation.

    The pyramid level closest below ``downsample`` is read whole and resized to ``level-0 size /
    downsample``. Glass is grey-white (low saturation), stained tissue is coloured; ``min_saturation`` is a
    floor on the threshold so a slide with little tissue is not split inside its background noise. A
    morphological closing then opening removes specks and fills pinholes. Returns ``(mask, downsample)``
    where ``downsample`` is the exact level-0 pixels per mask pixel (in x).
    """
    width0, height0 = slide.dimensions
    level = slide.get_best_level_for_downsample(downsample)
    lw, lh = slide.level_dimensions[level]
    rgb = read_region_rgb(slide, 0, 0, level, lw, lh)
    size = (max(1, round(width0 / downsample)), max(1, round(height0 / downsample)))
    if (lw, lh) != size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = saturation > max(float(otsu), float(min_saturation))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return mask.astype(bool), width0 / size[0]


def _box_sums(integral: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def _integral(values: np.ndarray) -> np.ndarray:
    out = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    out[1:, 1:] = values.cumsum(0).cumsum(1)
    return out


# ---- sampling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchSpec:
    """How patches are cut from a slide and labelled from its mask (every field keys the cache).

    Attributes:
        patch_size: patch side in pixels at ``level`` (SMSE: 224).
        stride: grid step in pixels at ``level``; ``patch_size`` gives the paper's non-overlapping cropping.
        level: pyramid level patches are read at (0 = full resolution, 20× for PAIP).
        n_per_slide: patches kept per slide (SMSE: 1,000).
        balance: keep ``n_per_slide / 2`` of each class where the slide has them (SMSE Table IX).
        fill_shortfall: when one class has too few patches, fill up with the other (off by default: the
            paper's Table IX keeps 500 normal and only 9,375 of 10,000 tumour test patches, i.e. no filling).
        label_rule: how the mask labels a patch (the paper does not say for border patches):
            ``fraction``: tumour when the masked fraction of the patch is ≥ ``tumour_fraction``, else normal.
            With the default ``tumour_fraction=1.0`` this is the paper's sentence read literally: "patches
            cropped within the viable tumour area are labeled as tumour while the others are labeled as
            normal". ``centre``: the mask value at the patch centre. ``pure``: tumour if entirely masked,
            normal if not masked at all, mixed patches left out.
        tumour_fraction: the threshold of the ``fraction`` rule.
        min_tissue: least tissue fraction of a candidate patch (Otsu tissue mask).
        tissue_downsample: downsample of the tissue mask.
        min_saturation: floor of the Otsu saturation threshold (0–255).
        seed: sampling seed, combined with the slide name (each slide's draw is independent of the others).
    """

    patch_size: int = 224
    stride: int = 224
    level: int = 0
    n_per_slide: int = 1000
    balance: bool = True
    fill_shortfall: bool = False
    label_rule: str = "fraction"
    tumour_fraction: float = 1.0
    min_tissue: float = 0.5
    tissue_downsample: float = 32.0
    min_saturation: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(
                f"dataset.sampling.label_rule={self.label_rule!r}: expected one of {', '.join(LABEL_RULES)}"
            )
        if self.patch_size < 8 or self.stride < 1 or self.n_per_slide < 1 or self.level < 0:
            raise ConfigError(
                "dataset.sampling: patch_size ≥ 8, stride ≥ 1, n_per_slide ≥ 1 and level ≥ 0 are needed"
            )
        if not 0.0 < self.tumour_fraction <= 1.0 or not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(
                "dataset.sampling: tumour_fraction must be in (0, 1] and min_tissue in [0, 1]"
            )


def _slide_seed(seed: int, slide_name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), digest_int(slide_name)])


def label_patches(fraction: np.ndarray, centre: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """Labels (1 tumour, 0 normal, -1 left out) from masked fractions and centre values."""
    if spec.label_rule == "centre":
        return (centre > 0).astype(np.int64)
    if spec.label_rule == "pure":
        labels = np.full(len(fraction), -1, dtype=np.int64)
        labels[fraction <= 0.0] = 0
        labels[fraction >= 1.0] = 1
        return labels
    return (fraction >= spec.tumour_fraction - 1e-9).astype(np.int64)


def grid_candidates(
    slide: openslide.OpenSlide, mask: TiledMask | None, spec: PatchSpec
) -> pd.DataFrame:
    """Every grid patch of the slide with its tissue fraction, masked fraction, centre value and label.

    Columns ``x, y`` (level-0 top-left), ``tissue``, ``tumour_fraction``, ``centre``, ``label``. Masked
    fractions are exact: the mask is counted in blocks of ``gcd(footprint, stride)`` level-0 pixels,
    streamed segment by segment. Without a mask every patch is normal.
    """
    width0, height0 = slide.dimensions
    if spec.level >= slide.level_count:
        raise ConfigError(
            f"dataset.sampling.level={spec.level} but the slide has {slide.level_count} levels"
        )
    scale = float(slide.level_downsamples[spec.level])
    footprint, step = round(spec.patch_size * scale), max(1, round(spec.stride * scale))
    nx = (width0 - footprint) // step + 1 if width0 >= footprint else 0
    ny = (height0 - footprint) // step + 1 if height0 >= footprint else 0
    columns = ["x", "y", "tissue", "tumour_fraction", "centre", "label"]
    if nx <= 0 or ny <= 0:
        return pd.DataFrame(columns=columns)
    gy, gx = np.mgrid[0:ny, 0:nx]
    xs, ys = (gx * step).ravel(), (gy * step).ravel()

    tissue, t_down = tissue_mask(slide, spec.tissue_downsample, spec.min_saturation)
    t_int = _integral(tissue.astype(np.float64))
    tx0 = np.clip(np.round(xs / t_down).astype(int), 0, tissue.shape[1])
    ty0 = np.clip(np.round(ys / t_down).astype(int), 0, tissue.shape[0])
    tx1 = np.clip(np.round((xs + footprint) / t_down).astype(int), 0, tissue.shape[1])
    ty1 = np.clip(np.round((ys + footprint) / t_down).astype(int), 0, tissue.shape[0])
    tx1, ty1 = np.maximum(tx1, tx0 + 1), np.maximum(ty1, ty0 + 1)
    area = (tx1 - tx0) * (ty1 - ty0)
    tissue_fraction = _box_sums(t_int, ty0, tx0, ty1, tx1) / np.maximum(area, 1)

    fraction = np.zeros(len(xs))
    centre = np.zeros(len(xs), dtype=np.uint8)
    if mask is not None:
        if mask.shape != (height0, width0):
            raise CorruptImageError(
                f"mask {mask.path} is {mask.shape[1]}x{mask.shape[0]} but its slide is {width0}x{height0}"
            )
        block = math.gcd(footprint, step)
        m_int = _integral(mask.block_counts(block).astype(np.float64))
        fraction = _box_sums(
            m_int, ys // block, xs // block, (ys + footprint) // block, (xs + footprint) // block
        ) / float(footprint * footprint)
        if spec.label_rule == "centre":
            half = footprint // 2
            centre = np.array(
                [mask.read(int(y) + half, int(x) + half, 1, 1)[0, 0] for x, y in zip(xs, ys)]
            )
    table = pd.DataFrame(
        {"x": xs, "y": ys, "tissue": tissue_fraction, "tumour_fraction": fraction, "centre": centre}
    )
    table["label"] = label_patches(fraction, centre, spec)
    return table


def select_patches(candidates: pd.DataFrame, spec: PatchSpec, slide_name: str) -> pd.DataFrame:
    """The kept patches: tissue ≥ ``min_tissue``, labelled, ``n_per_slide`` drawn (balanced where possible)."""
    rng = np.random.default_rng(_slide_seed(spec.seed, slide_name))
    pool = candidates[(candidates["tissue"] >= spec.min_tissue) & (candidates["label"] >= 0)]
    if not spec.balance:
        n = min(spec.n_per_slide, len(pool))
        chosen = pool.iloc[np.sort(rng.choice(len(pool), size=n, replace=False))]
    else:
        per_class = {c: pool[pool["label"] == c] for c in (0, 1)}
        quota = {0: spec.n_per_slide // 2, 1: spec.n_per_slide - spec.n_per_slide // 2}
        take = {c: min(quota[c], len(per_class[c])) for c in (0, 1)}
        if spec.fill_shortfall:
            for c in (0, 1):
                spare = len(per_class[1 - c]) - take[1 - c]
                take[1 - c] += min(spare, quota[c] - take[c])
        parts = [
            df.iloc[rng.choice(len(df), size=take[c], replace=False)]
            for c, df in per_class.items()
            if take[c]
        ]
        chosen = pd.concat(parts) if parts else pool.iloc[:0]
    return chosen.sort_values(["y", "x"]).reset_index(drop=True)


def sample_patches(
    slide_path: str | Path, mask_path: str | Path | None, spec: PatchSpec, verify: int = 16
) -> pd.DataFrame:
    """The patch index of one slide: columns ``x, y, label, tumour_fraction, tissue`` (level-0 coordinates).

    ``verify`` of the kept patches (−1: all) are read back once, so a slide whose pixels cannot be decoded
    fails here, naming the file, rather than in a DataLoader worker mid-training.
    """
    slide_path = Path(slide_path)
    slide = open_slide(slide_path)
    try:
        mask = TiledMask(mask_path) if mask_path is not None else None
        try:
            candidates = grid_candidates(slide, mask, spec)
        finally:
            if mask is not None:
                mask.close()
        chosen = select_patches(candidates, spec, slide_path.stem)
        check = chosen if verify < 0 else chosen.iloc[: max(0, verify)]
        for x, y in zip(check["x"], check["y"]):
            read_region_rgb(slide, x, y, spec.level, spec.patch_size, spec.patch_size)
    except openslide.OpenSlideError as err:
        raise CorruptImageError(f"cannot read slide {slide_path}: {err}") from err
    finally:
        slide.close()
    return chosen[["x", "y", "label", "tumour_fraction", "tissue"]]


# ---- the per-slide cache -----------------------------------------------------------------------------------
def index_made_by(
    slide: str | Path, mask: str | Path | None, root: str | Path, spec: PatchSpec, verify: int
) -> dict[str, Any]:
    """Everything that determines a slide's patch index (its store key)."""
    return {
        "sampler_version": SAMPLER_VERSION,
        "slide": file_identity(slide, root),
        "mask": file_identity(mask, root),
        "spec": asdict(spec),
        "verified_patches": verify,
    }


def load_or_sample_patches(
    slide: str | Path,
    mask: str | Path | None,
    root: str | Path,
    cache_dir: str | Path,
    spec: PatchSpec,
    verify: int = 16,
) -> pd.DataFrame:
    """The cached patch index of ``slide`` (see module docstring), sampled and written once."""
    made_by = index_made_by(slide, mask, root, spec, verify)
    store = Store.keyed(cache_dir, Path(slide).stem, "patch_index", made_by, INDEX_FORMAT)

    def sample(tmp: Path) -> None:
        sample_patches(slide, mask, spec, verify).to_csv(tmp / "patches.csv", index=False)

    store.ensure(sample, f"sampling the patches of {Path(slide).name}")
    return pd.read_csv(store.folder / "patches.csv")


# ---- reading patches on the fly ----------------------------------------------------------------------------
class SlideHandles:
    """This process's open slides: one openslide handle per slide, opened on first use.

    A DataLoader worker (forked or spawned) starts with none and opens each slide it reads once; a handle
    is never shared across processes (openslide handles must not cross ``fork``). At most ``max_open``
    stay open (least recently used closed first).
    """

    def __init__(self, max_open: int = 64, opener: Callable[[str], Any] | None = None) -> None:
        self.max_open = max_open
        self._opener = opener
        self._pid: int | None = None
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _open(self, path: str) -> Any:
        return (self._opener or open_slide)(path)

    def get(self, path: str) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._handles = OrderedDict()  # inherited from a parent process: never reuse
                self._pid = os.getpid()
            handle = self._handles.get(path)
            if handle is None:
                handle = self._open(path)
                self._handles[path] = handle
                while len(self._handles) > self.max_open:
                    _, old = self._handles.popitem(last=False)
                    old.close()
            else:
                self._handles.move_to_end(path)
            return handle

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for handle in self._handles.values():
                    handle.close()
            self._handles = OrderedDict()

    def __len__(self) -> int:
        return len(self._handles) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict[str, Any]:  # spawned workers get a fresh, empty set of handles
        return {"max_open": self.max_open, "_opener": self._opener}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"], state["_opener"])


class SlidePatchSource:
    """An image source (``source[i]`` → ``(size, size, 3)`` uint8) over rows ``(slide path, x, y)``.

    Used by :class:`~histo_lightning.data.torch_datasets.ImageTableDataset` exactly like an image cache; patches
    are read from the slides when asked for, through :class:`SlideHandles`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        xs: Sequence[int],
        ys: Sequence[int],
        level: int,
        size: int,
        handles: SlideHandles | None = None,
    ) -> None:
        if not len(paths) == len(xs) == len(ys):
            raise ValueError("paths, xs and ys must have the same length")
        names, codes = np.unique(np.asarray(paths, dtype=str), return_inverse=True)
        self.slide_paths = [str(n) for n in names]
        self.slide_of = codes.astype(np.int32)
        self.xs = np.asarray(xs, dtype=np.int64)
        self.ys = np.asarray(ys, dtype=np.int64)
        self.level = int(level)
        self.size = int(size)
        self.handles = handles if handles is not None else SlideHandles()
        self.bad: list = []  # unreadable slides are dropped before this source is built

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.slide_paths[self.slide_of[i]]
        slide = self.handles.get(path)
        x, y = int(self.xs[i]), int(self.ys[i])
        try:
            return read_region_rgb(slide, x, y, self.level, self.size, self.size)
        except openslide.OpenSlideError as err:
            raise CorruptImageError(
                f"cannot read the patch at ({x}, {y}) level {self.level} of slide {path}: {err}"
            ) from err


__all__ = [
    "LABEL_RULES",
    "PatchSpec",
    "SlideHandles",
    "SlideInfo",
    "SlidePatchSource",
    "TiledMask",
    "grid_candidates",
    "label_patches",
    "load_or_sample_patches",
    "open_slide",
    "read_region_rgb",
    "sample_patches",
    "select_patches",
    "slide_info",
    "tissue_mask",
]
