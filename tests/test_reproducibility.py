"""The same command gives byte-identical metrics — twice in a row, on cold or warm stores, in one go or killed
and rerun; run_info.json says what can differ between machines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SMOKE, run_cli


def test_the_same_command_twice_gives_identical_metrics(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    common = ["experiment=breakhis_baseline", *SMOKE, f"paths.data_dir={data_dir}"]
    runs = []
    for run_id in ("first", "second"):
        result = run_cli([*common, f"paths.log_dir={logs}", f"run_id={run_id}"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(logs / "breakhis_baseline" / "runs" / run_id)
    first, second = ((run / "metrics.json").read_bytes() for run in runs)
    # the loss is a continuous function of every weight: equal bytes mean bit-identical training
    assert "test/loss" in json.loads(first) and first == second
    info = json.loads((runs[0] / "run_info.json").read_text())
    machine = info["machine"]
    assert machine["cpu"]["model"] and isinstance(machine["cpu"]["isa_flags"], list)
    assert machine["threads"]["intra_op"] >= 1 and machine["threads"]["inter_op"] >= 1
    assert machine["torch_build"]["cpu_capability"]
    assert {"torch", "pytorch_lightning", "numpy"} <= set(machine["versions"])
    assert "torch_deterministic_algorithms" in machine["deterministic"]
    assert "trainer_deterministic" in info


def _kill_when(args: list[str], path: Path, timeout: float = 900) -> None:
    """Start ``run.py *args`` and kill it (SIGKILL, as a lost machine would) once ``path`` exists."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + timeout
        while not path.exists():
            assert proc.poll() is None and time.time() < deadline, f"run ended before {path}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()


@pytest.mark.slow  # four CHS-Net runs through run.py: a few minutes
def test_chsnet_demo_gives_identical_metrics_cold_warm_and_killed_during_refined(
    data_dir: Path, tmp_path: Path
) -> None:
    """The demo's pipeline (tiny data, short schedule) on a cold image store, on a warm one, and killed
    inside its refined stage then rerun: byte-identical metrics.json, and the same stage metrics."""
    logs = tmp_path / "logs"
    common = [
        "experiment=chsnet_demo",
        "dataset.synthetic.preset=tiny",
        "dataset.prepare_workers=1",
        "model.net.width=0.0625",
        "model.screening.max_epochs=2",
        "model.refined.max_epochs=3",
        "method.refined_sampling.epoch_samples=512",
        "method.detection.batch_size=128",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",  # cold for the first run, whatever ran before
        f"paths.log_dir={logs}",
    ]
    runs = {name: logs / "chsnet_demo" / "runs" / name for name in ("cold", "warm", "killed")}
    for name in ("cold", "warm"):
        result = run_cli([*common, f"run_id={name}"])
        assert result.returncode == 0, result.stderr[-3000:]
    # killed once the refined stage has finished an epoch (its last.ckpt), before it finished
    _kill_when(
        [*common, "run_id=killed"], runs["killed"] / "03_refined" / "checkpoints" / "last.ckpt"
    )
    assert not (runs["killed"] / "03_refined" / "done.json").exists(), "refined finished first"
    result = run_cli([*common, "run_id=killed"])
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {
        name: json.loads((run / "run_info.json").read_text())["stages"]
        for name, run in runs.items()
    }
    assert (
        stages["killed"]["screening"]["status"] == stages["killed"]["mining"]["status"] == "skipped"
    )
    assert stages["killed"]["refined"]["status"] == "resumed"
    metrics = [(run / "metrics.json").read_bytes() for run in runs.values()]
    assert "test/f1" in json.loads(metrics[0]) and metrics[0] == metrics[1] == metrics[2]
    # the stages' training losses too (continuous: equal only if training was bit-identical); a resumed
    # stage logs only the epochs it ran, so its last epoch's loss
    for stage in ("screening", "refined"):
        assert stages["cold"][stage]["metrics"] == stages["warm"][stage]["metrics"]
        loss = f"{stage}/train/loss"
        assert stages["cold"][stage]["metrics"][loss] == stages["killed"][stage]["metrics"][loss]
