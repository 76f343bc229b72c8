"""Shared fixtures: the real Hydra config composed in-process, on a tiny synthetic BreakHis.

The tiny dataset is generated once per test session (under a session temp dir) and reused by every test;
runs write into per-test temp dirs. Nothing here touches the network: W&B is pointed at an empty HOME.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import histo_lightning.utils.resolvers  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# 3 benign + 5 malignant patients, 2 images per magnification: 64 images, generated in seconds
TINY_SYNTHETIC = [
    "dataset=breakhis_synthetic",
    "dataset.synthetic.n_benign_patients=3",
    "dataset.synthetic.n_malignant_patients=5",
    "dataset.synthetic.images_per_magnification=2",
]
SMOKE = [
    *TINY_SYNTHETIC,
    "debug=smoke",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
]


@pytest.fixture(autouse=True)
def _offline_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No W&B credentials and no W&B switch from the developer's machine leak into the tests."""
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_DIR", str(home))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's synthetic datasets, caches and split files live."""
    return tmp_path_factory.mktemp("data")


def compose_config(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``run.py`` would compose it, ready for ``run_pipeline()``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"paths.data_dir={data_dir}",
                f"paths.log_dir={output_dir.parent}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path) -> Iterator[Callable[..., DictConfig]]:
    """``make_cfg(overrides, name="run")`` composes a config whose run directory is ``tmp_path/name``."""

    def make(overrides: list[str], name: str = "run") -> DictConfig:
        return compose_config(overrides, tmp_path / name, data_dir)

    yield make
    GlobalHydra.instance().clear()


def run_cli(
    args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python run.py *args`` in a subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
