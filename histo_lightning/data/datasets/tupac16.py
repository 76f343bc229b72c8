"""TUPAC16 mitosis data (auxiliary dataset): the reader and the data module.

**Layout** (``dataset.root`` is the folder that holds the unpacked parts)::

    <root>/mitoses_image_data/<case>/<NN>.tif        HPFs, RGB, 0.25 µm/px; cases 01-73
    <root>/mitoses_ground_truth/<case>/<NN>.csv      no header, one "row,col" per mitosis (row first!)
    <root>/mitoses-test-image-data/<NN>/01.tif       the unlabelled test cases (optional)

An HPF without a CSV, or with an empty one, has no mitosis. Lines may carry more columns (a confidence);
only the first two are read. A header line ``row,col`` is accepted although the release has none. The
case is the patient: all HPFs of a case are in the same fold. Cases 01-23 (AMIDA13) come from one centre,
24-48 and 49-73 from two others (CHS-Net §4.1). Predictions are written in the challenge's format, one
``<case>/<NN>.csv`` per HPF with ``row,col,confidence`` lines (the test set's submissions are
``<case>/01.csv``), and as QuPath-importable GeoJSON (points as ``x = col, y = row``), by
:mod:`histo_lightning.methods.chsnet.outputs`.

**Patch index**: :mod:`histo_lightning.data.sampling.mitosis_patches` (CHS-Net §3.4, §4.2.1).

**Data module** (:class:`Tupac16DataModule`). ``prepare_data`` (idempotent, file-locked steps) reads the
dataset (or generates the synthetic one), writes/reads the case-level split file
(:mod:`histo_lightning.data.splits`, ``patient_kfold``: the case is the patient; folds stratified by
pathology centre where every centre has enough cases; validation cases carved from the training cases),
decodes and Macenko-normalises every HPF once into a memory-mapped cache keyed by the files, the
normaliser and its target, and builds the patch index. Loaders (batches are dicts):

* ``train_dataloader``: the training cases' patches ``{"image" (3,128,128) uint8, "label", "index"}``;
  all of them, shuffled (screening network), or after :meth:`Tupac16DataModule.use_hard_examples`
  negatives : positives : false positives drawn 1 : 1 : 3 by a
  :class:`~histo_lightning.data.sampling.samplers.RatioSampler` (refined network, §4.2.3);
* ``val_dataloader``: the validation cases' patches (original positives, all negatives);
* ``predict_dataloader``: every training-case patch, for hard-example mining;
* ``test_dataloader``: whole HPFs, one per batch, ``{"image" (3,H,W) uint8, "points" (K,2), "hpf",
  "labelled"}``: the held-out fold's, or with :meth:`Tupac16DataModule.use_unlabelled_test_set` the
  unlabelled test cases'.

Evaluation loaders use an unrepeated distributed sampler under DDP, so every patch / HPF is seen once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from histo_lightning.data.base import BaseDataModule, digest
from histo_lightning.data.sampling.mitosis_patches import (
    PatchSampling,
    build_patch_index,
)
from histo_lightning.data.sampling.samplers import RatioSampler
from histo_lightning.data.splits import patient_labels
from histo_lightning.data.stain import build_normalizer
from histo_lightning.data.torch_datasets import HpfDataset, PatchDataset, first_item
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.stores.image_store import MemmapImageCache, files_key
from histo_lightning.stores.keys import array_digest
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

# ---- the reader ----------------------------------------------------------------------------------------
IMAGE_DIR = "mitoses_image_data"
LABEL_DIR = "mitoses_ground_truth"
TEST_DIR = "mitoses-test-image-data"
IMAGE_SUFFIXES = (".tif", ".tiff")
CENTRES = ((1, 23), (24, 48), (49, 73))
LAYOUT = (
    f"<root>/{IMAGE_DIR}/<case>/<NN>.tif with <root>/{LABEL_DIR}/<case>/<NN>.csv "
    f"('row,col' lines; no CSV or an empty one = no mitosis), optionally <root>/{TEST_DIR}/<NN>/01.tif"
)
SYNTHETIC_HINT = "for a synthetic stand-in in the same layout use dataset=tupac16_synthetic"


def hpf_path(root: str | Path, case: str, name: str) -> Path:
    """Where HPF ``<NN>`` of a labelled case lies (``<root>/mitoses_image_data/<case>/<NN>.tif``)."""
    return Path(root) / IMAGE_DIR / case / f"{name}.tif"


def ground_truth_path(root: str | Path, case: str, name: str) -> Path:
    """The ground-truth CSV of an HPF (``<root>/mitoses_ground_truth/<case>/<NN>.csv``)."""
    return Path(root) / LABEL_DIR / case / f"{name}.csv"


def test_hpf_path(root: str | Path, case: str) -> Path:
    """The HPF of an unlabelled test case (``<root>/mitoses-test-image-data/<NN>/01.tif``)."""
    return Path(root) / TEST_DIR / case / "01.tif"


def centre_of(case: str) -> int:
    """The pathology centre (0, 1, 2) of a TUPAC16 case number, -1 if outside 01-73."""
    try:
        number = int(case)
    except ValueError:
        return -1
    return next((c for c, (lo, hi) in enumerate(CENTRES) if lo <= number <= hi), -1)


def read_ground_truth(path: str | Path) -> np.ndarray:
    """``(K, 2)`` float ``(row, col)`` points of a ground-truth CSV; ``(0, 2)`` if missing or empty."""
    path = Path(path)
    if not path.is_file():
        return np.zeros((0, 2))
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.replace(";", ",").split(",")]
        if not line.strip():
            continue
        try:
            points.append((float(fields[0]), float(fields[1])))
        except (ValueError, IndexError):
            if number == 1 and fields[0].lower() in ("row", "y"):
                continue  # a header, although the release has none
            raise DatasetLayoutError(
                f"{path}:{number}: expected 'row,col' numbers, got {line!r}"
            ) from None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected TUPAC16 mitosis data: {LAYOUT}; "
            f"{SYNTHETIC_HINT}"
        )
    if not (root / IMAGE_DIR).is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) has no {IMAGE_DIR}/ (and needs {LABEL_DIR}/ beside it); "
            f"expected {LAYOUT}; {SYNTHETIC_HINT}"
        )


def scan_tupac16(root: str | Path) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Every labelled HPF under ``root`` and its mitoses.

    Returns:
        ``hpfs``: one row per HPF, sorted by case then name, columns ``path, case, name, label_path,
        centre, n_mitoses`` (``label_path`` is "" when there is no CSV);
        ``mitoses``: HPF row → ``(K, 2)`` ``(row, col)`` points.
    """
    root = Path(root)
    _check_root(root)
    rows, points = [], {}
    for case_dir in sorted(p for p in (root / IMAGE_DIR).iterdir() if p.is_dir()):
        for image in sorted(p for p in case_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            label = ground_truth_path(root, case_dir.name, image.stem)
            mitoses = read_ground_truth(label)
            points[len(rows)] = mitoses
            rows.append(
                {
                    "path": str(image),
                    "case": case_dir.name,
                    "name": image.stem,
                    "label_path": str(label) if label.is_file() else "",
                    "centre": centre_of(case_dir.name),
                    "n_mitoses": len(mitoses),
                }
            )
    if not rows:
        raise DatasetLayoutError(
            f"no HPF images (*.tif) under {root / IMAGE_DIR}; expected {LAYOUT}; {SYNTHETIC_HINT}"
        )
    known = {(r["case"], r["name"]) for r in rows}
    if (root / LABEL_DIR).is_dir():
        orphans = [
            p
            for p in sorted((root / LABEL_DIR).glob("*/*.csv"))
            if (p.parent.name, p.stem) not in known
        ]
        if orphans:
            raise DatasetLayoutError(
                f"{orphans[0]} has no image {IMAGE_DIR}/{orphans[0].parent.name}/{orphans[0].stem}.tif"
                + (f" (and {len(orphans) - 1} more CSVs without image)" if len(orphans) > 1 else "")
                + f"; expected {LAYOUT}"
            )
    return pd.DataFrame(rows), points


def scan_test_set(root: str | Path) -> pd.DataFrame:
    """The unlabelled test HPFs (``mitoses-test-image-data/<NN>/*.tif``): columns ``path, case, name``."""
    folder = Path(root) / TEST_DIR
    if not folder.is_dir():
        return pd.DataFrame(columns=["path", "case", "name"])
    rows = [
        {"path": str(image), "case": case_dir.name, "name": image.stem}
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for image in sorted(p for p in case_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    ]
    return pd.DataFrame(rows, columns=["path", "case", "name"])


# ---- the data module -----------------------------------------------------------------------------------
class Tupac16DataModule(BaseDataModule):
    """TUPAC16 mitosis detection data for CHS-Net (see the module docstring).

    Args:
        fold: the test fold, 1…K. split: the ``split`` group (``patient_kfold``; the case is the patient).
        root: the folder holding ``mitoses_image_data/`` (``dataset.root``); unused when ``synthetic`` is set.
        synthetic: generator settings (``preset`` plus
            :class:`~histo_lightning.data.synthetic.tupac16.SyntheticTupacConfig` fields), only set by
            ``dataset=tupac16_synthetic``; the data is then generated once under ``synthetic_dir``.
        microns_per_pixel: pixel size (TUPAC16: 0.25), used to express distances such as the 7.5 µm
            detection radius in pixels.
        stain_normalization: ``macenko`` (§4.2.1) or ``none``. stain_target: an image whose stain is the
            target (default: Macenko's reference H&E).
        sampling: :class:`PatchSampling` fields (§3.4, §4.2.1).
        val_positives: ``original`` (one patch per validation mitosis) or ``all`` (the augmented ones too).
        **kwargs: :class:`~histo_lightning.data.base.BaseDataModule` arguments (batch sizes, workers,
            cache and split folders, ``on_corrupt``, ``prepare_workers``, ``drop_last``).
    """

    dataset_name = "tupac16"
    display_name = "TUPAC16"
    root_hint = "the folder holding mitoses_image_data/"
    synthetic_module = "histo_lightning.data.synthetic.tupac16"
    file_noun = "HPF"
    persistent_workers = False  # the pipeline runs several trainers over changing training samples

    def __init__(
        self,
        fold: int,
        split: Mapping[str, Any],
        microns_per_pixel: float = 0.25,
        stain_normalization: str = "macenko",
        stain_target: str | None = None,
        sampling: Mapping[str, Any] | None = None,
        val_positives: str = "original",
        batch_size: int = 192,
        eval_batch_size: int = 512,
        num_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            fold,
            split,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            **kwargs,
        )
        if val_positives not in ("original", "all"):
            raise ConfigError(
                f"dataset.val_positives={val_positives!r}: expected 'original' or 'all'"
            )
        if stain_normalization not in ("macenko", "none"):
            raise ConfigError(
                f"dataset.stain_normalization={stain_normalization!r}: expected 'macenko' or 'none'"
            )
        if microns_per_pixel <= 0:
            raise ConfigError(f"dataset.microns_per_pixel={microns_per_pixel} must be positive")
        try:
            self.sampling = PatchSampling(**dict(sampling or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataset.sampling: {err}") from None
        self.microns_per_pixel = float(microns_per_pixel)
        self.stain_normalization = stain_normalization
        self.stain_target = stain_target
        self.val_positives = val_positives
        self.hpfs: pd.DataFrame | None = None
        self.mitoses: dict[int, np.ndarray] = {}
        self.images: MemmapImageCache | None = None
        self.index: pd.DataFrame | None = None
        self.index_counts: dict[str, int] = {}
        self.subset_of_hpf: np.ndarray | None = None
        self.hard_examples: tuple[np.ndarray, Sequence[float], int | None, int] | None = None
        self.unlabelled: tuple[pd.DataFrame, MemmapImageCache] | None = None
        self.detect_unlabelled = False
        self._usable = np.zeros(0, dtype=bool)

    def radius_px(self, microns: float) -> float:
        """A distance in microns as pixels of this dataset."""
        return microns / self.microns_per_pixel

    # ---- preparation ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._materialise()

    def _normalizer_key(self) -> str:
        normalizer = build_normalizer(self.stain_normalization, self.stain_target)
        return normalizer.key() if normalizer is not None else ""

    def _normalised_cache(self, paths: list[Path], name: str) -> MemmapImageCache:
        normalizer = build_normalizer(self.stain_normalization, self.stain_target)
        return MemmapImageCache.build_or_open(
            paths,
            self.root,
            self.cache_dir / "hpfs",
            name,
            self.prepare_workers,
            preprocess=normalizer,
            preprocess_key=normalizer.key() if normalizer is not None else "",
        )

    def _materialise(self) -> None:
        if self.index is not None:
            return
        hpfs, mitoses = scan_tupac16(self.root)
        cases = pd.DataFrame({"patient": hpfs["case"], "label": hpfs["centre"].clip(lower=0)})
        self.load_split(patient_labels(cases))
        images = self._normalised_cache([Path(p) for p in hpfs["path"]], self.name)
        self.apply_corrupt_policy(images.bad)
        usable = ~hpfs["path"].isin({b.path for b in images.bad}).to_numpy()
        for i in np.flatnonzero(usable):
            height, width = (int(v) for v in images.shapes[i])
            points = mitoses[i]
            outside = (
                (points[:, 0] < 0)
                | (points[:, 0] >= height)
                | (points[:, 1] < 0)
                | (points[:, 1] >= width)
            )
            if outside.any():
                raise DatasetLayoutError(
                    f"{hpfs['label_path'][i]}: point (row={points[outside][0][0]:g}, col={points[outside][0][1]:g}) "
                    f"lies outside its {height}x{width} image (expected 'row,col', row first)"
                )
        shapes = images.shapes.copy()
        shapes[~usable] = 0  # unreadable HPFs yield no patches
        index, counts = build_patch_index(
            shapes, [mitoses[i] for i in range(len(hpfs))], self.sampling
        )
        self.hpfs, self.mitoses, self.images = hpfs, mitoses, images
        self.index, self.index_counts = index, counts
        self._usable = usable
        synthetic = " [SYNTHETIC DATA]" if self.is_synthetic else ""
        log.info(
            f"{self.name}{synthetic}: {len(hpfs)} HPFs of {hpfs['case'].nunique()} cases, "
            f"{counts['mitoses']} mitoses → {counts['positives']} positive patches, "
            f"{counts['negatives']} negative windows ({counts['ignored']} ignored by IoA)"
        )

    def index_fingerprint(self) -> str:
        """A digest of the patch index (rows of mined false positives refer to it)."""
        assert self.index is not None
        return array_digest([self.index[column].to_numpy() for column in self.index.columns])

    # ---- subsets ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._materialise()
        assert self.hpfs is not None
        members = self.fold_members()
        subset_of_case = {case: name for name, cases in members.items() for case in cases}
        self.subset_of_hpf = self.hpfs["case"].map(subset_of_case).fillna("").to_numpy()
        for subset in ("train", "test"):
            if not (self.subset_of_hpf == subset).any():
                raise ConfigError(
                    f"fold={self.fold} of split {self.split_spec.scheme!r} has no {subset} cases"
                )

    def hpf_ids(self, subset: str) -> np.ndarray:
        """Usable HPFs (rows of ``hpfs``) of ``train``, ``val`` or ``test`` in this fold."""
        if self.subset_of_hpf is None:
            self.setup()
        return np.flatnonzero((self.subset_of_hpf == subset) & self._usable)

    def patch_rows(self, subset: str, originals_only: bool = False) -> np.ndarray:
        """Patch-index rows of the HPFs of ``subset`` (positives: only un-augmented ones if asked)."""
        assert self.index is not None
        mask = np.isin(self.index["hpf"].to_numpy(), self.hpf_ids(subset))
        if originals_only:
            mask &= (self.index["label"].to_numpy() == 0) | self.index["original"].to_numpy()
        return np.flatnonzero(mask)

    def _eval_rows(self, subset: str) -> np.ndarray:
        """The patches evaluated for ``subset`` (validation: original positives unless ``all``)."""
        return self.patch_rows(
            subset, originals_only=subset == "val" and self.val_positives == "original"
        )

    def use_hard_examples(
        self,
        false_positives: np.ndarray,
        ratios: Sequence[float] = (1, 1, 3),
        epoch_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        """Train on negatives : positives : false positives drawn in ``ratios`` (None: all patches)."""
        self.hard_examples = (
            np.asarray(false_positives, dtype=np.int64),
            tuple(ratios),
            epoch_samples,
            seed,
        )

    def use_unlabelled_test_set(self, enabled: bool = True) -> None:
        """Make ``test_dataloader`` serve the unlabelled test cases (``mitoses-test-image-data``)."""
        self.detect_unlabelled = enabled

    def unlabelled_hpfs(self) -> tuple[pd.DataFrame, MemmapImageCache] | None:
        """The unlabelled test HPFs and their normalised cache (built on first use), or None."""
        if self.unlabelled is None:
            table = scan_test_set(self.root)
            if table.empty:
                return None
            cache = self._normalised_cache([Path(p) for p in table["path"]], f"{self.name}-test")
            self.apply_corrupt_policy(cache.bad)
            self.unlabelled = (table, cache)
        return self.unlabelled

    # ---- loaders ----------------------------------------------------------------------------------
    def _patches(self, rows: np.ndarray, ids: np.ndarray | None = None) -> PatchDataset:
        assert self.images is not None and self.index is not None
        return PatchDataset(self.images, self.index, rows, ids, self.sampling.patch_size)

    def refined_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training rows of (negatives that are not false positives, positives, false positives)."""
        assert self.hard_examples is not None and self.index is not None
        rows = self.patch_rows("train")
        labels = self.index["label"].to_numpy()[rows]
        hard = np.intersect1d(self.hard_examples[0], rows)
        negatives = np.setdiff1d(rows[labels == 0], hard)
        return negatives, rows[labels == 1], hard

    def train_dataloader(self) -> DataLoader:
        if self.hard_examples is None:
            return self.loader(self._patches(self.patch_rows("train")), train=True, shuffle=True)
        _, ratios, epoch_samples, seed = self.hard_examples
        groups = self.refined_groups()
        rows = np.concatenate(groups)
        offsets = np.cumsum([0, *(len(g) for g in groups)])
        positions = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(groups))]
        ratios = [r if len(g) else 0.0 for r, g in zip(ratios, groups)]
        if epoch_samples is None:
            # every false positive once per epoch (or, with none mined, every positive)
            anchor = 2 if len(groups[2]) and ratios[2] > 0 else 1
            epoch_samples = round(len(groups[anchor]) * sum(ratios) / ratios[anchor])
        sampler = RatioSampler(positions, ratios, int(epoch_samples), seed=seed)
        return self.loader(self._patches(rows), train=True, sampler=sampler)

    def validation_loader(self) -> DataLoader:
        return self.loader(self._patches(self._eval_rows("val")), train=False)

    def test_dataloader(self) -> DataLoader:
        """Whole HPFs, one per batch: the held-out fold's (or the unlabelled test set's)."""
        assert self.images is not None
        if self.detect_unlabelled:
            unlabelled = self.unlabelled_hpfs()
            if unlabelled is None:
                raise DatasetLayoutError(
                    f"no unlabelled test set under {self.root} (mitoses-test-image-data/)"
                )
            table, cache = unlabelled
            usable = ~table["path"].isin({b.path for b in cache.bad}).to_numpy()
            dataset = HpfDataset(cache, np.flatnonzero(usable), None)
        else:
            dataset = HpfDataset(self.images, self.hpf_ids("test"), self.mitoses)
        return self.loader(dataset, train=False, batch_size=1, collate_fn=first_item)

    # ---- the contract: what the samples are -------------------------------------------------------
    def predict_dataset(self, subset: str) -> PatchDataset:
        """The patches of ``subset`` (``train``, ``val``, ``test``) numbered 0…N-1 in ``"index"``."""
        rows = self._eval_rows(subset)
        return self._patches(rows, ids=np.arange(len(rows)))

    def sample_manifest(self, subset: str) -> pd.DataFrame:
        """One row per patch of :meth:`predict_dataset`: origin HPF, case, label, centre and rotation."""
        assert self.index is not None and self.hpfs is not None
        rows = self._eval_rows(subset)
        patches = self.index.iloc[rows]
        hpf = patches["hpf"].to_numpy()
        return pd.DataFrame(
            {
                "index": np.arange(len(rows)),
                "origin": self.relative_origin(self.hpfs["path"].iloc[hpf]),
                "patient": self.hpfs["case"].to_numpy()[hpf],
                "label": patches["label"].to_numpy(),
                "hpf": hpf,
                "cy": patches["cy"].to_numpy(),
                "cx": patches["cx"].to_numpy(),
                "angle": patches["angle"].to_numpy(),
                "original": patches["original"].to_numpy(),
                "patch_row": rows,
            }
        )

    def data_key(self) -> str:
        assert self.hpfs is not None
        paths = [Path(p) for p in self.hpfs["path"]]
        return digest(
            [files_key(paths, self.root, self._normalizer_key()), self.index_fingerprint()]
        )

    def sample_settings(self) -> dict[str, Any]:
        return {
            "sampling": self.sampling.__dict__,
            "stain_normalization": self.stain_normalization,
            "stain_target": self.stain_target,
            "val_positives": self.val_positives,
        }

    # ---- reporting --------------------------------------------------------------------------------
    def hpf_name(self, hpf: int, unlabelled: bool = False) -> tuple[str, str]:
        """``(case, NN)`` of an HPF row."""
        table = self.unlabelled[0] if unlabelled and self.unlabelled else self.hpfs
        assert table is not None
        return str(table["case"].iloc[hpf]), str(table["name"].iloc[hpf])

    def describe(self) -> dict[str, Any]:
        """What the run report records about the data."""
        info = super().describe()
        info.update(
            microns_per_pixel=self.microns_per_pixel,
            stain_normalization=self.stain_normalization,
            sampling=self.sampling.__dict__,
            patch_index=self.index_counts,
        )
        if self.subset_of_hpf is not None and self.index is not None:
            labels = self.index["label"].to_numpy()
            hpf_of_row = self.index["hpf"].to_numpy()
            for subset in ("train", "val", "test"):
                ids = self.hpf_ids(subset)
                rows = np.isin(hpf_of_row, ids)
                info[subset] = {
                    "cases": int(pd.Series(self.hpfs["case"].to_numpy()[ids]).nunique()),
                    "hpfs": len(ids),
                    "mitoses": int(sum(len(self.mitoses[i]) for i in ids)),
                    "positive_patches": int((rows & (labels == 1)).sum()),
                    "negative_patches": int((rows & (labels == 0)).sum()),
                }
        return info


__all__ = [
    "CENTRES",
    "IMAGE_DIR",
    "LABEL_DIR",
    "LAYOUT",
    "TEST_DIR",
    "Tupac16DataModule",
    "centre_of",
    "ground_truth_path",
    "hpf_path",
    "read_ground_truth",
    "scan_test_set",
    "scan_tupac16",
    "test_hpf_path",
]
