"""The bad-input catalogue: every case run through ``run.py`` as a user would (a subprocess).

Each bad input must give exactly one ``error: ...`` line that names the file or key and what was
expected, a non-zero exit (2), no traceback, and no half-written run folder: a run that failed before
it started leaves no folder, one that failed later leaves its folder marked by ``failed.json`` (and no
``metrics.json``). An empty mitosis CSV is good input (zero mitoses) and must run.

Checks that need no data run in-process too (cheap, in the fast suite): every method choice and stage
reference of a composed config (:func:`histo_lightning.utils.choices.check_config`, which the stage
runner calls before any data is read) and the folders ``run.py`` checks before Hydra starts
(:func:`histo_lightning.cli.explain`).
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

from histo_lightning.cli import explain
from histo_lightning.data.synthetic.breakhis import (
    SyntheticBreakHisConfig,
    ensure_synthetic_breakhis,
)
from histo_lightning.data.synthetic.paip import SyntheticPaipConfig, ensure_synthetic_paip
from histo_lightning.data.synthetic.tupac16 import SyntheticTupacConfig, ensure_synthetic_tupac16
from histo_lightning.errors import ConfigError
from histo_lightning.utils.failures import FAILED_FILE, unwrap_user_error
from tests.bach.conftest import SMALL_RAKHLIN, write_small_bach
from tests.conftest import run_cli

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
SMOKE = ["debug=smoke", *QUIET]
BREAKHIS = ["experiment=breakhis_baseline", "dataset=breakhis", *SMOKE]
CHSNET = [
    "experiment=chsnet",
    "dataset=tupac16",
    "dataset.prepare_workers=1",
    "model.net.width=0.0625",
    "method.detection.batch_size=128",
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


MIL_HNM = ["experiment=mil_hnm", "dataset=colon_synthetic", *SMOKE]
RAKHLIN = [*SMALL_RAKHLIN, "callbacks=none"]


@dataclass
class Trees:
    """Tiny synthetic datasets in their real layouts (generated once per session) and a scratch folder."""

    breakhis: Path
    tupac: Path
    paip: Path
    bach: Path
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
        "bach": write_small_bach(data_dir / "small_bach"),
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


def _bach_without_csv(trees: Trees) -> tuple[Path, Path]:
    root = trees.copy("bach")
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    (photos / "microscopy_ground_truth.csv").unlink()  # nothing to compare the folders with
    return root, photos


def bach_empty_class_folder(trees: Trees) -> tuple[list, list]:
    root, photos = _bach_without_csv(trees)
    for image in (photos / "InSitu").iterdir():
        image.unlink()
    return [*RAKHLIN, f"dataset.root={root}"], [
        f"class folder {photos / 'InSitu'}/ holds no .tif images",
        "never leaves a class out",
    ]


def bach_image_of_another_size(trees: Trees) -> tuple[list, list]:
    root, photos = _bach_without_csv(trees)
    image = photos / "Benign" / "b002.tif"
    pixels = np.asarray(Image.open(image))
    Image.fromarray(pixels[:100, :150]).save(image)
    return [*RAKHLIN, f"dataset.root={root}"], [
        f"{image}: 150x100 pixels, expected 160x120 like the other"
    ]


def repeat_zero(trees: Trees) -> tuple[list, list]:
    return [*MIL_HNM, "repeat=0"], ["repeat=0: expected a positive integer"]


def unwritable_run_dir(trees: Trees) -> tuple[list, list]:
    blocker = trees.tmp / "a_file"
    blocker.write_text("not a folder")
    return [*BREAKHIS, f"hydra.run.dir={blocker}/run"], [
        f"hydra.run.dir={blocker}/run cannot be written: {blocker} is a file, not a folder"
    ]


def misspelt_method(trees: Trees) -> tuple[list, list]:
    # refused before any stage runs (it used to fail after stage 1 trained and mined)
    return [*MIL_HNM, "method.hnm.method=XB"], [
        "method.hnm.method='XB': expected one of SB, MB, FMB"
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
    bach_empty_class_folder,
    bach_image_of_another_size,
    repeat_zero,
    unwritable_run_dir,
    misspelt_method,
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


# ---- checks that need no data, in-process -------------------------------------------------------------
MIL = ["experiment=mil_hnm", "dataset=colon_synthetic"]
#: (overrides, the error line): every declared method choice, stage reference and job key
CONFIG_CASES = {
    "hnm_method": (
        [*MIL, "method.hnm.method=XB"],
        "method.hnm.method='XB': expected one of SB, MB, FMB",
    ),
    "hnm_allocation": (
        [*MIL, "method.hnm.allocation=stratified"],
        "method.hnm.allocation='stratified': expected one of proportional, multinomial",
    ),
    "hnm_n_bags": (
        [*MIL, "method.hnm.n_bags=0"],
        "method.hnm.n_bags=0: expected a number of bags (at least 1) or 'false_positives'",
    ),
    "hnm_init_from": (
        [*MIL, "method.hnm.init_from=stage1"],
        "method.hnm.init_from='stage1': expected an earlier enabled fit stage of this pipeline (stage "
        "'retrain'), one of ['train']",
    ),
    "hnm_clusters": (
        [*MIL, "method.hnm.clusters=abc"],
        "method.hnm.clusters='abc': expected an integer of at least 1",
    ),
    "mining_threshold": (
        ["experiment=chsnet_demo", "method.mining.threshold=2"],
        "method.mining.threshold=2: expected a probability in [0, 1]",
    ),
    "mil_pooling": (
        [*MIL, "model.net.pooling=attention"],
        "model.net.pooling='attention': expected one of tanh, gated, softsign, mean, max",
    ),
    "mil_encoder": (
        ["experiment=mil_ilse", "method.protocol.encoder.name=ilse"],
        "method.protocol.encoder.name='ilse': expected one of ilse_cnn, lenet, timm, identity",
    ),
    "monitor_mode": (
        ["experiment=mil_ilse", "model.monitor_mode=lowest"],
        "model.monitor_mode='lowest': expected one of max, min",
    ),
    "encoder_take": (
        [*MIL, "encoder.take=last"],
        "encoder.take='last': expected one of pooled, stages, cls_mean",
    ),
    "detection_match_rule": (
        ["experiment=chsnet_demo", "method.detection.match_rule=nearest"],
        "method.detection.match_rule='nearest': expected one of one_to_one, amida13",
    ),
    "chsnet_input_views": (
        ["experiment=chsnet_demo", "model.net.input_views=both"],
        "model.net.input_views='both': expected one of stack, siamese",
    ),
    "carcinoma_rule": (
        ["experiment=rakhlin_demo", "method.carcinoma_rule=mean"],
        "method.carcinoma_rule='mean': expected one of max, sum",
    ),
    "contrastive_form": (
        ["experiment=smse_breakhis_pair", "embedding_loss.form=cosine"],
        "embedding_loss.form='cosine': expected one of paper, hadsell",
    ),
    "dataset_mismatch": (
        ["experiment=smse_paip", "dataset=colon"],
        "model.net.num_classes: it refers to dataset.num_classes, which is not in the composed config "
        "(dataset=colon has no such key); expected config groups that fit together (e.g. a "
        "dataset this experiment supports)",
    ),
    "mil_protocol_missing": (
        ["experiment=mil_hnm", "dataset=bach_synthetic"],
        "dataset=bach_synthetic: Li et al.'s MIL experiments have no protocol for it (method.protocol "
        "comes from conf/protocol/li_mil/bach_synthetic.yaml; there are: colon, colon_synthetic, "
        "digits_bags, mnist_bags, ucsb, ucsb_synthetic); write that file or choose one of those datasets",
    ),
    "batch_size": (
        ["experiment=breakhis_baseline", "dataset.batch_size=0"],
        "dataset.batch_size=0: expected an integer of at least 1",
    ),
    "num_workers": (
        ["experiment=breakhis_baseline", "dataset.num_workers=-1"],
        "dataset.num_workers=-1: expected an integer of at least 0",
    ),
    "seed": (
        ["experiment=breakhis_baseline", "seed=abc"],
        "seed='abc': expected an integer (or null: no seeding)",
    ),
    "repeat": (
        ["experiment=chsnet_demo", "repeat=0"],
        "repeat=0: expected a positive integer (the repetition of the protocol, 1 = the first)",
    ),
    "fold": (
        ["experiment=breakhis_baseline", "fold=0"],
        "fold=0: expected a positive integer (the test fold, 1-based)",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_every_method_choice_is_checked_before_any_stage_runs(case: str, make_cfg) -> None:
    from histo_lightning.pipelines.runner import PipelineRunner

    overrides, message = CONFIG_CASES[case]
    runner = PipelineRunner(make_cfg(overrides))
    with pytest.raises(ConfigError) as caught:
        runner.check()  # what run.py does before reading any data
    assert str(caught.value) == message
    assert runner.datamodule is None and not runner.results  # nothing was read or run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_is_refused_up_front(make_cfg) -> None:
    from histo_lightning.pipelines.runner import PipelineRunner

    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu: no GPU is visible"):
        PipelineRunner(make_cfg(["experiment=breakhis_baseline", "trainer=gpu"])).check()


def test_the_defaults_and_other_spellings_pass(make_cfg) -> None:
    from histo_lightning.pipelines.runner import PipelineRunner

    for overrides in (
        MIL,
        [
            *MIL,
            "method.hnm.method=fmb",
            "method.hnm.n_bags=4",
            "method.hnm.init_from=train",
            "repeat=5",
        ],
        ["experiment=chsnet_demo"],
        ["experiment=rakhlin_demo"],
        ["experiment=smse_breakhis_pair"],
        # a test stage may name a disabled fit (it then evaluates ckpt_path)
        ["experiment=breakhis_baseline", "train=false"],
    ):
        PipelineRunner(make_cfg(overrides)).check()


def test_unwritable_folders_are_named_before_hydra_starts(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert explain(["experiment=breakhis_baseline", f"hydra.run.dir={blocker}/run"]) == (
        f"hydra.run.dir={blocker}/run cannot be written: {blocker} is a file, not a folder; "
        "expected a folder this user can create"
    )
    sweep = explain(["experiment=breakhis_baseline", f"paths.log_dir={blocker}/logs"], True)
    assert sweep is not None and sweep.startswith(f"hydra.sweep.dir={blocker}/logs/")
    cache = explain(["experiment=breakhis_baseline", f"paths.data_dir={blocker}"])
    assert cache == (
        f"paths.cache_dir={blocker}/cache cannot be written: {blocker} is a file, not a folder; "
        "expected a folder this user can create"
    )
    assert explain(["experiment=breakhis_baseline", f"paths.log_dir={tmp_path}/logs"]) is None
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]  # the write check leaves nothing


def test_a_user_error_raised_in_a_resolver_is_reported_as_itself() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"repeat": 0, "seed": "${hl.repeat_seed:42,${repeat}}"})
    with pytest.raises(Exception) as caught:
        _ = cfg.seed
    assert not isinstance(caught.value, ConfigError)  # OmegaConf wraps it
    unwrapped = unwrap_user_error(caught.value)
    assert isinstance(unwrapped, ConfigError) and str(unwrapped).startswith("repeat=0 must be")
    other = ValueError("not a user error")
    assert unwrap_user_error(other) is other
