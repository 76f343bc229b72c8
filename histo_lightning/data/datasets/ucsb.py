"""UCSB breast cancer (Bio-Segmentation benchmark, Gelasca et al. 2008) as bags of grid patches.

Layout (``dataset.root`` is the folder that holds ``Breast Cancer Cells/``, or the folder of TIFFs)::

    Breast Cancer Cells/ytma{NN}_{MMDDYY}_{benign|malignant}{k}_ccd.tif   (or .TIF: the case varies)

58 RGB TIFFs of 896×768 (PackBits in common copies), 32 benign and 26 malignant; the label is only in the
file name. Ground-truth cell masks (a sibling ``Breast Cancer Cells GroundTruth/``) are not used. Other
files (thumbnails, ``Thumbs.db``) are ignored; a TIFF whose name does not follow the pattern is an error
(its label would be unknown).

MIL setup of Li et al. §4.0.1: one bag per image of 32×32 non-overlapping patches (28 × 24 = 672 for
896×768; other sizes get ``floor(W/32) × floor(H/32)``, the remainder at the right/bottom is dropped),
"converted from the RGB color space to the HSV space, and an Otsu algorithm is used to select the optimal
threshold values in each channel to filter the patches", then "histogram equalization is performed on each
patch". How the three thresholds combine is not said; this reader (:func:`hsv_otsu_foreground`):

1. thresholds each chosen channel of the image with Otsu (OpenCV HSV: H 0–179, S and V 0–255; the hue is
   rotated by 90 first so the pink/purple H&E hues, which straddle red's wrap-around at 0/180, form one
   interval);
2. orients each threshold by the data: the side whose pixels are darker on average (lower V) is tissue
   (for V that is the lower side; for S normally the higher side);
3. calls a pixel tissue by a vote over the channels, ``combine="majority"`` by default (tissue in at least
   two of H, S, V: white glass has low S and high V, so two channels reject it whatever its hue, while
   hue alone, which mostly separates haematoxylin from eosin, cannot reject tissue); ``all`` and ``any``
   are options;
4. keeps a patch whose foreground fraction is at least ``min_foreground`` (default 0.1, about one
   nucleus' worth of a 32×32 patch).

Otsu assumes two modes. Where an image holds glass (core edge, lumens, fat), the split is glass vs.
tissue and the filter removes the glass; where it holds little, the split falls between nucleus-dense
and pale tissue, so only nucleus-rich pixels count as foreground. A patch threshold of 0.1 handles both:
on the synthetic twin (896×768) it drops 127 of 129 glass patches of a glass-rich image and keeps every
tumour patch, while keeping roughly 20–35 % of the patches of glass-poor benign images (the
nucleus-free stroma goes: the paper's "noisy patches"). A threshold of 0.5 would keep only 3–8 % there.
Bag sizes after the filter therefore differ between images (malignant images are more cellular);
``describe``/``filter_summary`` report them.

``background_filter="none"`` keeps every patch. A filter that leaves an image with no patch is an error
naming the file (a bag must hold an instance). Equalisation (``equalize=True``) is applied per patch and
per RGB channel (``cv2.equalizeHist``), after the filter, once, when the instance store is built; the
paper's random flips and rotations are training-time augmentations (:mod:`histo_lightning.data.bags`).

Real UCSB has no instance labels (-1). The synthetic twin writes tumour masks in
``SYNTHETIC_TRUTH/<stem>.png``; given ``truth_dir``, a patch is a key instance when at least
``key_fraction`` of it is tumour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from histo_lightning.data.bag_datamodule import ImageBagDataModule
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.stores.image_store import files_key, read_rgb
from histo_lightning.stores.instance_store import UNKNOWN, Bag, InstanceStore, relative_origin
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

IMAGE_DIR = "Breast Cancer Cells"
PATCH_SIZE = 32
IMAGE_SIZE = (768, 896)  # (H, W) of the distributed images
N_IMAGES, N_BENIGN, N_MALIGNANT = 58, 32, 26
CLASSES = ("benign", "malignant")
FILTERS = ("hsv_otsu", "none")
COMBINE = ("majority", "all", "any")
CHANNELS = "hsv"
TIFF_SUFFIXES = (".tif", ".tiff")
NAME_PATTERN = re.compile(
    r"^ytma(?P<tma>\d+)_(?P<date>\d{6})_(?P<cls>benign|malignant)(?P<k>\d+)_ccd\.tiff?$",
    re.IGNORECASE,
)
LAYOUT = (
    f"<root>/{IMAGE_DIR}/ytma{{NN}}_{{MMDDYY}}_{{benign|malignant}}{{k}}_ccd.tif (or .TIF), "
    "or <root> = the folder of those TIFFs"
)
SYNTHETIC_HINT = "for a synthetic stand-in in the same layout use dataset=ucsb_synthetic"
#: where the synthetic twin keeps its tumour masks (not part of the real dataset)
SYNTHETIC_TRUTH_DIR = "SYNTHETIC_TRUTH"


@dataclass(frozen=True)
class UcsbName:
    """The fields of a UCSB file name: TMA number, date (MMDDYY), class, index within the class."""

    tma: int
    date: str
    cls: str
    k: int

    @property
    def label(self) -> int:
        return int(self.cls == "malignant")


def parse_ucsb_name(name: str) -> UcsbName | None:
    """The fields of ``ytma49_111003_malignant1_ccd.TIF``-like names, or None for other names."""
    match = NAME_PATTERN.match(name)
    if match is None:
        return None
    return UcsbName(
        int(match.group("tma")),
        match.group("date"),
        match.group("cls").lower(),
        int(match.group("k")),
    )


def find_image_dir(root: str | Path) -> Path:
    """``<root>/Breast Cancer Cells`` or ``root`` itself when it holds the TIFFs."""
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected {LAYOUT}; {SYNTHETIC_HINT}"
        )
    if (root / IMAGE_DIR).is_dir():
        return root / IMAGE_DIR
    if any(parse_ucsb_name(p.name) for p in root.iterdir() if p.is_file()):
        return root
    raise DatasetLayoutError(
        f"dataset root {root} (dataset.root) holds neither '{IMAGE_DIR}/' nor ytma*_ccd.tif images; "
        f"expected {LAYOUT}; {SYNTHETIC_HINT}"
    )


@dataclass
class UcsbScan:
    """The images found: ``path, origin, name, tma, date, cls, k, label`` in (tma, date, class, k) order."""

    root: Path
    folder: Path
    images: pd.DataFrame

    def describe(self) -> dict[str, Any]:
        return {
            "images": len(self.images),
            "bags": len(self.images),
            "positive_bags": int(self.images["label"].sum()),
            "negative_bags": int((self.images["label"] == 0).sum()),
            "tmas": sorted(int(t) for t in self.images["tma"].unique()),
        }


def scan_ucsb(root: str | Path) -> UcsbScan:
    """The UCSB images under ``root`` with labels from their names (see the module docstring)."""
    folder = find_image_dir(root)
    rows = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in TIFF_SUFFIXES:
            continue
        parsed = parse_ucsb_name(path.name)
        if parsed is None:
            raise DatasetLayoutError(
                f"{path}: cannot read the label from this name; expected "
                "ytma{NN}_{MMDDYY}_{benign|malignant}{k}_ccd.tif"
            )
        rows.append(
            {
                "path": str(path),
                "origin": relative_origin(path, folder.parent),
                "name": path.stem,
                "tma": parsed.tma,
                "date": parsed.date,
                "cls": parsed.cls,
                "k": parsed.k,
                "label": parsed.label,
            }
        )
    if not rows:
        raise DatasetLayoutError(f"no TIFF images in {folder}; expected {LAYOUT}; {SYNTHETIC_HINT}")
    images = pd.DataFrame(rows).sort_values(["tma", "date", "cls", "k"], kind="stable")
    duplicates = images[images.duplicated(["tma", "date", "cls", "k"], keep=False)]
    if len(duplicates):
        raise DatasetLayoutError(
            f"{folder}: {', '.join(Path(p).name for p in duplicates['path'])} name the same image"
        )
    scan = UcsbScan(Path(root), folder, images.reset_index(drop=True))
    counts = scan.describe()
    log.info(f"UCSB breast at {folder}: {counts}")
    if (counts["images"], counts["negative_bags"]) != (N_IMAGES, N_BENIGN):
        log.info(
            f"UCSB: the distributed set has {N_IMAGES} images ({N_BENIGN} benign, {N_MALIGNANT} "
            f"malignant); found {counts['images']} ({counts['negative_bags']} benign)"
        )
    return scan


# --------------------------------------------------------------------------------------------
# Background filter (§4.0.1) and equalisation
# --------------------------------------------------------------------------------------------


def _hsv_channels(image: np.ndarray) -> dict[str, np.ndarray]:
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    hue = ((hsv[..., 0].astype(np.int16) + 90) % 180).astype(
        np.uint8
    )  # H&E hues away from the wrap
    return {"h": hue, "s": hsv[..., 1], "v": hsv[..., 2]}


def hsv_otsu_foreground(
    image: np.ndarray, channels: str = CHANNELS, combine: str = "majority"
) -> np.ndarray:
    """``(H, W)`` bool tissue mask of an RGB image by per-channel Otsu thresholds in HSV (§4.0.1).

    See the module docstring for how each threshold is oriented and how channels are combined. A channel
    that Otsu cannot split (constant) abstains; an image where every channel is constant (blank) has no
    foreground.
    """
    if combine not in COMBINE:
        raise ConfigError(f"dataset.filter_combine={combine!r} is not one of {COMBINE}")
    if not channels or set(channels) - set(CHANNELS):
        raise ConfigError(f"dataset.filter_channels={channels!r} must be letters of {CHANNELS!r}")
    planes = _hsv_channels(image)
    value = planes["v"].astype(np.float32)
    votes = []
    for name in channels:
        plane = planes[name]
        threshold, _ = cv2.threshold(plane, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        above = plane > threshold
        n_above = int(above.sum())
        if n_above in (0, above.size):
            continue  # nothing to split: this channel abstains
        darker_above = value[above].mean() < value[~above].mean()
        votes.append(above if darker_above else ~above)
    if not votes:
        return np.zeros(image.shape[:2], dtype=bool)
    stacked = np.stack(votes)
    if combine == "all":
        return stacked.all(axis=0)
    if combine == "any":
        return stacked.any(axis=0)
    return stacked.sum(axis=0) * 2 > len(votes)


def grid_centres(height: int, width: int, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """``(rows*cols, 2)`` ``(x, y)`` centre pixels of the non-overlapping grid, row by row."""
    rows, cols = height // patch_size, width // patch_size
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    half = patch_size // 2
    return np.stack([xs.ravel() * patch_size + half, ys.ravel() * patch_size + half], 1).astype(
        np.int32
    )


def grid_patches(image: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """``(rows*cols, P, P, C)`` non-overlapping patches, row by row (same order as :func:`grid_centres`)."""
    height, width = image.shape[:2]
    rows, cols = height // patch_size, width // patch_size
    if rows == 0 or cols == 0:
        return np.zeros((0, patch_size, patch_size, image.shape[2]), image.dtype)
    cropped = image[: rows * patch_size, : cols * patch_size]
    blocks = cropped.reshape(rows, patch_size, cols, patch_size, -1).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(blocks.reshape(rows * cols, patch_size, patch_size, -1))


def patch_fractions(mask: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Per grid patch, the fraction of ``True`` pixels of a ``(H, W)`` mask."""
    return grid_patches(mask[..., None].astype(np.float32), patch_size).mean(axis=(1, 2, 3))


def equalize_patches(patches: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each patch, per RGB channel (§4.0.1 "color normalization")."""
    out = np.empty_like(patches)
    for i, patch in enumerate(patches):
        for c in range(patch.shape[2]):
            out[i, ..., c] = cv2.equalizeHist(np.ascontiguousarray(patch[..., c]))
    return out


@dataclass(frozen=True)
class UcsbPatching:
    """The instance settings (all of them enter the store key)."""

    patch_size: int = PATCH_SIZE
    background_filter: str = "hsv_otsu"
    filter_channels: str = CHANNELS
    filter_combine: str = "majority"
    min_foreground: float = 0.1
    equalize: bool = True
    key_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ConfigError(f"dataset.patch_size={self.patch_size} must be positive")
        if self.background_filter not in FILTERS:
            raise ConfigError(
                f"dataset.background_filter={self.background_filter!r} is not one of {FILTERS}"
            )
        if self.filter_combine not in COMBINE:
            raise ConfigError(
                f"dataset.filter_combine={self.filter_combine!r} is not one of {COMBINE}"
            )
        if not self.filter_channels or set(self.filter_channels) - set(CHANNELS):
            raise ConfigError(
                f"dataset.filter_channels={self.filter_channels!r} must be letters of {CHANNELS!r}"
            )
        if not 0.0 <= self.min_foreground <= 1.0 or not 0.0 < self.key_fraction <= 1.0:
            raise ConfigError("dataset.min_foreground must be in [0, 1] and key_fraction in (0, 1]")


def image_bag(
    image: np.ndarray, patching: UcsbPatching, truth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patches, centres, instance_labels)`` of one image after the filter (and equalisation)."""
    size = patching.patch_size
    patches = grid_patches(image, size)
    centres = grid_centres(*image.shape[:2], size)
    if patching.background_filter == "hsv_otsu":
        tissue = hsv_otsu_foreground(image, patching.filter_channels, patching.filter_combine)
        keep = patch_fractions(tissue, size) >= patching.min_foreground
    else:
        keep = np.ones(len(patches), dtype=bool)
    if truth is None:
        labels = np.full(len(patches), UNKNOWN, dtype=np.int8)
    else:
        labels = (patch_fractions(truth > 0, size) >= patching.key_fraction).astype(np.int8)
    patches, centres, labels = patches[keep], centres[keep], labels[keep]
    if patching.equalize:
        patches = equalize_patches(patches)
    return patches, centres, labels


def _truth_path(truth_dir: Path | None, name: str) -> Path | None:
    return None if truth_dir is None else Path(truth_dir) / f"{name}.png"


def ucsb_bags(
    scan: UcsbScan, patching: UcsbPatching, truth_dir: Path | None = None
) -> Iterator[Bag]:
    """One :class:`Bag` per image of ``scan``."""
    for _, image in scan.images.iterrows():
        pixels = read_rgb(image["path"])
        truth = None
        truth_path = _truth_path(truth_dir, image["name"])
        if truth_path is not None:
            truth = cv2.imread(str(truth_path), cv2.IMREAD_GRAYSCALE)
            if truth is None or truth.shape != pixels.shape[:2]:
                raise DatasetLayoutError(f"{truth_path}: missing or not a mask of the image's size")
        patches, centres, labels = image_bag(pixels, patching, truth)
        if len(patches) == 0:
            raise DatasetLayoutError(
                f"{image['path']}: the background filter ({patching.background_filter}, "
                f"min_foreground={patching.min_foreground}) left no {patching.patch_size}px patch of "
                f"this {pixels.shape[1]}×{pixels.shape[0]} image; use dataset.background_filter=none "
                "or check the image"
            )
        yield Bag(image["name"], int(image["label"]), patches, centres, labels, image["origin"])


def ucsb_made_by(scan: UcsbScan, patching: UcsbPatching, truth_dir: Path | None) -> dict[str, Any]:
    """Everything that determines the instance store (its key and ``cache.json``)."""
    files = [Path(p) for p in scan.images["path"]]
    if truth_dir is not None:
        files += [p for p in (_truth_path(truth_dir, n) for n in scan.images["name"]) if p]
    return {
        "dataset": "ucsb",
        "reader": f"{__name__}.ucsb_bags",
        "files": files_key(files, scan.folder.parent)[:24],
        "n_images": len(scan.images),
        **{k: getattr(patching, k) for k in patching.__dataclass_fields__},
        "instance_labels_from": "truth masks" if truth_dir is not None else None,
    }


def build_ucsb_store(
    scan: UcsbScan,
    cache_dir: str | Path,
    patching: UcsbPatching | None = None,
    truth_dir: str | Path | None = None,
    name: str = "ucsb",
) -> InstanceStore:
    """The instance store of ``scan`` under ``cache_dir`` (built once; see :mod:`instance_store`)."""
    patching = patching or UcsbPatching()
    truth = Path(truth_dir) if truth_dir is not None else None
    size = patching.patch_size
    store = InstanceStore.build_or_open(
        cache_dir,
        name,
        ucsb_made_by(scan, patching, truth),
        ucsb_bags(scan, patching, truth),
        (size, size, 3),
        total=len(scan.images),
        extra_manifest={"patch_size": size, "reader_counts": scan.describe()},
    )
    log.info(f"UCSB instances ({patching}): {filter_summary(store)}")
    return store


def filter_summary(store: InstanceStore) -> dict[str, Any]:
    """How many grid patches the background filter kept, per bag label (for the log and run_info)."""
    out = {}
    for label, cls in enumerate(CLASSES):
        bags = np.flatnonzero(store.labels == label)
        sizes = store.bag_sizes[bags]
        out[cls] = {
            "bags": len(bags),
            "kept_mean": round(float(sizes.mean()), 1) if len(bags) else 0.0,
            "kept_min": int(sizes.min()) if len(bags) else 0,
            "kept_max": int(sizes.max()) if len(bags) else 0,
        }
    return out


class UcsbDataModule(ImageBagDataModule):
    """UCSB breast bags for one fold (Li et al. §4.0.1: 4-fold CV over the 58 images, five repetitions).

    Args:
        fold, split, repeat, augment, batch sizes, ...: see
            :class:`~histo_lightning.data.bag_datamodule.BagDataModule`.
        root: the folder holding ``Breast Cancer Cells/`` (or the folder of TIFFs); unused with
            ``synthetic`` (``dataset=ucsb_synthetic``, whose tumour masks give instance labels).
        patching: :class:`UcsbPatching` fields (patch size, background filter, equalisation).
    """

    dataset_name = "ucsb"
    display_name = "UCSB breast cancer"
    root_hint = f"the folder holding '{IMAGE_DIR}/' (or the folder of TIFFs itself)"
    synthetic_module = "histo_lightning.data.synthetic.ucsb"
    instance_noun = "patches"
    heatmap_style = "grid"

    def __init__(self, fold: int, split: Any, patching: Any = None, **kwargs: Any) -> None:
        super().__init__(fold, split, **kwargs)
        try:
            self.patching = UcsbPatching(**dict(patching or {}))
        except TypeError as err:
            raise ConfigError(f"dataset.patching: {err}") from None
        self.scan: UcsbScan | None = None

    def read_bags(self) -> InstanceStore:
        scan = scan_ucsb(self.root)
        self.scan = scan
        truth = self.root / SYNTHETIC_TRUTH_DIR if self.is_synthetic else None
        return build_ucsb_store(
            scan, self.cache_dir / "instances", self.patching, truth, name=self.name
        )

    def sample_settings(self) -> dict[str, Any]:
        return {**super().sample_settings(), "patching": self.patching.__dict__}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.scan is not None and isinstance(self.bags, InstanceStore):
            info["reader"] = self.scan.describe()
            info["background_filter"] = filter_summary(self.bags)
        return info


__all__ = [
    "IMAGE_DIR",
    "LAYOUT",
    "NAME_PATTERN",
    "PATCH_SIZE",
    "SYNTHETIC_TRUTH_DIR",
    "UcsbDataModule",
    "UcsbName",
    "UcsbPatching",
    "UcsbScan",
    "build_ucsb_store",
    "equalize_patches",
    "filter_summary",
    "find_image_dir",
    "grid_centres",
    "grid_patches",
    "hsv_otsu_foreground",
    "image_bag",
    "parse_ucsb_name",
    "patch_fractions",
    "scan_ucsb",
    "ucsb_bags",
    "ucsb_made_by",
]
