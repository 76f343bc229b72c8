"""PAIP 2019 (liver whole slides) for SMSE §IV-D: slides → cached patch index → patches read on the fly.

Layout (``../shared/datasets.md``)::

    <root>/Training_phase_1/<NNN>/01_01_0083.svs            # Aperio SVS at 20× (or a tiled .tif)
    <root>/Training_phase_1/<NNN>/01_01_0083_viable.tif     # full-resolution 0/1 mask, viable tumour
    <root>/Training_phase_1/<NNN>/01_01_0083_whole.tif      # full-resolution 0/1 mask, whole tumour
    <root>/Training_phase_2/...                             # later phases: same naming

Every slide is a "patient" of the spine's data module (the split assigns slides, so no slide has patches
in two subsets): ``split=holdout`` is the paper's "30 out of 50 [slides] are randomly selected for training
purpose and the rest 20 are used for testing", ``split=patient_kfold`` gives slide-level folds. Each slide's
patch coordinates are sampled once (:func:`histo_lightning.data.wsi.load_or_sample_patches`: tissue by
Otsu, a grid of 224×224 patches, labels from the mask by ``sampling.label_rule``, ``n_per_slide`` drawn
balanced per class) and cached with everything that produced them; the table handed to the spine has one
row per patch (``path`` = the slide, ``x``, ``y``), read by :class:`~histo_lightning.data.wsi.SlidePatchSource`
in the DataLoader workers with one openslide handle per slide per worker.

A slide that openslide cannot open or decode, or a missing/broken mask, stops the run naming the file;
with ``on_corrupt=skip`` the slide is left out and listed at the end of the run (``skipped_images.txt``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from histo_lightning.data.image_datamodule import ImageTableDataModule
from histo_lightning.data.wsi import (
    PatchSpec,
    SlideHandles,
    SlidePatchSource,
    load_or_sample_patches,
)
from histo_lightning.errors import ConfigError, CorruptImageError, DatasetLayoutError
from histo_lightning.stores.image_store import BadImage
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")
MASK_KINDS = ("viable", "whole")
_MASK_NAME = re.compile(r"_(viable|whole)$", re.IGNORECASE)
_PHASE_DIR = re.compile(r"^Training_phase_\d+$")


def phase_dir(phase: int) -> str:
    """The folder of a release phase: ``Training_phase_<k>``."""
    return f"Training_phase_{phase}"


def mask_name(slide_id: str, kind: str) -> str:
    """The file name of a slide's mask: ``<slide id>_viable.tif`` or ``<slide id>_whole.tif``."""
    return f"{slide_id}_{kind}.tif"


def scan_paip(root: str | Path, mask_kind: str = "viable") -> pd.DataFrame:
    """Every slide under ``root`` with its masks: columns ``slide_id, path, mask, whole_mask, phase, case``.

    Raises :class:`DatasetLayoutError` when ``root`` holds no ``Training_phase_*/<case>/<id>.svs`` slide,
    and when a slide has no ``<id>_<mask_kind>.tif`` next to it.
    """
    if mask_kind not in MASK_KINDS:
        raise ConfigError(f"dataset.mask={mask_kind!r}: expected one of {', '.join(MASK_KINDS)}")
    root = Path(root)
    expected = (
        "<root>/Training_phase_<k>/<case>/<slide id>.svs with <slide id>_viable.tif beside it"
    )
    if not root.is_dir():
        raise DatasetLayoutError(f"PAIP 2019 root {root} does not exist; expected {expected}")
    rows = []
    for phase in sorted(p for p in root.iterdir() if p.is_dir() and _PHASE_DIR.match(p.name)):
        for path in sorted(phase.glob("*/*")):
            if path.suffix.lower() not in SLIDE_SUFFIXES or _MASK_NAME.search(path.stem):
                continue
            masks = {kind: path.with_name(mask_name(path.stem, kind)) for kind in MASK_KINDS}
            if not masks[mask_kind].is_file():
                raise DatasetLayoutError(
                    f"slide {path} has no {masks[mask_kind].name} beside it (dataset.mask={mask_kind})"
                )
            rows.append(
                {
                    "slide_id": path.stem,
                    "path": str(path),
                    "mask": str(masks[mask_kind]),
                    "whole_mask": str(masks["whole"]) if masks["whole"].is_file() else None,
                    "phase": phase.name,
                    "case": path.parent.name,
                }
            )
    if not rows:
        raise DatasetLayoutError(f"no PAIP 2019 slides under {root}; expected {expected}")
    table = pd.DataFrame(rows)
    duplicated = table[table["slide_id"].duplicated()]["slide_id"].tolist()
    if duplicated:
        raise DatasetLayoutError(f"slide id(s) {duplicated[:3]} appear more than once under {root}")
    return table


class PaipDataModule(ImageTableDataModule):
    """PAIP 2019 patches, tumour vs normal (SMSE §IV-D, Tables IX–X).

    Args:
        mask: which mask labels patches: ``viable`` (the paper: "within the viable tumour area") or
            ``whole``.
        sampling: :class:`~histo_lightning.data.wsi.PatchSpec` fields (patch size, level, patches per slide,
            balance, label rule for border patches, tissue threshold, seed).
        verify_patches: patches of each slide read back when its index is built (−1: all), so an
            undecodable slide is found before training.
        max_open_slides: openslide handles each process keeps open.
        **kwargs: :class:`~histo_lightning.data.image_datamodule.ImageTableDataModule` arguments; ``root`` is the folder
            holding ``Training_phase_*``, or ``synthetic`` (:class:`~histo_lightning.data.synthetic.paip.
            SyntheticPaipConfig` fields) generates a synthetic PAIP tree once under ``synthetic_dir``.
            ``image_cache`` must be ``none``: patches are read from the slides, never copied.
    """

    dataset_name = "paip2019"
    display_name = "PAIP 2019"
    root_hint = "the folder holding Training_phase_1/"
    synthetic_module = "histo_lightning.data.synthetic.paip"
    file_noun = "slide"
    sample_columns = ("x", "y")

    def __init__(
        self,
        mask: str = "viable",
        sampling: Mapping[str, Any] | None = None,
        verify_patches: int = 16,
        max_open_slides: int = 64,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("image_cache", "none")
        if kwargs["image_cache"] != "none":
            raise ConfigError(
                "dataset.image_cache must be none for PAIP: patches are read from the slides on the fly"
            )
        super().__init__(**kwargs)
        if mask not in MASK_KINDS:
            raise ConfigError(f"dataset.mask={mask!r}: expected one of {', '.join(MASK_KINDS)}")
        self.mask_kind = mask
        self.spec = PatchSpec(**dict(sampling or {}))
        self.verify_patches = int(verify_patches)
        self.max_open_slides = int(max_open_slides)

    def _index_slide(self, slide: pd.Series) -> pd.DataFrame | BadImage:
        try:
            patches = load_or_sample_patches(
                slide["path"],
                slide["mask"],
                self.root,
                self.cache_dir / "patch_index" / self.name,
                self.spec,
                self.verify_patches,
            )
        except CorruptImageError as err:
            return BadImage(slide["path"], str(err))
        patches = patches.assign(path=slide["path"], patient=slide["slide_id"], group=0)
        return patches

    def load_table(self) -> pd.DataFrame:
        slides = scan_paip(self.root, self.mask_kind)
        workers = max(1, min(self.prepare_workers, len(slides)))
        # threads, not processes (openslide and OpenCV release the GIL; see the README's pitfalls)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(self._index_slide, (row for _, row in slides.iterrows())))
        self.apply_corrupt_policy([r for r in results if isinstance(r, BadImage)])
        parts = [r for r in results if isinstance(r, pd.DataFrame) and len(r)]
        empty = [
            s for s, r in zip(slides["path"], results) if isinstance(r, pd.DataFrame) and not len(r)
        ]
        for path in empty:
            log.warning(f"slide {path}: no patch passed the tissue and label rules; left out")
        if not parts:
            raise DatasetLayoutError(
                f"no patches could be sampled from the slides under {self.root}"
            )
        table = pd.concat(parts, ignore_index=True)
        counts = table.groupby("label").size().to_dict()
        log.info(
            f"{self.name}: {len(table)} patches from {len(parts)} slides "
            f"(normal {counts.get(0, 0)}, tumour {counts.get(1, 0)}; "
            f"{self.spec.patch_size}px at level {self.spec.level}, rule {self.spec.label_rule})"
        )
        return table[["path", "label", "patient", "group", "x", "y", "tumour_fraction", "tissue"]]

    def _open_images(self, table: pd.DataFrame) -> SlidePatchSource:
        return SlidePatchSource(
            table["path"].tolist(),
            table["x"].to_numpy(),
            table["y"].to_numpy(),
            self.spec.level,
            self.spec.patch_size,
            SlideHandles(self.max_open_slides),
        )

    def sample_settings(self) -> dict[str, Any]:
        return {**super().sample_settings(), "mask": self.mask_kind, "sampling": self.spec.__dict__}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["sampling"] = self.spec.__dict__
        info["mask"] = self.mask_kind
        table = self.table
        if table is not None:
            info["n_slides"] = int(table["patient"].nunique())
            info["patches_per_class"] = {
                self.class_names[int(k)]: int(v) for k, v in table.groupby("label").size().items()
            }
        return info


__all__ = ["MASK_KINDS", "PaipDataModule", "mask_name", "phase_dir", "scan_paip"]
