"""A sweep survives one bad job: the others run, the bad one writes failed.json, the sweep exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histo_lightning.utils.failures import read_failures
from tests.conftest import SMOKE, run_cli


def _sweep_dir(logs: Path, task: str) -> Path:
    (sweep,) = (logs / task / "multiruns").iterdir()
    return sweep


def test_a_user_error_and_a_crash_do_not_stop_the_other_jobs(
    data_dir: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    # 4 jobs: (fold 1, 1 epoch) is fine; fold 9 is out of range (a user error, 2 jobs); max_epochs=-7
    # is refused by Lightning's Trainer (a crash inside the job, not one of our errors)
    result = run_cli(
        [
            "-m",
            "experiment=breakhis_baseline",
            *SMOKE,
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={logs}",
            "fold=1,9",
            "trainer.max_epochs=1,-7",
        ]
    )
    assert result.returncode == 1, result.stderr[-3000:]
    sweep = _sweep_dir(logs, "breakhis_baseline")
    jobs = {p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()}
    assert jobs == {"0_fold1", "1_fold1", "2_fold9", "3_fold9"}
    failures = read_failures(sweep)
    assert set(failures) == {"1_fold1", "2_fold9", "3_fold9"}
    for job, record in failures.items():
        assert set(record) == {"error", "type", "traceback_file"}
        assert "\n" not in record["error"]
        assert "Traceback" in Path(record["traceback_file"]).read_text()
        assert not (sweep / job / "metrics.json").exists()
    assert failures["2_fold9"]["type"] == "ConfigError"
    assert failures["2_fold9"]["error"].startswith("fold=9 is out of range")
    assert (
        failures["1_fold1"]["type"] != "ConfigError"
        and "max_epochs" in failures["1_fold1"]["error"]
    )
    assert (sweep / "0_fold1" / "metrics.json").is_file()
    # the console: one error line per failed job, a summary at the end, no traceback
    assert "Traceback" not in result.stderr
    job_lines = [line for line in result.stderr.splitlines() if "the others go on" in line]
    assert len(job_lines) == 3 and all(line.startswith("error: ") for line in job_lines)
    assert "error: 3 of 4 sweep jobs failed" in result.stderr
    assert json.loads((sweep / "cv_summary.json").read_text())["sweep_dir"] == str(sweep)


@pytest.mark.slow
def test_a_failing_optuna_trial_is_a_failed_trial_not_a_failed_study(
    data_dir: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_cli(
        [
            "-m",
            "experiment=breakhis_baseline",
            "hparams_search=breakhis_optuna",
            *SMOKE,
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={logs}",
            "hydra.sweeper.n_trials=2",
            # the grid sampler visits fold 1 and the out-of-range fold 9 once each
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.params={fold: 'choice(1, 9)', model.optimizer.lr: 'choice(0.001)',"
            " dataset.batch_size: 'choice(32)'}",
        ]
    )
    assert result.returncode == 1, result.stderr[-3000:]
    sweep = _sweep_dir(logs, "breakhis_baseline")
    failures = read_failures(sweep)
    assert len(failures) == 1 and next(iter(failures.values()))["error"].startswith("fold=9")
    assert "Traceback" not in result.stderr
    assert (sweep / "optimization_results.yaml").is_file()  # the study finished
