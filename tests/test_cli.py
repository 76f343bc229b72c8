"""``python run.py`` as users run it: one-line errors, sweeps with a CV summary, DDP, kill and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.reporting.cv_summary import main as cv_summary_main
from tests.conftest import ROOT, SMOKE, run_cli


def _common(data_dir: Path, log_dir: Path) -> list[str]:
    return [
        "experiment=breakhis_baseline",
        *SMOKE,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
    ]


def _error_lines(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line
    ]


def test_missing_dataset_root_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_cli(
        [
            "experiment=breakhis_baseline",
            "dataset.root=/does/not/exist",
            f"paths.log_dir={logs}",
            f"paths.data_dir={tmp_path}",
        ]
    )
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: dataset root /does/not/exist (dataset.root) does not exist")
    assert "BreaKHis_v1/histology_slides/breast" in errors[0]
    assert not list(logs.rglob("*.log")) and not list(logs.rglob("config.yaml"))  # run dir removed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fold=9", "error: fold=9 is out of range"),
        ("dataset.magnifications=[40,50]", "error: dataset.magnifications=[40, 50]"),
    ],
    ids=["fold", "constructor"],
)
def test_bad_values_are_one_line(
    override: str, message: str, data_dir: Path, tmp_path: Path
) -> None:
    result = run_cli([*_common(data_dir, tmp_path / "logs"), override])
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]


def test_full_error_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli(
        ["dataset=breakhis", "dataset.root=/does/not/exist", f"paths.log_dir={tmp_path}"],
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert (
        result.returncode != 0
        and "Traceback" in result.stderr
        and "DatasetLayoutError" in result.stderr
    )


def test_multirun_over_folds_ends_with_a_cv_summary(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_cli(["-m", *_common(data_dir, logs), "fold=1,2"])
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (logs / "breakhis_baseline" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_fold1", "1_fold2"]
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["n"] == 2 and [f["fold"] for f in summary["folds"]] == [1, 2]
    accs = [
        json.loads((sweep / d / "metrics.json").read_text())["test/acc"]
        for d in ("0_fold1", "1_fold2")
    ]
    assert summary["mean"]["test/acc"] == pytest.approx(sum(accs) / 2)
    assert summary["std"]["test/acc"] == pytest.approx(
        abs(accs[0] - accs[1]) / 2
    )  # population s.d.
    assert {"test/rr", "test/rr_40x"} <= set(summary["mean"]) and summary["synthetic_data"] is True
    markdown = (sweep / "cv_summary.md").read_text()
    assert (
        "| Fold | RR | ACC |" in markdown
        and "**Mean ± s.d.**" in markdown
        and "Synthetic data" in markdown
    )
    # the module command regenerates the same summary from the finished sweep
    (sweep / "cv_summary.json").unlink()
    (sweep / "cv_summary.md").unlink()
    cv_summary_main([str(sweep)])
    assert json.loads((sweep / "cv_summary.json").read_text())["mean"] == summary["mean"]


def test_ddp_cpu_trains_and_tests_with_two_processes(
    data_dir: Path, tmp_path: Path, make_cfg
) -> None:
    logs = tmp_path / "logs"
    result = run_cli(
        [
            *_common(data_dir, logs),
            "trainer=ddp_cpu",
            "run_id=ddp",
            "trainer.limit_test_batches=1.0",
            "trainer.limit_val_batches=1.0",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logs / "breakhis_baseline" / "runs" / "ddp"
    assert "train_ddp_process_1.log" in {
        p.name for p in run_dir.iterdir()
    }  # rank 1 ran in this job's dir
    assert not [p for p in (logs / "breakhis_baseline" / "runs").iterdir() if p.name != "ddp"]
    ddp_metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    # each rank tested a disjoint share; gathered predictions cover the whole test set exactly once
    predictions = (run_dir / "02_test" / "predictions.csv").read_text().splitlines()
    assert len(predictions) - 1 == info["data"]["n_images"]["test"]
    # the same checkpoint evaluated by one process gives the same numbers
    cfg = make_cfg(
        [
            *SMOKE,
            "experiment=breakhis_baseline",
            "trainer.limit_test_batches=1.0",
            "train=false",
            f"ckpt_path={info['stages']['test']['tested_checkpoint']}",
        ]
    )
    run_pipeline(cfg)
    single = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert ddp_metrics == pytest.approx(single, abs=1e-5)


@pytest.mark.slow  # a kill through run.py; resume is covered fast by test_train's interrupted fit
def test_killed_run_resumes_from_last_ckpt(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    args = [
        *_common(data_dir, logs),
        "run_id=killed",
        "trainer.max_epochs=8",
        "trainer.limit_train_batches=3",
    ]
    run_dir = logs / "breakhis_baseline" / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / "01_fit" / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.time() < deadline, (
                "run ended before writing last.ckpt"
            )
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    fit = json.loads((run_dir / "run_info.json").read_text())["stages"]["fit"]
    assert fit["status"] == "resumed"
    assert fit["resumed_from"].endswith("killed/01_fit/checkpoints/last.ckpt")
    assert fit["epochs"] == 8 and fit["global_step"] == 8 * 3
    assert "resuming from" in (run_dir / "run.log").read_text()


@pytest.mark.slow  # two DDP processes inside a sweep job; test_ddp_cpu_trains_and_tests_with_two_processes stays fast
def test_ddp_inside_a_multirun_job(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run_cli(["-m", *_common(data_dir, logs), "trainer=ddp_cpu", "fold=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (logs / "breakhis_baseline" / "multiruns").iterdir()
    job = sweep / "0_fold2"
    assert (job / "train_ddp_process_1.log").exists() and (job / "metrics.json").exists()
    # the extra rank neither started a sweep of its own nor a run folder elsewhere
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_fold2"]
    assert not (logs / "breakhis_baseline" / "runs").exists()


def test_help_prints_usage_experiments_by_paper_and_the_readme() -> None:
    result = run_cli(["--help"], timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: python run.py")
    assert f"Documentation: {ROOT / 'README.md'}" in out
    from histo_lightning.methods import method_packages

    experiments = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    listed = [
        line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()
    ]
    for package in method_packages():
        assert f"paper: {package.PAPER}" in out
        for name in package.EXPERIMENTS:
            assert name in listed
    assert experiments <= set(listed)  # every experiment file once, with its first comment line
    sweeps = {p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")}
    assert "smse_table10" in sweeps and sweeps <= set(listed)  # the sweeps and searches too
    assert (
        "chsnet_demo  " in out and "Hydra" in out and "_target_" not in out
    )  # not Hydra's config dump
    groups = " ".join(out.split("Config groups (conf/<group>/):", 1)[1].split())
    for group in (p.name for p in (ROOT / "conf").iterdir() if p.is_dir()):
        if group not in ("experiment", "hydra"):
            assert f" {group}," in f" {groups}" or f" {group} (" in f" {groups}", group


def test_moved_keys_fail_in_one_line_naming_the_new_key(tmp_path: Path) -> None:
    result = run_cli(["experiment=rakhlin_demo", "rakhlin.views.seed=3"], timeout=120)
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        "error: rakhlin.views.seed: moved to method.views.seed (a method's settings are one "
        "`method:` node per experiment, docs/architecture.md)"
    ]
    from histo_lightning.cli import explain

    assert explain(["experiment=chsnet_demo", "model.detection.stride=16"]) == (
        "model.detection.stride: moved to method.detection.stride (a method's settings are one "
        "`method:` node per experiment, docs/architecture.md)"
    )
    assert explain(["experiment=chsnet_demo", "model.detection_report.overlays=false"]) is None
    # Li et al.'s: mining (top-level hnm:) and the training protocol (in the dataset config) moved too
    assert explain(["experiment=mil_hnm", "hnm.k=2"]) == (
        "hnm.k: moved to method.hnm.k (a method's settings are one `method:` node per experiment, "
        "docs/architecture.md)"
    )
    assert explain(["experiment=mil_ilse", "+dataset.protocol.lr=1e-3"]).startswith(
        "dataset.protocol.lr: moved to method.protocol.lr"
    )
    assert explain(["experiment=mil_hnm", "method.hnm.k=2", "method.protocol.lr=1e-3"]) is None
    result = run_cli(["task=histo_lightning.pipelines.runner.run_pipeline"], timeout=120)
    assert result.returncode == 2
    assert _error_lines(result.stderr)[0].startswith("error: task: removed;")
