"""Colon cancer (CRCHistoPhenotypes, Sirinukunwattana et al. 2016) as bags of nucleus patches.

Layout (``dataset.root`` is the folder that holds ``CRCHistoPhenotypes_2016_04_28/``, or that folder)::

    CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN.bmp                500×500 24-bit BMP, 0.55 µm/px
    CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN_epithelial.mat      variable `detection`
    CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN_fibroblast.mat
    CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN_inflammatory.mat
    CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN_others.mat
    CRCHistoPhenotypes_2016_04_28/Detection/imgN/...                          (not used)

Each ``.mat`` (MATLAB 5) holds ``detection``: a K×2 float64 array of sub-pixel nucleus centres, column 0 =
x (image column), column 1 = y (image row), MATLAB 1-based. A class without nuclei in an image is an EMPTY
0×2 uint8 array; any array with no elements is read as no nucleus. Images are ordered by their number N
(img1, img2, …, img100), not as strings.

MIL setup of Ilse et al. (2018) §5.3 and Li et al. §4.0.1: one bag per image; one 27×27 instance centred
on every classified nucleus of all four classes; the bag is positive iff it holds an epithelial nucleus;
the instance labels (epithelial = key instance) are kept for evaluation.

Decisions:

* Centre pixel of a nucleus: column ``floor(x - 1 + 0.5)``, row ``floor(y - 1 + 0.5)`` (1-based sub-pixel
  → 0-based pixel, rounded half up). A centre more than one pixel outside the image is a layout error
  (wrong file or swapped columns); one within a pixel of the border is clamped into the image.
* Border handling: a patch that reaches over the image border is filled by mirroring the image
  (``border="reflect"``, OpenCV ``BORDER_REFLECT_101``: ``…cba|abcd…``), so a border nucleus still sits
  in tissue-like texture and the network sees no artificial frame whose position could leak. Options:
  ``replicate`` (edge pixels repeated) and ``constant`` (white, 255: glass).
* An image without any classified nucleus would be an empty bag, which attention pooling cannot score
  (a softmax over no instance) and the paper never has (22,444 nuclei over 100 images, every image has
  some): by default it is an error naming the image (``empty_bags="error"``); ``empty_bags="skip"``
  leaves such images out and lists them in ``skipped``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import scipy.io
from PIL import Image

from histo_lightning.data.bag_datamodule import ImageBagDataModule
from histo_lightning.errors import ConfigError, CorruptImageError, DatasetLayoutError
from histo_lightning.stores.image_store import BadImage, files_key, read_rgb
from histo_lightning.stores.instance_store import Bag, InstanceStore, relative_origin
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

RELEASE_DIR = "CRCHistoPhenotypes_2016_04_28"
CLASSIFICATION_DIR = "Classification"
NUCLEUS_CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")
KEY_CLASS = "epithelial"
MAT_VARIABLE = "detection"
PATCH_SIZE = 27
BORDER_MODES = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}
EMPTY_BAG_POLICIES = ("error", "skip")
LAYOUT = (
    f"<root>/{RELEASE_DIR}/{CLASSIFICATION_DIR}/imgN/imgN.bmp with imgN_{{"
    + ",".join(NUCLEUS_CLASSES)
    + "}.mat (variable 'detection', K×2 x,y 1-based; an empty class is a 0×2 array)"
)
SYNTHETIC_HINT = "for a synthetic stand-in in the same layout use dataset=colon_synthetic"
_IMAGE_DIR = re.compile(r"^img(\d+)$")


def read_detection_mat(path: str | Path) -> np.ndarray:
    """``(K, 2)`` float64 ``(x, y)`` 1-based nucleus centres of one ``.mat``; ``(0, 2)`` for an empty class.

    Raises:
        DatasetLayoutError: the file is missing, unreadable, has no ``detection`` or not two columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"missing {path}; expected {LAYOUT}")
    try:
        content = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise DatasetLayoutError(f"{path}: MATLAB v7.3 files are not supported ({err})") from None
    except Exception as err:  # corrupt or not a MATLAB file
        raise DatasetLayoutError(f"{path} is not a readable MATLAB file: {err}") from None
    if MAT_VARIABLE not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DatasetLayoutError(f"{path} has no variable '{MAT_VARIABLE}' (found {found})")
    points = np.asarray(content[MAT_VARIABLE])
    if points.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise DatasetLayoutError(
            f"{path}: '{MAT_VARIABLE}' has shape {points.shape}; expected K×2 (x, y) centres"
        )
    return points.astype(np.float64)


def find_classification_dir(root: str | Path) -> Path:
    """``<release>/Classification`` under ``root`` (the folder holding the release, or the release)."""
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected {LAYOUT}; {SYNTHETIC_HINT}"
        )
    for candidate in (root / RELEASE_DIR / CLASSIFICATION_DIR, root / CLASSIFICATION_DIR):
        if candidate.is_dir():
            return candidate
    raise DatasetLayoutError(
        f"dataset root {root} (dataset.root) holds neither {RELEASE_DIR}/{CLASSIFICATION_DIR}/ nor "
        f"{CLASSIFICATION_DIR}/; expected {LAYOUT}; {SYNTHETIC_HINT}"
    )


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:
        raise CorruptImageError(f"cannot read image file {path}: {err}") from None
    return int(height), int(width)


def centre_pixels(points: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    """``(K, 2)`` int ``(col, row)`` 0-based centre pixels of 1-based sub-pixel ``(x, y)`` points.

    Raises:
        DatasetLayoutError: a point lies more than one pixel outside the ``height × width`` image.
    """
    x, y = points[:, 0] - 1.0, points[:, 1] - 1.0
    outside = (x < -1.5) | (y < -1.5) | (x > width + 0.5) | (y > height + 0.5)
    if outside.any():
        i = int(np.argmax(outside))
        raise DatasetLayoutError(
            f"{source}: nucleus ({points[i, 0]:g}, {points[i, 1]:g}) lies outside the {width}×{height} "
            f"image; expected 1-based (x = column, y = row) centres"
        )
    cols = np.clip(np.floor(x + 0.5), 0, width - 1).astype(np.int32)
    rows = np.clip(np.floor(y + 0.5), 0, height - 1).astype(np.int32)
    return np.stack([cols, rows], axis=1)


@dataclass
class ColonScan:
    """What the reader found: one row per image and one per classified nucleus.

    ``images``: ``number, name, path, origin, height, width, label, n_<class>..., n_nuclei`` in number order;
    ``nuclei``: ``image`` (row of ``images``), ``x, y`` (0-based centre pixel), ``cls``, ``key``;
    ``skipped``: images left out (``empty_bags="skip"``).
    """

    root: Path
    release: Path
    images: pd.DataFrame
    nuclei: pd.DataFrame
    annotation_files: list[Path]
    skipped: list[BadImage] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """Counts for ``run_info.json`` and the log."""
        per_class = {c: int((self.nuclei["cls"] == c).sum()) for c in NUCLEUS_CLASSES}
        sizes = self.images["n_nuclei"]
        return {
            "images": len(self.images),
            "bags": len(self.images),
            "positive_bags": int(self.images["label"].sum()),
            "negative_bags": int((self.images["label"] == 0).sum()),
            "instances": len(self.nuclei),
            "key_instances": per_class[KEY_CLASS],
            "nuclei_per_class": per_class,
            "bag_size": {
                "min": int(sizes.min()),
                "mean": round(float(sizes.mean()), 2),
                "max": int(sizes.max()),
            },
            "skipped_images": [b.path for b in self.skipped],
        }


def scan_colon(root: str | Path, empty_bags: str = "error") -> ColonScan:
    """Every image of ``Classification/`` with its classified nuclei (see the module docstring).

    Raises:
        DatasetLayoutError: wrong layout, a missing image or ``.mat``, an unreadable ``.mat``, a nucleus
            outside its image, or (``empty_bags="error"``) an image without any classified nucleus.
        ConfigError: an unknown ``empty_bags`` policy.
    """
    if empty_bags not in EMPTY_BAG_POLICIES:
        raise ConfigError(f"dataset.empty_bags={empty_bags!r} is not one of {EMPTY_BAG_POLICIES}")
    classification = find_classification_dir(root)
    numbered = []
    for entry in classification.iterdir():
        match = _IMAGE_DIR.match(entry.name)
        if entry.is_dir() and match:
            numbered.append((int(match.group(1)), entry))
    if not numbered:
        raise DatasetLayoutError(f"no imgN/ folders in {classification}; expected {LAYOUT}")
    numbered.sort(key=lambda item: item[0])  # by number: img2 before img10
    image_rows, nucleus_rows, annotations, skipped = [], [], [], []
    for number, folder in numbered:
        name = folder.name
        bmp = next(
            (p for p in folder.iterdir() if p.stem == name and p.suffix.lower() == ".bmp"), None
        )
        if bmp is None:
            raise DatasetLayoutError(f"missing {folder / (name + '.bmp')}; expected {LAYOUT}")
        height, width = _image_size(bmp)
        counts, found = {}, []
        for cls in NUCLEUS_CLASSES:
            mat = folder / f"{name}_{cls}.mat"
            points = read_detection_mat(mat)
            annotations.append(mat)
            centres = centre_pixels(points, height, width, str(mat))
            counts[f"n_{cls}"] = len(centres)
            found.extend((c, r, cls) for c, r in centres)
        if not found:
            message = (
                f"{folder}: no classified nucleus in any of its four .mat files, so its bag would be "
                "empty"
            )
            if empty_bags == "error":
                raise DatasetLayoutError(f"{message}; set dataset.empty_bags=skip to leave it out")
            log.warning(f"{message}; skipped (dataset.empty_bags=skip)")
            skipped.append(BadImage(str(bmp), "no classified nucleus"))
            continue
        row = len(image_rows)
        nucleus_rows.extend(
            {"image": row, "x": int(c), "y": int(r), "cls": cls, "key": cls == KEY_CLASS}
            for c, r, cls in found
        )
        image_rows.append(
            {
                "number": number,
                "name": name,
                "path": str(bmp),
                "origin": relative_origin(bmp, classification.parent),
                "height": height,
                "width": width,
                "label": int(counts[f"n_{KEY_CLASS}"] > 0),
                **counts,
                "n_nuclei": len(found),
            }
        )
    if not image_rows:
        raise DatasetLayoutError(f"every image under {classification} has an empty bag")
    scan = ColonScan(
        root=Path(root),
        release=classification.parent,
        images=pd.DataFrame(image_rows),
        nuclei=pd.DataFrame(nucleus_rows),
        annotation_files=annotations,
        skipped=skipped,
    )
    log.info(f"Colon (CRCHistoPhenotypes) at {scan.release}: {scan.describe()}")
    return scan


def cut_patches(image: np.ndarray, centres: np.ndarray, patch_size: int, border: str) -> np.ndarray:
    """``(K, P, P, C)`` patches of ``image`` centred on ``(col, row)`` pixels, borders filled by ``border``.

    The patch of centre ``(c, r)`` spans rows ``r - P//2 … r - P//2 + P - 1`` (and the same for columns).
    """
    if border not in BORDER_MODES:
        raise ConfigError(f"dataset.border={border!r} is not one of {sorted(BORDER_MODES)}")
    half = patch_size // 2
    padded = cv2.copyMakeBorder(
        np.ascontiguousarray(image),
        half,
        patch_size - 1 - half,
        half,
        patch_size - 1 - half,
        BORDER_MODES[border],
        value=(255, 255, 255),
    )
    if padded.ndim == 2:
        padded = padded[..., None]
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (patch_size, patch_size), axis=(0, 1)
    )
    cols, rows = centres[:, 0], centres[:, 1]
    # windows[r, c] is the patch whose top-left is padded (r, c) = image (r - half, c - half)
    return np.ascontiguousarray(windows[rows, cols].transpose(0, 2, 3, 1))


def colon_bags(
    scan: ColonScan, patch_size: int = PATCH_SIZE, border: str = "reflect"
) -> Iterator[Bag]:
    """One :class:`Bag` per image of ``scan``: a patch centred on each classified nucleus."""
    for row, image in scan.images.iterrows():
        nuclei = scan.nuclei[scan.nuclei["image"] == row]
        centres = nuclei[["x", "y"]].to_numpy(dtype=np.int32)
        pixels = read_rgb(image["path"])
        if pixels.shape[:2] != (image["height"], image["width"]):
            raise CorruptImageError(
                f"{image['path']}: decoded size {pixels.shape[:2]} differs from its header"
            )
        yield Bag(
            name=image["name"],
            label=int(image["label"]),
            instances=cut_patches(pixels, centres, patch_size, border),
            coords=centres,
            instance_labels=nuclei["key"].to_numpy(dtype=np.int8),
            origin=image["origin"],
        )


def colon_made_by(scan: ColonScan, patch_size: int, border: str) -> dict[str, Any]:
    """Everything that determines the instance store of ``scan`` (its cache key, ``cache.json``)."""
    files = [Path(p) for p in scan.images["path"]] + list(scan.annotation_files)
    return {
        "dataset": "colon",
        "reader": f"{__name__}.colon_bags",
        "files": files_key(files, scan.release)[:24],
        "n_images": len(scan.images),
        "patch_size": int(patch_size),
        "border": border,
    }


def build_colon_store(
    scan: ColonScan,
    cache_dir: str | Path,
    patch_size: int = PATCH_SIZE,
    border: str = "reflect",
    name: str = "colon",
) -> InstanceStore:
    """The instance store of ``scan`` under ``cache_dir`` (built once; see :mod:`instance_store`)."""
    if patch_size < 1:
        raise ConfigError(f"dataset.patch_size={patch_size} must be positive")
    if border not in BORDER_MODES:
        raise ConfigError(f"dataset.border={border!r} is not one of {sorted(BORDER_MODES)}")
    return InstanceStore.build_or_open(
        cache_dir,
        name,
        colon_made_by(scan, patch_size, border),
        colon_bags(scan, patch_size, border),
        (patch_size, patch_size, 3),
        total=len(scan.images),
        extra_manifest={"patch_size": patch_size, "reader_counts": scan.describe()},
    )


class ColonDataModule(ImageBagDataModule):
    """Colon cancer bags for one fold (Li et al. §4.0.1: 10-fold CV over the 100 images, five repetitions).

    Args:
        fold, split, repeat, augment, batch sizes, ...: see
            :class:`~histo_lightning.data.bag_datamodule.BagDataModule`.
        root: the folder holding ``CRCHistoPhenotypes_2016_04_28/`` (or that folder); unused with
            ``synthetic`` (``dataset=colon_synthetic``: generated once under ``synthetic_dir``).
        patch_size: instance side in pixels (27, Ilse et al. / Li et al.).
        border: how patches over the image border are filled (``reflect``, ``replicate``, ``constant``).
        empty_bags: an image without any classified nucleus: ``error`` (default) or ``skip``.
    """

    dataset_name = "colon"
    display_name = "Colon cancer (CRCHistoPhenotypes)"
    root_hint = f"the folder holding {RELEASE_DIR}/ (or that folder itself)"
    synthetic_module = "histo_lightning.data.synthetic.colon"
    instance_noun = "nuclei"
    heatmap_style = "markers"

    def __init__(
        self,
        fold: int,
        split: Any,
        patch_size: int = PATCH_SIZE,
        border: str = "reflect",
        empty_bags: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(fold, split, **kwargs)
        if border not in BORDER_MODES:
            raise ConfigError(f"dataset.border={border!r} is not one of {sorted(BORDER_MODES)}")
        if empty_bags not in EMPTY_BAG_POLICIES:
            raise ConfigError(
                f"dataset.empty_bags={empty_bags!r} is not one of {EMPTY_BAG_POLICIES}"
            )
        self.patch = int(patch_size)
        self.border = border
        self.empty_bags = empty_bags
        self.scan: ColonScan | None = None

    def read_bags(self) -> InstanceStore:
        scan = scan_colon(self.root, self.empty_bags)
        known = {b.path for b in self.skipped}
        self.skipped += [b for b in scan.skipped if b.path not in known]
        self.scan = scan
        return build_colon_store(
            scan, self.cache_dir / "instances", self.patch, self.border, name=self.name
        )

    def sample_settings(self) -> dict[str, Any]:
        return {
            **super().sample_settings(),
            "patch_size": self.patch,
            "border": self.border,
            "empty_bags": self.empty_bags,
        }

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.scan is not None:
            info["reader"] = self.scan.describe()
        return info


__all__ = [
    "CLASSIFICATION_DIR",
    "KEY_CLASS",
    "LAYOUT",
    "NUCLEUS_CLASSES",
    "PATCH_SIZE",
    "RELEASE_DIR",
    "ColonDataModule",
    "ColonScan",
    "build_colon_store",
    "centre_pixels",
    "colon_bags",
    "colon_made_by",
    "cut_patches",
    "find_classification_dir",
    "read_detection_mat",
    "scan_colon",
]
