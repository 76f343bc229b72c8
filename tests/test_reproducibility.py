"""The same command twice on one machine gives byte-identical metrics; run_info.json says what can differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_cli


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


@pytest.mark.slow
def test_the_chsnet_pipeline_twice_gives_identical_metrics(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    common = [
        "experiment=chsnet",
        "dataset=tupac16_synthetic",
        "dataset.synthetic.preset=tiny",
        "model.net.width=0.0625",
        "debug=smoke",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={logs}",
    ]
    runs = []
    for run_id in ("first", "second"):
        result = run_cli([*common, f"run_id={run_id}"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(logs / "chsnet" / "runs" / run_id)
    assert (runs[0] / "metrics.json").read_bytes() == (runs[1] / "metrics.json").read_bytes()
    # the stages' validation losses too (continuous: equal only if training was bit-identical)
    stages = [json.loads((run / "run_info.json").read_text())["stages"] for run in runs]
    for stage in ("screening", "refined"):
        assert stages[0][stage]["metrics"] == stages[1][stage]["metrics"]
