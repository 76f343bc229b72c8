"""BACH (ICIAR 2018 Grand Challenge on Breast Cancer Histology), microscopy images: reader and folds.

Layout (the team's ``shared/datasets.md``)::

    ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/{n,b,is,iv}NNN.tif   400 labelled
    ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv   optional: "b001.tif,Benign", no header
    ICIAR2018_BACH_Challenge_TestDataset/Photos/test0.tif … test99.tif                    unlabelled

``dataset.root`` is the folder that holds ``ICIAR2018_BACH_Challenge/`` (and, optionally, the test
dataset beside it), or the ``ICIAR2018_BACH_Challenge`` folder itself (the test dataset is then looked
for beside it). Labels come from the class folders (0 Normal, 1 Benign, 2 InSitu, 3 Invasive, the order
of the authors' code and of ``splits/bach_rakhlin_folds10.json``); a file name whose prefix (``n``,
``b``, ``is``, ``iv``) names another class, a ground-truth CSV that disagrees with the folders (another
class, an image it does not list, a line naming no image) and a missing class folder each stop the run
with one line naming the file. Extensions ``.tif``/``.tiff`` are accepted in any case, class folders in any
case of their names. The ``WSI/`` folder is not used (the paper does not).

Every image is its own "patient" (BACH ships no patient ids): the key is the lower-case file stem
(``b001``, ``test0``), which also seeds each image's random views, so a descriptor depends on the image
and not on its position in a list. Folds (:func:`bach_split`): ``split=auto`` is our 10-fold split
stratified over images (the paper's §2.5 protocol, :func:`~histo_lightning.data.splits.kfold_split`);
``split=official`` reads the fold file named by ``official_folds`` — the authors' own ten folds
(``splits/bach_rakhlin_folds10.json``) or the patient-aware train/validation split
(``splits/bach_patient_split.json``, one fold whose 132 validation images are the test set). Every view
and augmentation of an image belongs to its image, so it stays in the image's fold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.base import BaseDataModule, digest
from histo_lightning.data.splits import SplitSpec, check_fold, load_or_create_split
from histo_lightning.data.stain import MacenkoNormalizer, build_normalizer
from histo_lightning.errors import ConfigError, CorruptImageError, DatasetLayoutError
from histo_lightning.stores.image_store import MemmapImageCache, Rescale, inspect_image
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

CLASS_NAMES = ("Normal", "Benign", "InSitu", "Invasive")
CLASS_PREFIXES = ("n", "b", "is", "iv")
TRAIN_DIR = "ICIAR2018_BACH_Challenge"
TEST_DIR = "ICIAR2018_BACH_Challenge_TestDataset"
PHOTOS_DIR = "Photos"
GROUND_TRUTH_FILE = "microscopy_ground_truth.csv"
IMAGE_SUFFIXES = (".tif", ".tiff")
LAYOUT = (
    f"<root>/{TRAIN_DIR}/{PHOTOS_DIR}/{{{','.join(CLASS_NAMES)}}}/{{{','.join(CLASS_PREFIXES)}}}NNN.tif, "
    f"optionally {PHOTOS_DIR}/{GROUND_TRUTH_FILE} and <root>/{TEST_DIR}/{PHOTOS_DIR}/testN.tif"
)
SYNTHETIC_HINT = "for a synthetic stand-in in the same layout use dataset=bach_synthetic"
MANIFEST_COLUMNS = ("index", "origin", "patient", "label", "image", "class_name", "path")
_NAME = re.compile(r"^(iv|is|n|b)(\d+)$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class BachImages:
    """What :func:`scan_bach` found.

    Attributes:
        root: the dataset root (the folder that holds ``ICIAR2018_BACH_Challenge/``).
        labelled: one row per labelled image in class then name order, columns :data:`MANIFEST_COLUMNS`:
            ``index`` (row), ``origin`` (path relative to ``root``), ``patient`` (the image key, e.g.
            ``b001``), ``label`` (0–3), ``image`` (file name), ``class_name``, ``path`` (absolute).
        test: the unlabelled test images in numeric order (``test0, test1, …``), same columns, label -1.
        ground_truth: the CSV the labels were checked against, or None when there is none.
    """

    root: Path
    labelled: pd.DataFrame
    test: pd.DataFrame
    ground_truth: Path | None

    def describe(self) -> dict:
        """Counts for ``run_info.json`` and the log."""
        per_class = self.labelled["class_name"].value_counts()
        return {
            "root": str(self.root),
            "n_labelled": len(self.labelled),
            "per_class": {name: int(per_class.get(name, 0)) for name in CLASS_NAMES},
            "n_test": len(self.test),
            "ground_truth": str(self.ground_truth) if self.ground_truth else None,
        }

    def summary(self) -> str:
        """One line: counts per class, test images, whether the labels were checked."""
        counts = self.describe()
        per_class = ", ".join(f"{k} {v}" for k, v in counts["per_class"].items())
        checked = (
            f"labels checked against {GROUND_TRUTH_FILE}"
            if self.ground_truth
            else f"no {GROUND_TRUTH_FILE}: labels from the folders"
        )
        return (
            f"BACH at {self.root}: {counts['n_labelled']} labelled images ({per_class}), "
            f"{counts['n_test']} unlabelled test images; {checked}"
        )


def image_key(file_name: str) -> str:
    """The key of an image (lower-case stem, ``b001``): its patient id, fold key and view seed."""
    return Path(file_name.replace("\\", "/")).stem.lower()


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name``, matching the name in any case; None if absent."""
    exact = folder / name
    if exact.is_dir():
        return exact
    matches = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name.lower())
    return matches[0] if matches else None


def resolve_root(root: str | Path) -> tuple[Path, Path]:
    """``(dataset root, labelled dataset folder)`` for ``dataset.root`` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"dataset.root={root} does not exist; expected the folder holding {TRAIN_DIR}/: {LAYOUT}; "
            f"{SYNTHETIC_HINT}"
        )
    if root.name == TRAIN_DIR:
        return root.parent, root
    train = root / TRAIN_DIR
    if not train.is_dir():
        raise DatasetLayoutError(
            f"dataset.root={root} holds no {TRAIN_DIR}/ and is not that folder; expected {LAYOUT}; "
            f"{SYNTHETIC_HINT}"
        )
    return root, train


def read_ground_truth(path: str | Path) -> dict[str, tuple[str, int]]:
    """``{image key: (class name, line number)}`` of ``microscopy_ground_truth.csv``.

    Lines are ``<file>,<class>`` without a header (a first line ``image,label``-like is skipped); class
    names are matched in any case; blank lines are ignored.
    """
    path = Path(path)
    by_lower = {name.lower(): name for name in CLASS_NAMES}
    entries: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.replace(";", ",").split(",")]
        if len(fields) < 2 or not fields[0]:
            raise DatasetLayoutError(f"{path}:{number}: expected '<file>,<class>', got {line!r}")
        name, label = fields[0], fields[1]
        if label.lower() not in by_lower:
            if number == 1 and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # a header line
            raise DatasetLayoutError(
                f"{path}:{number}: class {label!r} is not one of {', '.join(CLASS_NAMES)}"
            )
        key = image_key(name)
        if key in entries:
            raise DatasetLayoutError(
                f"{path}:{number}: {name} is listed twice (first on line {entries[key][1]})"
            )
        entries[key] = (by_lower[label.lower()], number)
    return entries


def _scan_labelled(root: Path, photos: Path) -> pd.DataFrame:
    rows = []
    seen: dict[str, Path] = {}
    for label, (class_name, prefix) in enumerate(zip(CLASS_NAMES, CLASS_PREFIXES)):
        folder = _child(photos, class_name)
        if folder is None:
            raise DatasetLayoutError(
                f"class folder {photos / class_name}/ is missing; expected {LAYOUT}"
            )
        images = sorted((p for p in folder.iterdir() if _is_image(p)), key=_natural_key)
        for path in images:
            key = image_key(path.name)
            match = _NAME.match(key)
            if match and match.group(1) != prefix:
                raise DatasetLayoutError(
                    f"{path}: the name says class {CLASS_NAMES[CLASS_PREFIXES.index(match.group(1))]} "
                    f"but the file lies in {class_name}/"
                )
            if key in seen:
                raise DatasetLayoutError(f"{path}: image {key} is also at {seen[key]}")
            seen[key] = path
            rows.append(
                {
                    "origin": path.relative_to(root).as_posix(),
                    "patient": key,
                    "label": label,
                    "image": path.name,
                    "class_name": class_name,
                    "path": str(path),
                }
            )
    frame = _manifest(rows)
    empty = [name for name in CLASS_NAMES if not (frame["class_name"] == name).any()]
    if empty:
        folder = _child(photos, empty[0])
        raise DatasetLayoutError(
            f"class folder {folder}/ holds no .tif images; expected images in every class folder "
            f"({', '.join(CLASS_NAMES)}): a run never leaves a class out"
            + (f" (also empty: {', '.join(empty[1:])})" if len(empty) > 1 else "")
        )
    return frame


def check_one_size(images: pd.DataFrame) -> None:
    """Every image (labelled and unlabelled) has the size of the others (BACH: 2048×1536).

    The half-scale cache, the crop sizes and the fields of view assume one size; an image of another
    size stops the run with one line naming it and the size the others have. Only headers are read;
    an unreadable file is left to the image cache's ``dataset.on_corrupt`` policy.
    """
    sizes: dict[str, tuple[int, int]] = {}
    for path in images["path"]:
        try:
            info = inspect_image(path)
        except CorruptImageError:
            continue
        sizes[str(path)] = (info.width, info.height)
    if not sizes:
        return
    counts = pd.Series(list(sizes.values())).value_counts()
    width, height = counts.index[0]
    odd = [(p, size) for p, size in sizes.items() if size != (width, height)]
    if odd:
        path, (w, h) = odd[0]
        raise DatasetLayoutError(
            f"{path}: {w}x{h} pixels, expected {width}x{height} like the other "
            f"{int(counts.iloc[0])} BACH images (every image has one size)"
            + (f"; {len(odd) - 1} more image(s) differ" if len(odd) > 1 else "")
        )


def _check_against_ground_truth(labelled: pd.DataFrame, csv: Path) -> None:
    entries = read_ground_truth(csv)
    for key, class_name, origin in zip(
        labelled["patient"], labelled["class_name"], labelled["origin"]
    ):
        if key not in entries:
            raise DatasetLayoutError(
                f"{csv}: no line for {origin} (the CSV and the folders differ)"
            )
        listed, number = entries[key]
        if listed != class_name:
            raise DatasetLayoutError(
                f"{csv}:{number}: {origin} is {listed} there but lies in {class_name}/"
            )
    missing = sorted(set(entries) - set(labelled["patient"]), key=lambda k: entries[k][1])
    if missing:
        key = missing[0]
        raise DatasetLayoutError(
            f"{csv}:{entries[key][1]}: lists {key} ({entries[key][0]}), which is in no class folder"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def _natural_key(path: Path) -> tuple:
    stem = path.stem.lower()
    match = _TRAILING_NUMBER.search(stem)
    number = int(match.group(1)) if match else -1
    return (stem[: match.start()] if match else stem, number, path.name)


def _scan_test(root: Path, test_dir: Path) -> pd.DataFrame:
    if not test_dir.is_dir():
        return _manifest([])
    photos = _child(test_dir, PHOTOS_DIR)
    if photos is None:
        raise DatasetLayoutError(
            f"{test_dir} has no {PHOTOS_DIR}/ folder; expected {test_dir}/{PHOTOS_DIR}/test0.tif …"
        )
    rows = [
        {
            "origin": path.relative_to(root).as_posix(),
            "patient": image_key(path.name),
            "label": -1,
            "image": path.name,
            "class_name": "",
            "path": str(path),
        }
        for path in sorted((p for p in photos.iterdir() if _is_image(p)), key=_natural_key)
    ]
    return _manifest(rows)


def _manifest(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c != "index"])
    frame.insert(0, "index", range(len(frame)))
    return frame.astype({"label": int})


def scan_bach(root: str | Path) -> BachImages:
    """Every labelled and unlabelled BACH microscopy image under ``root`` (see the module docstring)."""
    root, train = resolve_root(root)
    photos = _child(train, PHOTOS_DIR)
    if photos is None:
        raise DatasetLayoutError(f"{train} has no {PHOTOS_DIR}/ folder; expected {LAYOUT}")
    labelled = _scan_labelled(root, photos)
    if labelled.empty:
        raise DatasetLayoutError(
            f"no .tif images in the class folders of {photos}; expected {LAYOUT}"
        )
    csv = photos / GROUND_TRUTH_FILE
    if not csv.is_file():
        csv = next((p for p in photos.iterdir() if p.name.lower() == GROUND_TRUTH_FILE), None)
    if csv is not None:
        _check_against_ground_truth(labelled, csv)
    test = _scan_test(root, root / TEST_DIR)
    clash = sorted(set(test["patient"]) & set(labelled["patient"]))
    if clash:
        raise DatasetLayoutError(f"test image {clash[0]} has the name of a labelled image")
    found = BachImages(root, labelled, test, csv)
    log.info(found.summary())
    return found


def bach_preprocess(
    scale: float = 0.5,
    normalizer: MacenkoNormalizer | None = None,
    stain_normalization: bool = True,
) -> Rescale:
    """What the image cache does to every BACH image once (§2.3): halve it (bicubic, 2048×1536 →
    1024×768), then Macenko-normalise it (Macenko's reference target, as the authors' code). Pass the
    result as the cache's ``preprocess`` with ``preprocess_key=<it>.key()``."""
    if not stain_normalization:
        return Rescale(scale)
    normalizer = normalizer or MacenkoNormalizer()
    return Rescale(scale, normalizer, normalizer.key())


PREPROCESS_DEFAULTS: dict[str, Any] = {
    "scale": 0.5,
    "stain_normalization": "macenko",
    "stain_target": None,
}


def preprocess_from_settings(settings: Mapping[str, Any] | None = None) -> Rescale:
    """The image cache's preprocess of ``dataset.preprocess`` (``scale``, ``stain_normalization``
    ``macenko|none``, ``stain_target`` an image path or null): :func:`bach_preprocess` with that normaliser.

    The descriptor module computes the same key from the same settings, so a feature cache names the
    preprocessing its descriptors were computed on.
    """
    settings = {**PREPROCESS_DEFAULTS, **dict(settings or {})}
    unknown = sorted(set(settings) - set(PREPROCESS_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"dataset.preprocess: unknown key(s) {unknown}; expected {sorted(PREPROCESS_DEFAULTS)}"
        )
    scale = float(settings["scale"])
    if not 0 < scale <= 1:
        raise ConfigError(f"dataset.preprocess.scale={scale}: expected a factor in (0, 1]")
    normalizer = build_normalizer(settings["stain_normalization"], settings["stain_target"])
    return bach_preprocess(scale, normalizer, stain_normalization=normalizer is not None)


# ---- folds ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DatasetLayoutError(f"{path}: not valid JSON ({err})") from err


def read_official_folds(path: str | Path, labelled: pd.DataFrame) -> pd.DataFrame:
    """A BACH fold file as ``fold, patient, subset`` rows over the images of ``labelled``.

    Two formats are read (both shipped in ``histo_lightning/resources/splits/``):

    * the authors' ten folds, a list of ``{"test": [file names], "test_y": [labels 0–3]}``: fold k's test
      set is its 40 images, its training set every other image; the folds must partition the images and
      ``test_y`` must agree with the class folders;
    * the patient-aware split ``{"train": [...], "val": [...]}`` (``Benign/b001.tif``-style paths): one
      fold, whose ``val`` images are the test set.

    Every image the file names must be present under the dataset root (the official folds are for the
    real BACH; a synthetic tree has other images), and every present image must be in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"the BACH fold file {path} (dataset.official_folds) does not exist; expected a fold file "
            f"such as the packaged ${{paths.resources_dir}}/splits/bach_rakhlin_folds10.json"
        )
    data = _read_json(path)
    label_of = dict(zip(labelled["patient"], labelled["label"]))
    rows: list[dict] = []
    if isinstance(data, list):
        test_fold: dict[str, int] = {}
        for k, fold in enumerate(data, start=1):
            if not isinstance(fold, dict) or "test" not in fold:
                raise DatasetLayoutError(f"{path}: fold {k} has no 'test' list")
            labels = fold.get("test_y", [None] * len(fold["test"]))
            for name, label in zip(fold["test"], labels):
                key = image_key(name)
                if key in test_fold:
                    raise DatasetLayoutError(
                        f"{path}: {name} is in the test set of folds {test_fold[key]} and {k}"
                    )
                test_fold[key] = k
                if key in label_of and label is not None and int(label) != label_of[key]:
                    raise DatasetLayoutError(
                        f"{path}: fold {k} labels {name} {CLASS_NAMES[int(label)]} but it lies in "
                        f"{CLASS_NAMES[label_of[key]]}/"
                    )
        _check_same_images(path, set(test_fold), label_of)
        rows = [
            {"fold": k, "patient": key, "subset": "test" if test_fold[key] == k else "train"}
            for k in range(1, len(data) + 1)
            for key in labelled["patient"]
        ]
    elif isinstance(data, dict) and {"train", "val"} <= set(data):
        subset_of = {image_key(n): "train" for n in data["train"]}
        for name in data["val"]:
            if image_key(name) in subset_of:
                raise DatasetLayoutError(f"{path}: {name} is in both 'train' and 'val'")
            subset_of[image_key(name)] = "test"
        _check_same_images(path, set(subset_of), label_of)
        rows = [
            {"fold": 1, "patient": key, "subset": subset_of[key]} for key in labelled["patient"]
        ]
    else:
        raise DatasetLayoutError(
            f"{path}: expected a list of folds with 'test'/'test_y' (the authors' folds) or an object "
            f"with 'train' and 'val' lists (the patient-aware split)"
        )
    return pd.DataFrame(rows, columns=["fold", "patient", "subset"])


def _check_same_images(path: Path, named: set[str], label_of: dict[str, int]) -> None:
    absent = sorted(named - set(label_of))
    if absent:
        raise DatasetLayoutError(
            f"{path} names {absent[0]}, which is not under the dataset root"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
            + "; the official folds are for the real BACH (400 images); use split=auto otherwise"
        )
    unnamed = sorted(set(label_of) - named)
    if unnamed:
        raise DatasetLayoutError(
            f"{path} does not place image {unnamed[0]}"
            + (f" (and {len(unnamed) - 1} more)" if len(unnamed) > 1 else "")
        )


def bach_split(
    labelled: pd.DataFrame,
    spec: SplitSpec,
    split_dir: str | Path,
    official_folds: str | Path | None = None,
    name: str = "bach",
    create: bool = True,
) -> pd.DataFrame:
    """The split table (``fold, patient, label, subset``) of the BACH images for ``spec``.

    ``auto`` and ``patient_kfold``: K folds stratified over images (each image is a patient here);
    ``official``: the fold file ``official_folds`` (:func:`read_official_folds`), whose name enters the
    split file's name so that two fold files never share one; ``holdout`` as in
    :mod:`histo_lightning.data.splits`. Validation images, if ``spec.val_fraction > 0``, come from each
    fold's training images.
    """
    patients = labelled[["patient", "label"]].sort_values("patient").reset_index(drop=True)
    if spec.scheme == "official":
        if official_folds is None:
            raise ConfigError(
                "split.scheme=official needs dataset.official_folds (the authors' "
                "splits/bach_rakhlin_folds10.json or splits/bach_patient_split.json)"
            )
        official = read_official_folds(official_folds, labelled)
        return load_or_create_split(
            split_dir,
            f"{name}-{Path(official_folds).stem}",
            patients,
            spec,
            official=official,
            official_source=str(official_folds),
            create=create,
        )
    if spec.scheme == "auto":  # BACH ships no fold file: the authors' folds are opt-in (official)
        spec = replace(spec, scheme="patient_kfold")
    return load_or_create_split(split_dir, name, patients, spec, create=create)


# ---- the data module ----------------------------------------------------------------------------------

#: subsets of :meth:`BachDataModule.predict_dataset`: the fold's, every image, or the unlabelled ones
SUBSETS = ("train", "val", "test", "all", "labelled", "unlabelled")


class BachImageDataset(Dataset):
    """Whole BACH images from the image cache (halved and normalised once), one item per image.

    Items: ``index`` (the row of the subset's manifest), ``image`` (``(H, W, 3)`` uint8 tensor, a copy of
    the cache's pixels), ``key`` (the image key, e.g. ``b001``: it seeds the image's views) and
    ``preprocess`` (the cache's preprocess key, which the descriptor module checks against its own).
    """

    def __init__(
        self, images: MemmapImageCache, cache_rows: np.ndarray, keys: list[str], preprocess: str
    ) -> None:
        self.images = images
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.keys = list(keys)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels = np.array(self.images[int(self.cache_rows[i])], copy=True)
        return {
            "index": i,
            "image": torch.from_numpy(pixels),
            "key": self.keys[i],
            "preprocess": self.preprocess,
        }


class BachDataModule(BaseDataModule):
    """BACH microscopy images for Rakhlin et al.: image cache, folds and the samples of every subset.

    ``prepare_data`` reads the dataset (:func:`scan_bach`), writes or reads the split file
    (:func:`bach_split`) and decodes every labelled and unlabelled image once into an image cache,
    halved and Macenko-normalised (``preprocess``, §2.3). The samples are whole images:
    ``predict_dataset("all")``/``sample_manifest("all")`` hold every labelled image (class then name
    order) followed by the unlabelled test images, independent of the fold, so descriptors computed over
    them serve every fold and run; :meth:`fold_rows` says which rows of ``all`` are this fold's
    ``train``/``val``/``test`` images and which are ``unlabelled``.

    Args:
        fold, split: the test fold (1-based) and the ``split`` group (``auto``: 10-fold stratified over
            images with ``split.n_folds=10``; ``official``: the fold file ``official_folds``).
        preprocess: :data:`PREPROCESS_DEFAULTS` fields (half scale, bicubic, then Macenko).
        official_folds: the fold file of ``split=official`` (the authors' ``bach_rakhlin_folds10.json``
            or the patient-aware ``bach_patient_split.json``, shipped in :mod:`histo_lightning.resources`
            under ``splits/``).
        include_unlabelled: also cache and serve the unlabelled test images (the submission).
        **kwargs: :class:`~histo_lightning.data.base.BaseDataModule` arguments (``root`` = the folder
            holding ``ICIAR2018_BACH_Challenge/``, or ``synthetic`` for ``dataset=bach_synthetic``).
    """

    dataset_name = "bach"
    display_name = "BACH"
    root_hint = f"the folder holding {TRAIN_DIR}/ ({SYNTHETIC_HINT})"
    synthetic_module = "histo_lightning.data.synthetic.bach"

    def __init__(
        self,
        fold: int,
        split: Mapping[str, Any],
        preprocess: Mapping[str, Any] | None = None,
        official_folds: str | None = None,
        include_unlabelled: bool = True,
        batch_size: int = 1,
        num_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(fold, split, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self.preprocess_settings = {**PREPROCESS_DEFAULTS, **dict(preprocess or {})}
        self.preprocess = preprocess_from_settings(self.preprocess_settings)
        self.official_folds = official_folds
        self.include_unlabelled = bool(include_unlabelled)
        self.found: BachImages | None = None
        self.images: MemmapImageCache | None = None
        self.table: pd.DataFrame | None = None  # the manifest of "all"
        self._cache_row: np.ndarray = np.zeros(0, dtype=np.int64)
        self._subset_of_row: np.ndarray | None = None

    # ---- preparation ----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.table is not None:
            return
        found = scan_bach(self.root)
        official = self.official_folds if self.split_spec.scheme == "official" else None
        split = bach_split(found.labelled, self.split_spec, self.split_dir, official, self.name)
        check_fold(self.fold, split, f"{self.name}/{self.split_spec.scheme}")
        self.split = split
        frames = [found.labelled.assign(subset="labelled")]
        if self.include_unlabelled and len(found.test):
            frames.append(found.test.assign(subset="unlabelled"))
        images = pd.concat(frames, ignore_index=True)
        check_one_size(images)
        paths = [Path(p) for p in images["path"]]
        cache = MemmapImageCache.build_or_open(
            paths,
            found.root,
            self.cache_dir / "images",
            self.name,
            self.prepare_workers,
            preprocess=self.preprocess,
            preprocess_key=self.preprocess.key(),
        )
        self.apply_corrupt_policy(cache.bad)
        usable = ~images["path"].isin({b.path for b in cache.bad}).to_numpy()
        self._cache_row = np.flatnonzero(usable)
        table = images[usable].reset_index(drop=True)
        self.table = pd.DataFrame(
            {
                "index": np.arange(len(table)),
                "origin": table["origin"].to_numpy(),
                "patient": table["patient"].to_numpy(),
                "label": table["label"].to_numpy(),
                "image": table["image"].to_numpy(),
                "class_name": table["class_name"].to_numpy(),
                "subset": table["subset"].to_numpy(),
            }
        )
        self.found, self.images = found, cache
        shapes = sorted({tuple(int(v) for v in s) for s in cache.shapes[self._cache_row]})
        synthetic = " [SYNTHETIC DATA]" if self.is_synthetic else ""
        log.info(
            f"{self.name}{synthetic}: image cache {cache.folder.name} holds "
            f"{len(self._cache_row)} images ({self.preprocess.key()}), "
            f"size(s) {', '.join(f'{w}x{h}' for h, w in shapes)}"
        )

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        assert self.table is not None
        members = self.fold_members()
        subset_of_key = {key: name for name, keys in members.items() for key in keys}
        subset = self.table["patient"].map(subset_of_key).fillna("").to_numpy(dtype=object)
        subset[self.table["subset"].to_numpy() == "unlabelled"] = "unlabelled"
        for name in ("train", "test"):
            if not (subset == name).any():
                raise ConfigError(
                    f"fold={self.fold} of split {self.split_spec.scheme!r} has no {name} images"
                )
        self._subset_of_row = subset

    # ---- subsets ------------------------------------------------------------------------------------------
    def rows(self, subset: str) -> np.ndarray:
        """Rows of the ``all`` manifest that belong to ``subset`` (see :data:`SUBSETS`)."""
        if subset not in SUBSETS:
            raise ConfigError(f"BACH subset {subset!r}: expected one of {', '.join(SUBSETS)}")
        if self._subset_of_row is None:
            self.setup()
        assert self.table is not None and self._subset_of_row is not None
        if subset == "all":
            return np.arange(len(self.table))
        if subset == "labelled":
            return np.flatnonzero(self.table["subset"].to_numpy() == "labelled")
        return np.flatnonzero(self._subset_of_row == subset)

    def fold_rows(self) -> dict[str, np.ndarray]:
        """This fold's ``train``, ``val``, ``test`` and the ``unlabelled`` rows of the ``all`` manifest."""
        return {name: self.rows(name) for name in ("train", "val", "test", "unlabelled")}

    def predict_dataset(self, subset: str) -> BachImageDataset:
        """The images of ``subset``, ``"index"`` numbering them 0…N-1 (the rows of its manifest)."""
        rows = self.rows(subset)
        assert self.images is not None and self.table is not None
        return BachImageDataset(
            self.images,
            self._cache_row[rows],
            self.table["patient"].to_numpy()[rows].tolist(),
            self.preprocess.key(),
        )

    def sample_manifest(self, subset: str) -> pd.DataFrame:
        """One row per image of :meth:`predict_dataset`: ``index, origin, patient`` (the image key),
        ``label`` (-1: unlabelled), ``image``, ``class_name``, ``subset`` (labelled/unlabelled)."""
        rows = self.rows(subset)
        assert self.table is not None
        manifest = self.table.iloc[rows].reset_index(drop=True)
        manifest["index"] = np.arange(len(manifest))
        return manifest

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.predict_dataset("test"), train=False)

    def validation_loader(self) -> DataLoader:
        return self.loader(self.predict_dataset("val"), train=False)

    # ---- what the samples are ------------------------------------------------------------------------------
    def data_key(self) -> str:
        self.prepare_data()
        assert self.images is not None and self.table is not None
        return digest([self.images.folder.name, self.table["origin"].tolist()])

    def sample_settings(self) -> dict[str, Any]:
        return {
            "preprocess": self.preprocess.key(),
            "official_folds": self.official_folds if self.split_spec.scheme == "official" else None,
            "include_unlabelled": self.include_unlabelled,
        }

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.found is not None:
            found = self.found.describe()
            found["n_unlabelled"] = found.pop("n_test")  # BACH's test set: unlabelled images
            info.update(found, root=str(self.root))
        info["preprocess"] = {**self.preprocess_settings, "key": self.preprocess.key()}
        if self.images is not None:
            info["image_cache"] = str(self.images.folder)
        if self._subset_of_row is not None:
            info["images_per_subset"] = {name: len(rows) for name, rows in self.fold_rows().items()}
        return info


__all__ = [
    "CLASS_NAMES",
    "CLASS_PREFIXES",
    "GROUND_TRUTH_FILE",
    "LAYOUT",
    "MANIFEST_COLUMNS",
    "PHOTOS_DIR",
    "PREPROCESS_DEFAULTS",
    "SUBSETS",
    "TEST_DIR",
    "TRAIN_DIR",
    "BachDataModule",
    "BachImageDataset",
    "BachImages",
    "bach_preprocess",
    "bach_split",
    "check_one_size",
    "image_key",
    "preprocess_from_settings",
    "read_ground_truth",
    "read_official_folds",
    "resolve_root",
    "scan_bach",
]
