"""The CHS-Net pipeline end to end on tiny synthetic TUPAC16: stages, reports, redo, resume, errors, DDP mining."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.pipelines.runner import PipelineRunner, run_pipeline
from histo_lightning.pipelines.stages import load_weights
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.instantiate import build, build_datamodule
from tests.conftest import run_cli

TINY_TUPAC = [
    "dataset=tupac16_synthetic",
    "dataset.synthetic.preset=tiny",
    "dataset.prepare_workers=1",
    "model.net.width=0.0625",
    "method.detection.batch_size=128",
]
CHSNET_SMOKE = [
    "experiment=chsnet",
    *TINY_TUPAC,
    "debug=smoke",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
]
STAGES = ("screening", "mining", "refined", "detection")
FOLDERS = ("01_screening", "02_mining", "03_refined", "04_detection")


def _info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


def _statuses(run_dir: Path) -> list[str]:
    stages = _info(run_dir)["stages"]
    return [stages[s]["status"] for s in STAGES]


def test_pipeline_runs_every_stage_writes_reports_redoes_and_resumes(make_cfg, caplog) -> None:
    cfg = make_cfg(CHSNET_SMOKE)
    run_dir = Path(cfg.paths.output_dir)
    metrics = run_pipeline(cfg)
    # a Table 3 row
    table3 = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/f1", "test/precision", "test/recall", "test/tp", "test/fp", "test/fn"):
        assert key in table3 and key in metrics
    info = _info(run_dir)
    assert info["synthetic_data"] is True and info["pipeline"]["cascade"] is True
    assert _statuses(run_dir) == ["ran"] * 4
    for folder in FOLDERS:
        assert (run_dir / folder / "done.json").is_file()
    assert not (run_dir / "05_detection_unlabelled").exists()
    assert (run_dir / "01_screening" / "checkpoints" / "last.ckpt").is_file()
    for checkpoint in run_dir.glob("0*/checkpoints/*.ckpt"):  # nothing in it needs pickle
        assert torch.load(checkpoint, weights_only=True)["monitor_best"]["monitor"] == "val/ap"
    mining = json.loads((run_dir / "02_mining" / "report.json").read_text())
    assert {"fp", "tp", "fn", "recall_pos", "recall_neg", "precision", "f1"} <= set(mining)
    assert mining["synthetic_data"] is True and metrics["mining/fp"] == mining["fp"]
    cache = FeatureCache.reopen(run_dir / "02_mining" / "features")
    assert cache.info["made_by"]["producer"]["stage"] == "screening"
    det = run_dir / "04_detection"
    assert list((det / "predictions").glob("*/*.csv")) and list(
        (det / "geojson").glob("*/*.geojson")
    )
    assert (det / "pr_curve.csv").is_file() and (det / "plots" / "pr_curve.png").is_file()
    assert list((det / "overlays").glob("*.png"))
    assert "refined/val/ap_best" in metrics and "screening/val/ap_best" in metrics

    # a rerun of the same run directory skips every finished stage
    again = run_pipeline(cfg)
    assert _statuses(run_dir) == ["skipped"] * 4
    assert again["test/f1"] == metrics["test/f1"]

    # another mining threshold redoes mining and everything after it, and says why
    changed = make_cfg([*CHSNET_SMOKE, "method.mining.threshold=0.3"])
    with caplog.at_level(logging.INFO):
        run_pipeline(changed)
    assert _statuses(run_dir) == ["skipped", "ran", "ran", "ran"]
    assert json.loads((run_dir / "02_mining" / "report.json").read_text())["threshold"] == 0.3
    messages = [r.getMessage() for r in caplog.records if "redoing" in r.getMessage()]
    assert "stage.callbacks.mining.threshold: 0.3 now, 0.2 before" in messages[0]
    assert all("an earlier stage was redone" in m for m in messages[1:]) and len(messages) == 3

    # an interrupted refined stage (no done.json, a last.ckpt) resumes from its last checkpoint
    (run_dir / "03_refined" / "done.json").unlink()
    resumed = run_pipeline(changed)
    assert _statuses(run_dir) == ["skipped", "skipped", "resumed", "ran"]
    refined = _info(run_dir)["stages"]["refined"]
    assert refined["resumed_from"].endswith("03_refined/checkpoints/last.ckpt")
    assert "refined/val/ap_best" in resumed


def test_single_network_ablation_has_no_mining_or_refined_stage(make_cfg) -> None:
    cfg = make_cfg([*CHSNET_SMOKE, "experiment=chsnet_single"])
    run_pipeline(cfg)
    run_dir = Path(cfg.paths.output_dir)
    info = _info(run_dir)
    assert set(info["stages"]) == {"screening", "detection"}
    assert sorted(p.name for p in run_dir.glob("0*")) == ["01_screening", "04_detection"]
    assert "test/f1" in json.loads((run_dir / "metrics.json").read_text())


def test_missing_tupac16_names_the_expected_folders(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["experiment=chsnet", f"dataset.root={tmp_path / 'tupac16'}"])
    with pytest.raises(
        DatasetLayoutError,
        match=r"mitoses_image_data.*mitoses_ground_truth.*dataset=tupac16_synthetic",
    ):
        run_pipeline(cfg)


def test_pipeline_config_errors_are_named(make_cfg) -> None:
    cfg = make_cfg([*CHSNET_SMOKE, "method.hard_example_mining=false"])
    with pytest.raises(
        ConfigError, match=r"method\.cascade=true needs method\.hard_example_mining=true"
    ):
        PipelineRunner(cfg).check()
    cfg = make_cfg([*CHSNET_SMOKE, "method.schedule=fast"])
    with pytest.raises(ConfigError, match=r"method.schedule='fast'"):
        PipelineRunner(cfg).check()


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
    assert any("process_1" in p.name for p in run_dir.iterdir())  # the second rank ran
    cache = FeatureCache.reopen(run_dir / "02_mining" / "features")
    progress = {p.name.split("-")[0] for p in (cache.folder / "progress").iterdir()}
    assert cache.complete and progress == {"r0", "r1"}
    # one process predicts the same checkpoint
    cfg = make_cfg(overrides, name="single")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    screening = build(cfg.model.screening)
    done = json.loads((run_dir / "01_screening" / "done.json").read_text())
    load_weights(screening, run_dir / "01_screening" / done["best_checkpoint"])
    screening.eval()
    dataset = datamodule.predict_dataset("train")
    with torch.no_grad():
        probs = np.concatenate(
            [
                screening.predict_step(b, 0)["prob"].numpy()
                for b in DataLoader(dataset, batch_size=16)
            ]
        )
    # every training patch exactly once, with the same probabilities and the same false positives
    np.testing.assert_allclose(cache.features(), probs, atol=1e-5)
    labels = cache.manifest["label"].to_numpy()
    report = json.loads((run_dir / "02_mining" / "report.json").read_text())
    assert report["fp"] == int(((labels == 0) & (probs > 0.2)).sum())
