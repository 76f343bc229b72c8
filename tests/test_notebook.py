"""The exploration notebook runs top to bottom on a finished run and on a sweep (so it cannot rot)."""

from __future__ import annotations

import shutil
from pathlib import Path

import papermill
import pytest
import yaml

from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.reporting.cv_summary import write_summary
from tests.conftest import ROOT, SMOKE


@pytest.fixture
def finished_run(make_cfg) -> Path:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "trainer.max_epochs=2"])
    run_pipeline(cfg)
    return Path(cfg.paths.output_dir)


def _fake_sweep(run: Path, sweep: Path) -> Path:
    for job, fold in (("0_fold1", 1), ("1_fold2", 2)):
        shutil.copytree(run, sweep / job)
        (sweep / job / ".hydra").mkdir()
        (sweep / job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"fold={fold}", "experiment=breakhis_baseline"])
        )
        (sweep / job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"fold": fold}))
    write_summary(sweep)
    return sweep


def test_notebook_opens_a_run_and_a_sweep(finished_run: Path, tmp_path: Path) -> None:
    notebook = ROOT / "notebooks" / "explore_run.ipynb"
    for target in (finished_run, _fake_sweep(finished_run, tmp_path / "sweep")):
        executed = tmp_path / f"executed_{target.name}.ipynb"
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={"RUN_DIR": str(target)},
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
        text = executed.read_text()
        assert '"output_type": "error"' not in text
        assert "test/acc" in text and "image/png" in text
