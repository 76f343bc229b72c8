"""The stage runner on a toy three-stage pipeline (fit → predict into the feature cache → function).

Finished stages are skipped, changed ones redone with everything after them, an interrupted fit resumes
from its last checkpoint, and an interrupted prediction computes only the rows its cache lacks.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from histo_lightning.data.feature_cache import FeatureCache
from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.runner import run_pipeline
from tests.pipeline_toy import TOY_PIPELINE, SimulatedCrash


@pytest.fixture
def toy_cfg(make_cfg):
    def make(name: str = "run", pipeline: dict | None = None, **dataset):
        cfg = make_cfg(
            ["trainer=cpu", "callbacks=none", "logger=csv", "trainer.max_epochs=10"], name
        )
        with open_dict(cfg):
            cfg.dataset = OmegaConf.create(
                {"_target_": "tests.pipeline_toy.ToyDataModule", **dataset}
            )
            cfg.pipeline = OmegaConf.create(copy.deepcopy(pipeline or TOY_PIPELINE))
            cfg.trainer.enable_progress_bar = False
            cfg.trainer.enable_model_summary = False
            cfg.trainer.num_sanity_val_steps = 0
            del cfg["model"]
        return cfg

    return make


def _info(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())


def _statuses(cfg) -> dict[str, str]:
    return {name: stage["status"] for name, stage in _info(cfg)["stages"].items()}


def test_stages_run_in_numbered_folders_and_a_rerun_skips_them(toy_cfg, caplog) -> None:
    cfg = toy_cfg()
    metrics = run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[0].isdigit()) == [
        "01_fit",
        "02_embed",
        "03_report",
    ]
    for folder in ("01_fit", "02_embed", "03_report"):
        assert json.loads((out / folder / "done.json").read_text())["fingerprint"]
    assert (out / "01_fit" / "checkpoints" / "last.ckpt").is_file()
    assert metrics["report/mean_norm"] > 0 and "fit/val/acc_best" in metrics
    assert _statuses(cfg) == {"fit": "ran", "embed": "ran", "report": "ran"}

    with caplog.at_level(logging.INFO):
        again = run_pipeline(toy_cfg())
    assert _statuses(cfg) == {"fit": "skipped", "embed": "skipped", "report": "skipped"}
    assert again == metrics
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3


def test_a_changed_stage_is_redone_with_every_stage_after_it(toy_cfg, caplog) -> None:
    run_pipeline(toy_cfg())
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["report"]["kwargs"]["scale"] = 2.0
    with caplog.at_level(logging.INFO):
        run_pipeline(toy_cfg(pipeline=pipeline))
    assert _statuses(toy_cfg()) == {"fit": "skipped", "embed": "skipped", "report": "ran"}
    reasons = [r.getMessage() for r in caplog.records if "redoing" in r.getMessage()]
    assert len(reasons) == 1 and "stage.kwargs.scale: 2.0 now, 1.0 before" in reasons[0]

    pipeline["stages"]["fit"]["module"]["lr"] = 0.1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_pipeline(toy_cfg(pipeline=pipeline))
    assert _statuses(toy_cfg()) == {"fit": "ran", "embed": "ran", "report": "ran"}
    messages = " | ".join(r.getMessage() for r in caplog.records if "redoing" in r.getMessage())
    assert "stage.module.lr: 0.1 now, 0.05 before" in messages
    assert messages.count("an earlier stage was redone") == 2


def test_an_interrupted_fit_resumes_from_its_last_checkpoint(toy_cfg, monkeypatch) -> None:
    reference = run_pipeline(toy_cfg("reference"))
    monkeypatch.setenv("TOY_CRASH", "fit:8")  # 6 steps per epoch: inside the second epoch
    with pytest.raises(SimulatedCrash):
        run_pipeline(toy_cfg())
    out = Path(toy_cfg().paths.output_dir)
    assert not (out / "01_fit" / "done.json").exists()
    monkeypatch.delenv("TOY_CRASH")
    resumed = run_pipeline(toy_cfg())
    fit = _info(toy_cfg())["stages"]["fit"]
    assert fit["status"] == "resumed" and fit["resumed_from"].endswith("last.ckpt")
    assert fit["global_step"] == 18
    assert set(resumed) == set(reference)


def test_an_interrupted_prediction_computes_only_the_missing_rows(toy_cfg, monkeypatch) -> None:
    reference_cfg = toy_cfg("reference")
    run_pipeline(reference_cfg)
    reference = FeatureCache.reopen(Path(reference_cfg.paths.output_dir) / "02_embed" / "features")

    monkeypatch.setenv("TOY_CRASH", "predict:3")  # 4 rows per batch, one chunk per batch
    with pytest.raises(SimulatedCrash):
        run_pipeline(toy_cfg())
    cache = FeatureCache.reopen(Path(toy_cfg().paths.output_dir) / "02_embed" / "features")
    assert len(cache.done_indices()) == 12 and not cache.complete
    monkeypatch.delenv("TOY_CRASH")
    run_pipeline(toy_cfg())
    embed = _info(toy_cfg())["stages"]["embed"]
    assert embed["computed"] == 24 - 12 and embed["rows"] == 24
    assert _info(toy_cfg())["stages"]["fit"]["status"] == "skipped"
    np.testing.assert_array_equal(cache.features(), reference.features())


def test_resume_false_redoes_every_stage(toy_cfg) -> None:
    run_pipeline(toy_cfg())
    cfg = toy_cfg()
    with open_dict(cfg):
        cfg.resume = False
    run_pipeline(cfg)
    assert _statuses(cfg) == {"fit": "ran", "embed": "ran", "report": "ran"}


def test_without_validation_the_last_checkpoint_is_used(toy_cfg) -> None:
    cfg = toy_cfg(val=False)
    run_pipeline(cfg)
    fit = _info(cfg)["stages"]["fit"]
    assert fit["has_validation"] is False and fit["monitor"] is None
    # the checkpoint used is the last epoch's (3 epochs: epoch_002), not one chosen by a metric
    assert fit["best_checkpoint"] == "checkpoints/epoch_002.ckpt" and fit["epochs"] == 3


def test_a_stage_refers_only_to_earlier_stages(toy_cfg) -> None:
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["embed"]["from"] = "report"
    # refused before any stage runs (histo_lightning.utils.choices.check_stage_references)
    with pytest.raises(
        ConfigError,
        match=r"pipeline\.stages\.embed\.from='report': expected an earlier stage of this "
        r"pipeline \(stage 'embed'\), one of \['fit'\]",
    ):
        run_pipeline(toy_cfg(pipeline=pipeline))


def test_unknown_stage_kind_is_named(toy_cfg) -> None:
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["report"]["kind"] = "magic"
    with pytest.raises(ConfigError, match=r"pipeline.stages.report.kind='magic'"):
        run_pipeline(toy_cfg(pipeline=pipeline))


def _toy_config_dir(root: Path) -> Path:
    """A config search path adding dataset=toy, pipeline=toy and experiment=toy to the real config tree."""
    import yaml

    (root / "dataset").mkdir(parents=True)
    (root / "pipeline").mkdir()
    (root / "experiment").mkdir()
    (root / "dataset" / "toy.yaml").write_text("_target_: tests.pipeline_toy.ToyDataModule\n")
    (root / "pipeline" / "toy.yaml").write_text(yaml.safe_dump(TOY_PIPELINE, sort_keys=False))
    (root / "experiment" / "toy.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /dataset: toy\n  - override /pipeline: toy\n"
        "  - override /model: null\n  - override /callbacks: none\n"
        "task_name: toy\noptimized_metric: fit/val/acc_best\n"
        "trainer: {max_epochs: 3, enable_progress_bar: false, enable_model_summary: false,"
        " num_sanity_val_steps: 0}\n"
    )
    return root


@pytest.mark.slow  # two DDP processes through every stage kind
def test_every_rank_runs_the_stages_under_ddp(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    config_dir = _toy_config_dir(tmp_path / "conf")
    logs = tmp_path / "logs"
    args = [
        f"hydra.searchpath=[file://{config_dir}]",
        "experiment=toy",
        "trainer=ddp_cpu",
        f"paths.log_dir={logs}",
        f"paths.data_dir={tmp_path / 'data'}",
        "run_id=ddp",
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logs / "toy" / "runs" / "ddp"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["stages"]["embed"]["computed"] == 24
    cache = FeatureCache.reopen(run_dir / "02_embed" / "features")
    assert cache.complete and len({p.name[:2] for p in (cache.folder / "progress").iterdir()}) == 2
    assert "report/mean_norm" in info["stages"]["report"]["metrics"]
    # both ranks skip everything on a rerun
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert {s["status"] for s in info["stages"].values()} == {"skipped"}
