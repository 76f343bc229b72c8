"""The CHS-Net pipeline end to end on tiny synthetic TUPAC16: stages, reports, resume, errors, DDP mining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from histo_lightning.callbacks.mining import HardExampleMining
from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.pipelines.chsnet import Pipeline, run_chsnet
from histo_lightning.train import build_datamodule
from histo_lightning.utils.instantiate import build
from tests.conftest import run_cli

TINY_TUPAC = [
    "dataset=tupac16_synthetic",
    "dataset.synthetic.preset=tiny",
    "dataset.prepare_workers=1",
    "model.net.width=0.0625",
    "model.detection.batch_size=128",
]
CHSNET_SMOKE = [
    "experiment=chsnet",
    *TINY_TUPAC,
    "debug=smoke",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
]


def _info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


def test_pipeline_runs_every_stage_writes_reports_and_resumes(make_cfg) -> None:
    cfg = make_cfg(CHSNET_SMOKE)
    run_dir = Path(cfg.paths.output_dir)
    metrics = run_chsnet(cfg)
    # a Table 3 row
    table3 = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/f1", "test/precision", "test/recall", "test/tp", "test/fp", "test/fn"):
        assert key in table3 and key in metrics
    info = _info(run_dir)
    assert info["synthetic_data"] is True and info["pipeline"]["cascade"] is True
    assert [
        info["stages"][s]["status"] for s in ("screening", "mining", "refined", "detection")
    ] == [
        "trained",
        "mined",
        "trained",
        "detected",
    ]
    for stage in ("stage1_screening", "stage2_refined", "detection"):
        assert (run_dir / stage / "done.json").is_file()
    assert (run_dir / "stage1_screening" / "checkpoints" / "last.ckpt").is_file()
    for checkpoint in run_dir.glob("stage*/checkpoints/*.ckpt"):  # nothing in it needs pickle
        best = torch.load(checkpoint, weights_only=True)["monitor_best"]
        assert best["monitor"] in ("screening/val/ap", "refined/val/ap")
    mining = json.loads((run_dir / "stage1_screening" / "mining" / "report.json").read_text())
    assert {"fp", "tp", "fn", "recall_pos", "recall_neg", "precision", "f1"} <= set(mining)
    assert mining["synthetic_data"] is True
    det = run_dir / "detection"
    assert list((det / "predictions").glob("*/*.csv")) and list(
        (det / "geojson").glob("*/*.geojson")
    )
    assert (det / "pr_curve.csv").is_file() and (det / "plots" / "pr_curve.png").is_file()
    assert list((det / "overlays").glob("*.png"))
    assert "refined/val/ap_best" in metrics and "screening/val/ap_best" in metrics

    # a rerun of the same run directory skips every finished stage
    again = run_chsnet(cfg)
    assert [
        _info(run_dir)["stages"][s]["status"]
        for s in ("screening", "mining", "refined", "detection")
    ] == [
        "reused",
        "reused",
        "reused",
        "reused",
    ]
    assert again["test/f1"] == metrics["test/f1"]

    # an interrupted refined stage (no done.json, a last.ckpt) resumes from its last checkpoint
    (run_dir / "stage2_refined" / "done.json").unlink()
    shutil.rmtree(det)
    resumed = run_chsnet(cfg)
    stages = _info(run_dir)["stages"]
    assert stages["screening"]["status"] == "reused" and stages["mining"]["status"] == "reused"
    assert stages["refined"]["status"] == "resumed"
    assert stages["refined"]["resumed_from"].endswith("stage2_refined/checkpoints/last.ckpt")
    assert stages["detection"]["status"] == "detected"
    assert "refined/val/ap_best" in resumed


def test_single_network_ablation_has_no_mining_or_refined_stage(make_cfg) -> None:
    cfg = make_cfg([*CHSNET_SMOKE, "experiment=chsnet_single"])
    run_chsnet(cfg)
    run_dir = Path(cfg.paths.output_dir)
    info = _info(run_dir)
    assert set(info["stages"]) == {"screening", "detection"}
    assert not (run_dir / "stage2_refined").exists()
    assert "test/f1" in json.loads((run_dir / "metrics.json").read_text())


def test_missing_tupac16_names_the_expected_folders(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["experiment=chsnet", f"dataset.root={tmp_path / 'tupac16'}"])
    with pytest.raises(
        DatasetLayoutError,
        match=r"mitoses_image_data.*mitoses_ground_truth.*dataset=tupac16_synthetic",
    ):
        run_chsnet(cfg)


def test_pipeline_config_errors_are_named(make_cfg) -> None:
    cfg = make_cfg([*CHSNET_SMOKE, "model.hard_example_mining=false"])
    with pytest.raises(
        ConfigError, match=r"model\.cascade=true needs model\.hard_example_mining=true"
    ):
        Pipeline(cfg)
    cfg = make_cfg([*CHSNET_SMOKE, "model.schedule=fast"])
    with pytest.raises(ConfigError, match=r"model.schedule='fast'"):
        Pipeline(cfg)


@pytest.mark.slow
def test_mining_under_ddp_equals_single_process_mining(
    data_dir: Path, tmp_path: Path, make_cfg
) -> None:
    logs = tmp_path / "logs"
    overrides = [*CHSNET_SMOKE, "trainer.limit_predict_batches=1.0", "dataset.eval_batch_size=16"]
    result = run_cli(
        [
            *overrides,
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={logs}",
            "trainer=ddp_cpu",
            "run_id=ddp",
            "test=false",
            "model.refined.max_epochs=1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logs / "chsnet" / "runs" / "ddp"
    assert (run_dir / "chsnet_ddp_process_1.log").exists() or any(
        "process_1" in p.name for p in run_dir.iterdir()
    )  # the second rank ran
    mined = np.load(run_dir / "stage1_screening" / "mining" / "predictions.npz")
    # one process mines the same checkpoint
    cfg = make_cfg(overrides, name="single")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    screening = build(cfg.model.screening)
    done = json.loads((run_dir / "stage1_screening" / "done.json").read_text())
    Pipeline.load_weights(screening, done["best_checkpoint"])
    callback = HardExampleMining(tmp_path / "single_mining", threshold=0.2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[callback], enable_progress_bar=False
    )
    trainer.predict(screening, datamodule=datamodule, return_predictions=False)
    single = np.load(tmp_path / "single_mining" / "predictions.npz")
    # every training patch exactly once in both, with the same probabilities and the same false positives
    assert len(mined["index"]) == len(datamodule.patch_rows("train"))
    assert np.array_equal(mined["index"], single["index"])
    np.testing.assert_allclose(mined["prob"], single["prob"], atol=1e-5)
    assert callback.result is not None
    ddp_fp = json.loads((run_dir / "stage1_screening" / "mining" / "report.json").read_text())["fp"]
    assert ddp_fp == len(callback.result.false_positives)
