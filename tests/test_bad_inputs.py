"""The bad-input catalogue: every case run through ``run.py`` as a user would (a subprocess).

Each bad input must give exactly one ``error: ...`` line that names the file or key and what was
expected, a non-zero exit (2), no traceback, and no half-written run folder: a run that failed before
it started leaves no folder, one that failed later leaves its folder marked by ``failed.json`` (and no
``metrics.json``). An empty mitosis CSV is good input (zero mitoses) and must run.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histo_lightning.data.synthetic.breakhis import (
    SyntheticBreakHisConfig,
    ensure_synthetic_breakhis,
)
from histo_lightning.data.synthetic.paip import SyntheticPaipConfig, ensure_synthetic_paip
from histo_lightning.data.synthetic.tupac16 import SyntheticTupacConfig, ensure_synthetic_tupac16
from histo_lightning.utils.failures import FAILED_FILE
from tests.conftest import run_cli

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
SMOKE = ["debug=smoke", *QUIET]
BREAKHIS = ["experiment=breakhis_baseline", "dataset=breakhis", *SMOKE]
CHSNET = [
    "experiment=chsnet",
    "dataset=tupac16",
    "dataset.prepare_workers=1",
    "model.net.width=0.0625",
    "model.detection.batch_size=128",
    *SMOKE,
]
PAIP = [
    "experiment=smse_paip",
    "dataset=paip2019",
    "dataset.sampling.patch_size=96",
    "dataset.sampling.stride=48",
    "dataset.sampling.n_per_slide=24",
    "dataset.sampling.tissue_downsample=16",
    "model.net.input_size=[96,96]",
    *SMOKE,
]


@dataclass
class Trees:
    """Tiny synthetic datasets in their real layouts (generated once per session) and a scratch folder."""

    breakhis: Path
    tupac: Path
    paip: Path
    tmp: Path

    def copy(self, name: str) -> Path:
        target = self.tmp / name
        shutil.copytree(getattr(self, name), target)
        return target


@pytest.fixture(scope="session")
def synthetic_trees(data_dir: Path) -> dict[str, Path]:
    breakhis = SyntheticBreakHisConfig(
        n_benign_patients=3, n_malignant_patients=5, images_per_magnification=2
    )
    paip = SyntheticPaipConfig(n_slides=4, height=1024, width=1024)
    return {
        "breakhis": ensure_synthetic_breakhis(data_dir, breakhis, progress=False),
        "tupac": ensure_synthetic_tupac16(
            data_dir, SyntheticTupacConfig.from_preset("tiny"), progress=False
        ),
        "paip": ensure_synthetic_paip(data_dir, paip, progress=False),
    }


@pytest.fixture
def trees(synthetic_trees: dict[str, Path], tmp_path: Path) -> Trees:
    return Trees(**synthetic_trees, tmp=tmp_path)


# ---- the bad inputs ---------------------------------------------------------------------------------
def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def _breakhis_image(
    trees: Trees, convert: Callable[[np.ndarray], Image.Image]
) -> tuple[list, list]:
    root = trees.copy("breakhis")
    image = _first(root, "*-40-001.png")
    convert(np.asarray(Image.open(image).convert("RGB"))).save(image)
    return [*BREAKHIS, f"dataset.root={root}"], [str(image)]


def missing_root(trees: Trees) -> tuple[list, list]:
    return [*CHSNET, "dataset.root=/does/not/exist"], [
        "/does/not/exist (dataset.root) does not exist",
        "mitoses_image_data",
    ]


def wrong_layout(trees: Trees) -> tuple[list, list]:
    root = trees.tmp / "downloads"
    (root / "images").mkdir(parents=True)
    shutil.copy(_first(trees.tupac, "*.tif"), root / "images" / "01.tif")
    return [*CHSNET, f"dataset.root={root}"], [str(root), "has no mitoses_image_data/"]


def corrupt_image(trees: Trees) -> tuple[list, list]:
    root = trees.copy("tupac")
    image = _first(root / "mitoses_image_data", "*.tif")
    image.write_bytes(image.read_bytes()[:300])
    return [*CHSNET, f"dataset.root={root}"], [f"unreadable HPF {image}", "dataset.on_corrupt"]


def _folds(trees: Trees, edit: Callable[[Path], None]) -> tuple[list, Path]:
    root = trees.copy("breakhis")
    edit(root / "Folds.csv")
    return [*BREAKHIS, f"dataset.root={root}", "split=official"], root / "Folds.csv"


def empty_folds_csv(trees: Trees) -> tuple[list, list]:
    args, folds = _folds(trees, lambda p: p.write_text(""))
    return args, [f"{folds} is empty", "fold,mag,grp,filename"]


def header_only_folds_csv(trees: Trees) -> tuple[list, list]:
    args, folds = _folds(trees, lambda p: p.write_text("fold,mag,grp,filename\n"))
    return args, [f"{folds} has no rows", "fold,mag,grp,filename"]


def folds_csv_naming_missing_files(trees: Trees) -> tuple[list, list]:
    def rename(path: Path) -> None:
        path.write_text(path.read_text().replace("-001.png", "-077.png"))

    args, folds = _folds(trees, rename)
    return args, [f"{folds} names", "-077.png", "not under"]


def fold_out_of_range(trees: Trees) -> tuple[list, list]:
    return [*CHSNET, f"dataset.root={trees.tupac}", "fold=9"], ["fold=9 is out of range"]


def unknown_experiment(trees: Trees) -> tuple[list, list]:
    return ["experiment=chsnet_dmeo"], ["experiment=chsnet_dmeo: no such option", "chsnet_demo"]


def misspelt_override_key(trees: Trees) -> tuple[list, list]:
    return [*CHSNET, "trainer.max_epoch=3"], [
        "trainer.max_epoch: no such key",
        "did you mean trainer.max_epochs?",
    ]


def grayscale_image(trees: Trees) -> tuple[list, list]:
    args, named = _breakhis_image(trees, lambda rgb: Image.fromarray(rgb).convert("L"))
    return args, [*named, "grayscale (mode L)", "expected an 8-bit RGB"]


def rgba_image_with_transparency(trees: Trees) -> tuple[list, list]:
    def rgba(rgb: np.ndarray) -> Image.Image:
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:10, :10] = 0
        return Image.fromarray(np.dstack([rgb, alpha]))

    args, named = _breakhis_image(trees, rgba)
    return args, [*named, "RGBA with transparent pixels"]


def sixteen_bit_image(trees: Trees) -> tuple[list, list]:
    root = trees.copy("breakhis")
    image = _first(root, "*-40-001.png")
    rgb = np.asarray(Image.open(image).convert("RGB")).astype(np.uint16) * 257
    import cv2

    cv2.imwrite(str(image), rgb[..., ::-1])  # 16-bit PNG (Pillow cannot write 16-bit RGB)
    return [*BREAKHIS, f"dataset.root={root}"], [str(image), "16 bits per channel"]


def truncated_slide(trees: Trees) -> tuple[list, list]:
    root = trees.copy("paip")
    slide = _first(root, "*.svs")
    slide.write_bytes(slide.read_bytes()[: slide.stat().st_size // 3])
    return [*PAIP, f"dataset.root={root}"], [str(slide), "dataset.on_corrupt"]


def nan_loss(trees: Trees) -> tuple[list, list]:
    return [*BREAKHIS, f"dataset.root={trees.breakhis}", "loss=focal", "loss.alpha=nan"], [
        "training loss is nan in stage fit, epoch 0, batch 0",
        "callbacks.nonfinite_loss.patience=1",
    ]


def missing_checkpoint(trees: Trees) -> tuple[list, list]:
    missing = trees.tmp / "nope.ckpt"
    return [*BREAKHIS, f"dataset.root={trees.breakhis}", "train=false", f"ckpt_path={missing}"], [
        f"ckpt_path={missing} does not exist"
    ]


def checkpoint_that_needs_pickle(trees: Trees) -> tuple[list, list]:
    path = trees.tmp / "foreign.ckpt"
    torch.save({"state_dict": {}, "optimizer": functools.partial(torch.optim.SGD, lr=0.1)}, path)
    return [*BREAKHIS, f"dataset.root={trees.breakhis}", "train=false", f"ckpt_path={path}"], [
        f"ckpt_path={path} needs pickle",
        "functools.partial",
    ]


def batch_of_one_with_batchnorm(trees: Trees) -> tuple[list, list]:
    return [*CHSNET, f"dataset.root={trees.tupac}", "dataset.batch_size=1"], [
        "dataset.batch_size=1",
        "BatchNorm",
    ]


CATALOGUE = [
    missing_root,
    wrong_layout,
    corrupt_image,
    empty_folds_csv,
    header_only_folds_csv,
    folds_csv_naming_missing_files,
    fold_out_of_range,
    unknown_experiment,
    misspelt_override_key,
    grayscale_image,
    rgba_image_with_transparency,
    sixteen_bit_image,
    truncated_slide,
    nan_loss,
    missing_checkpoint,
    checkpoint_that_needs_pickle,
    batch_of_one_with_batchnorm,
]


@dataclass
class Outcome:
    returncode: int
    stderr: str
    logs: Path
    error_lines: list[str] = field(default_factory=list)


def _run(args: list[str], tmp: Path) -> Outcome:
    logs = tmp / "logs"
    result = run_cli([*args, f"paths.log_dir={logs}", f"paths.data_dir={tmp / 'data'}"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return Outcome(result.returncode, result.stderr, logs, errors)


#: one case per kind of check runs in the fast suite (command line, data layout, image, training,
#: checkpoint); every case runs in ``make test-all`` (each is a run.py subprocess, ~15 s here)
FAST_CASES = {
    missing_root,
    misspelt_override_key,
    corrupt_image,
    nan_loss,
    checkpoint_that_needs_pickle,
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.__name__, marks=() if c in FAST_CASES else pytest.mark.slow)
        for c in CATALOGUE
    ],
)
def test_bad_input_is_one_line_naming_what_was_expected(case, trees: Trees) -> None:
    args, expected = case(trees)
    out = _run(args, trees.tmp)
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(out.error_lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for text in expected:
        assert text in out.error_lines[0], out.error_lines[0]
    # no half-written run folder: none at all, or one marked as failed
    for run in (p for p in out.logs.glob("*/runs/*") if p.is_dir()):
        assert (run / FAILED_FILE).is_file() and not (run / "metrics.json").exists(), run


@pytest.mark.slow
def test_an_empty_mitosis_csv_is_zero_mitoses(trees: Trees) -> None:
    root = trees.copy("tupac")
    labels = sorted((root / "mitoses_ground_truth").rglob("*.csv"))
    with_points = next(p for p in labels if p.read_text().strip())
    with_points.write_text("")  # an HPF whose CSV is empty: no mitosis, like a missing CSV
    out = _run([*CHSNET, f"dataset.root={root}", "run_id=empty_csv"], trees.tmp)
    assert out.returncode == 0 and not out.error_lines, out.stderr[-3000:]
    run = out.logs / "chsnet" / "runs" / "empty_csv"
    assert (run / "metrics.json").is_file() and not (run / FAILED_FILE).exists()
