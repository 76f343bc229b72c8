"""A small BACH tree (real layout, small H&E-like TIFFs) and configs of the rakhlin pipeline on it.

The images are 160×120 px (80×60 in the half-scale cache) so a whole pipeline runs in seconds: the classes
differ by the texture scale of their hematoxylin (fine for carcinomas, coarse otherwise), each image has its
own stain. The synthetic BACH generator itself (full 2048×1536 images) is tested in test_bach_synthetic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import DictConfig, open_dict

from histo_lightning.data.datasets.bach import CLASS_NAMES, CLASS_PREFIXES, GROUND_TRUTH_FILE
from histo_lightning.data.synthetic.he_render import (
    render_optical_density,
    sample_stain_style,
    smooth_noise,
)

SIZE = (120, 160)  # (height, width)
TEXTURE_PX = (9.0, 5.0, 2.5, 1.2)  # per class: hematoxylin texture scale


def he_image(rng: np.random.Generator, label: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    hema = np.clip(0.35 + 0.35 * smooth_noise(rng, size, TEXTURE_PX[label]), 0.0, None)
    eosin = np.clip(0.4 + 0.2 * smooth_noise(rng, size, 8.0), 0.0, None)
    rgb = render_optical_density(hema, eosin, sample_stain_style(rng, gain_sigma=0.2))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_small_bach(root: Path, per_class: int = 5, n_test: int = 3, seed: int = 0) -> Path:
    """BACH's layout with small H&E-like TIFFs: ``per_class`` per class, ``n_test`` unlabelled."""
    rng = np.random.default_rng(seed)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    lines = []
    for label, (name, prefix) in enumerate(zip(CLASS_NAMES, CLASS_PREFIXES)):
        (photos / name).mkdir(parents=True)
        for i in range(1, per_class + 1):
            file = f"{prefix}{i:03d}.tif"
            assert cv2.imwrite(str(photos / name / file), he_image(rng, label)[..., ::-1])
            lines.append(f"{file},{name}")
    (photos / GROUND_TRUTH_FILE).write_text("\n".join(sorted(lines)) + "\n")
    test = root / "ICIAR2018_BACH_Challenge_TestDataset" / "Photos"
    test.mkdir(parents=True)
    for i in range(n_test):
        assert cv2.imwrite(str(test / f"test{i}.tif"), he_image(rng, i % 4)[..., ::-1])
    return root


@pytest.fixture(scope="session")
def small_bach(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_bach(tmp_path_factory.mktemp("small_bach"))


#: the rakhlin settings at test size: 3 augmentations x 2 crops, 2 seeds of 5 rounds, half-scale 80x60 images
SMALL_SETTINGS = [
    "dataset=bach",
    "dataset.preprocess.scale=0.5",
    "split.n_folds=5",
    "method.views.n_augmentations=3",
    "method.views.n_crops=2",
    "method.lightgbm.n_seeds=2",
    "method.lightgbm.num_rounds=5",
    "method.n_jobs=1",
    "method.flush_every=2",
    "trainer=cpu",
    "logger=csv",
]
#: the demo pipeline at test size: its 2 encoders with random weights, crops of 24 and 40 px
SMALL_RAKHLIN = [
    "experiment=rakhlin_demo",
    *SMALL_SETTINGS,
    "pipeline.encoders.mobilenet.name=mobilenetv3_small_050",
    "pipeline.stages.mobilenet_200.module.crop_size=24",
    "pipeline.stages.mobilenet_325.module.crop_size=40",
    "pipeline.stages.lcnet_200.module.crop_size=24",
    "pipeline.stages.lcnet_325.module.crop_size=40",
]


@pytest.fixture
def rakhlin_cfg(make_cfg: Callable[..., DictConfig], small_bach: Path) -> Callable[..., DictConfig]:
    """``rakhlin_cfg(*overrides, name="run", experiment="rakhlin_demo")``: a rakhlin experiment at test size
    on :func:`small_bach` (the demo's pipeline with :data:`SMALL_RAKHLIN`)."""

    def make(*overrides: str, name: str = "run", experiment: str = "rakhlin_demo") -> DictConfig:
        base = (
            SMALL_RAKHLIN
            if experiment == "rakhlin_demo"
            else [f"experiment={experiment}", *SMALL_SETTINGS]
        )
        cfg = make_cfg([*base, f"dataset.root={small_bach}", *overrides], name)
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = False
            cfg.trainer.enable_model_summary = False
        return cfg

    return make
