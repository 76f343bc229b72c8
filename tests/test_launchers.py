"""Sweeps through Hydra's launcher and sweeper plugins: joblib, submitit (local), Optuna."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_cli


def _sweep_dir(logs: Path) -> Path:
    (sweep,) = (logs / "breakhis_baseline" / "multiruns").iterdir()
    return sweep


def _args(data_dir: Path, logs: Path) -> list[str]:
    return [
        "-m",
        "experiment=breakhis_baseline",
        *SMOKE,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={logs}",
    ]


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param(
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            marks=pytest.mark.slow,
            id="joblib",
        ),
        pytest.param(
            ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], id="submitit_local"
        ),
    ],
)
def test_launcher_runs_folds_and_summarises(
    launcher: list[str], data_dir: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_cli([*_args(data_dir, logs), *launcher, "fold=1,2"])
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(logs)
    for job in ("0_fold1", "1_fold2"):
        assert "test/acc" in json.loads((sweep / job / "metrics.json").read_text())
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["n"] == 2 and "test/rr" in summary["mean"]


def test_optuna_search_returns_the_optimised_metric(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_cli(
        [
            *_args(data_dir, logs)[1:],
            "hparams_search=breakhis_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(logs)
    optimization = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in optimization and "model.optimizer.lr" in optimization
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert len(summary["groups"]) == 2  # one group per trial, each with its learning rate
    assert all("model.optimizer.lr" in g["overrides"] for g in summary["groups"])
