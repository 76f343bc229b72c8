"""The rakhlin pipeline end to end at smoke size: descriptor stages into shared caches, LightGBM, fusion and
report; a second fold reuses every descriptor; a killed descriptor stage resumes with the missing images
only; a cache refuses another encoder; the same command gives the same metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from histo_lightning.methods.rakhlin.descriptors import DescriptorExtractor
from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.stores.feature_cache import FeatureCache, FeatureCacheMismatch

MODELS = ("mobilenet_200", "mobilenet_325", "lcnet_200", "lcnet_325")
METRICS = (
    "test/acc",
    *(f"test/acc_{m}" for m in MODELS),
    "test/acc2",
    "test/auc2",
    "test/sensitivity2@0.33",
    "test/specificity2@0.33",
    "test/sensitivity2@0.5",
    "test/specificity2@0.5",
)


def _stage(cfg, name: str) -> dict:
    info = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())
    return info["stages"][name]


def test_pipeline_end_to_end_and_a_second_fold_reuses_every_descriptor(rakhlin_cfg, caplog) -> None:
    cfg = rakhlin_cfg("fold=1", name="fold1")
    metrics = run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    written = json.loads((out / "metrics.json").read_text())
    assert set(METRICS) <= set(written)
    assert all(0.0 <= written[k] <= 1.0 for k in METRICS)
    report = out / _stage(cfg, "report")["folder"]
    for name in ("roc.png", "confusion.png", "predictions.csv", "submission.csv"):
        assert (report / name).is_file(), name
    predictions = pd.read_csv(report / "predictions.csv")
    assert len(predictions) == 4 and set(predictions["label"]) <= {
        "Normal",
        "Benign",
        "InSitu",
        "Invasive",
    }
    submission = pd.read_csv(report / "submission.csv")
    assert submission.columns.tolist() == ["image", "label"]
    assert submission["image"].tolist() == ["test0.tif", "test1.tif", "test2.tif"]
    lightgbm = out / _stage(cfg, "lightgbm")["folder"]
    texts = sorted(p.name for p in (lightgbm / "models").iterdir())
    assert len(texts) == 4 * 2 and texts[0] == "lcnet_200_seed0.txt"
    assert (lightgbm / "models" / texts[0]).read_text().startswith("tree")  # LightGBM's text format
    for model in MODELS:
        stage = _stage(cfg, model)
        assert stage["rows"] == 23 and stage["computed"] in (0, 23)
        cache = FeatureCache.reopen(stage["outputs"]["cache"])
        assert cache.shape[:2] == (23, 3) and cache.complete
        assert cache.info["made_by"]["producer"]["crop_size"] in (24, 40)

    with caplog.at_level(logging.INFO):
        second = run_pipeline(rakhlin_cfg("fold=2", name="fold2"))
    for model in MODELS:
        assert _stage(rakhlin_cfg("fold=2", name="fold2"), model)["computed"] == 0
    reused = [r.getMessage() for r in caplog.records if "nothing to compute" in r.getMessage()]
    assert len(reused) == len(MODELS)
    assert set(METRICS) <= set(second)

    again = run_pipeline(rakhlin_cfg("fold=1", name="fold1_again"))  # same command, new run folder
    assert {k: again[k] for k in METRICS} == {k: metrics[k] for k in METRICS}


class _Killed(RuntimeError):
    pass


def test_a_killed_descriptor_stage_computes_only_the_missing_images(
    rakhlin_cfg, monkeypatch
) -> None:
    overrides = ("pipeline.order=[lcnet_200]", "method.views.seed=11")  # a cache of its own
    original = DescriptorExtractor.predict_step

    def killed_at_image_5(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 5:
            raise _Killed("killed")
        return original(self, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(DescriptorExtractor, "predict_step", killed_at_image_5)
    cfg = rakhlin_cfg(*overrides, name="killed")
    with pytest.raises(_Killed):
        run_pipeline(cfg)
    monkeypatch.setattr(DescriptorExtractor, "predict_step", original)
    started = json.loads((Path(cfg.paths.output_dir) / "01_lcnet_200" / "started.json").read_text())
    assert started  # the stage began and left no done.json
    assert not (Path(cfg.paths.output_dir) / "01_lcnet_200" / "done.json").exists()

    cfg = rakhlin_cfg(*overrides, name="killed")  # the same run again
    run_pipeline(cfg)
    stage = _stage(cfg, "lcnet_200")
    assert stage["computed"] == 23 - 4  # images 0-3 were flushed (flush_every=2) before the kill
    cache = FeatureCache.reopen(stage["outputs"]["cache"])
    assert cache.complete
    # the resumed cache holds what one uninterrupted pass computes
    module = instantiate(cfg.pipeline.stages.lcnet_200.module)
    dataset = _datamodule(cfg).predict_dataset("all")
    for i in (0, 3, 4, 22):
        item = dataset[i]
        batch = {
            "index": torch.tensor([i]),
            "image": item["image"][None],
            "key": [item["key"]],
            "preprocess": [item["preprocess"]],
        }
        expected = module.predict_step(batch, 0)["features"][0].numpy()
        np.testing.assert_allclose(cache.features()[i], expected, rtol=1e-5, atol=1e-6)


def _datamodule(cfg):
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def test_the_cache_refuses_another_encoder_at_the_same_path(rakhlin_cfg, tmp_path: Path) -> None:
    folder = tmp_path / "one_cache"
    run_pipeline(
        rakhlin_cfg(
            "pipeline.order=[lcnet_200]",
            f"pipeline.stages.lcnet_200.output.path={folder}",
            name="first",
        )
    )
    other = rakhlin_cfg(
        "pipeline.order=[lcnet_200]",
        f"pipeline.stages.lcnet_200.output.path={folder}",
        "pipeline.stages.lcnet_200.module.encoder=${pipeline.encoders.mobilenet}",
        name="second",
    )
    with pytest.raises(FeatureCacheMismatch, match="encoder") as refused:
        run_pipeline(other)
    assert "never mixed or overwritten" in str(refused.value)
    assert (
        FeatureCache.reopen(folder)
        .info["made_by"]["producer"]["encoder"]["encoder"]
        .startswith("lcnet_050")
    )


def test_descriptor_only_jobs_fill_the_caches_the_full_pipeline_reads(rakhlin_cfg) -> None:
    """Way (b): experiment=rakhlin_descriptors encoder=<x> crop=<px> computes one model's descriptors;
    the full pipeline's stage with the same encoder and crop then computes nothing."""
    views = "method.views.seed=5"  # caches of their own
    single = rakhlin_cfg(
        "encoder=lcnet_050",
        "encoder.weights=random",
        "encoder.take=stages",
        "encoder.stages=[3,4]",  # as the demo pipeline's lcnet
        "crop=24",
        views,
        name="descriptors_job",
        experiment="rakhlin_descriptors",
    )
    metrics = run_pipeline(single)
    assert not any(k.startswith("test/") for k in metrics)  # descriptors only, no classifier
    assert _stage(single, "descriptors")["computed"] == 23
    full = rakhlin_cfg("pipeline.order=[lcnet_200]", views, name="full")
    run_pipeline(full)
    assert _stage(full, "lcnet_200")["computed"] == 0
    assert _stage(full, "lcnet_200")["outputs"] == _stage(single, "descriptors")["outputs"]


@pytest.mark.slow
def test_ddp_ranks_write_disjoint_rows_of_one_cache(small_bach: Path, tmp_path: Path) -> None:
    """Two DDP processes (gloo, CPU) share the descriptor stage's images: each writes its own rows."""
    from tests.bach.conftest import SMALL_RAKHLIN
    from tests.conftest import run_cli

    logs = tmp_path / "logs"
    result = run_cli(
        [
            *SMALL_RAKHLIN,
            f"dataset.root={small_bach}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={logs}",
            "trainer=ddp_cpu",
            "pipeline.order=[lcnet_200]",
            "run_id=ddp",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((logs / "rakhlin_demo" / "runs" / "ddp" / "run_info.json").read_text())
    stage = info["stages"]["lcnet_200"]
    assert stage["computed"] == 23
    cache = FeatureCache.reopen(stage["outputs"]["cache"])
    assert cache.complete
    by_rank: dict[str, set[int]] = {}
    for progress in (cache.folder / "progress").glob("*.npy"):
        rows = set(np.load(progress).tolist())
        rank = progress.name.split("-")[0]
        assert not rows & by_rank.get(rank, set())
        by_rank.setdefault(rank, set()).update(rows)
    assert set(by_rank) == {"r0", "r1"}
    assert not by_rank["r0"] & by_rank["r1"] and by_rank["r0"] | by_rank["r1"] == set(range(23))


def test_missing_encoder_or_crop_is_named_before_any_data_is_read(rakhlin_cfg) -> None:
    from histo_lightning.errors import ConfigError
    from histo_lightning.pipelines.runner import PipelineRunner

    with pytest.raises(ConfigError, match="needs encoder=<name>"):
        PipelineRunner(rakhlin_cfg("crop=400", experiment="rakhlin_single")).check()
    with pytest.raises(ConfigError, match="needs crop=<px>"):
        PipelineRunner(rakhlin_cfg("encoder=resnet50", experiment="rakhlin_single")).check()
    with pytest.raises(ConfigError, match=r"method\.views"):
        PipelineRunner(rakhlin_cfg("+method.views.n_views=3")).check()
    with pytest.raises(ConfigError, match="runs no descriptor stage"):
        PipelineRunner(rakhlin_cfg("pipeline.order=[lightgbm,report]")).check()
