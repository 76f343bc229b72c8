"""The MIL experiments through the stage runner on tiny synthetic data (the real configs, composed).

* mil_hnm end to end through every stage (features → train → mine → generate → retrain → test), then a
  rerun that skips every stage, then a changed mining k that redoes mining and everything after it;
* the same mil_hnm command on a cold feature cache, on a warm one, and killed during retraining and rerun:
  three byte-identical metrics.json;
* mil_ilse on pixels (the real-data config, Ilse's CNN) and on digits bags, smoke-sized;
* bad input through ``run.py``: one clear line, exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from histo_lightning.data.datasets.colon import CLASSIFICATION_DIR, RELEASE_DIR
from histo_lightning.pipelines.runner import run_pipeline
from tests.conftest import run_cli
from tests.mil.conftest import write_colon_image
from tests.pipeline_toy import SimulatedCrash

QUIET = [
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "trainer=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
]
TINY_HNM = [
    "experiment=mil_hnm",
    "dataset=colon_synthetic",
    "dataset.synthetic.preset=tiny",
    "method.protocol.n_folds=3",
    "method.protocol.epochs=2",
    "method.protocol.val_fraction=0.2",
    # every negative training bag counts as a false positive, so mining and generation have work
    "method.hnm.threshold=0.0",
    "fold=2",
    *QUIET,
]
# the stages that run by default (FMB clustering the stage-1 network's embeddings, mined on the training
# bags), with their folder numbers (positions in the declared order: encoder_features is off)
STAGES = {
    "features": 1,
    "train": 3,
    "mine": 4,
    "embed": 5,
    "generate": 6,
    "retrain": 7,
    "test": 8,
}


def _folder(name: str) -> str:
    return f"{STAGES[name]:02d}_{name}"


def _info(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())


def _statuses(cfg) -> dict[str, str]:
    return {name: stage["status"] for name, stage in _info(cfg)["stages"].items()}


def test_mil_hnm_runs_every_stage_skips_on_rerun_and_redoes_mining_when_k_changes(
    make_cfg,
) -> None:
    cfg = make_cfg(TINY_HNM)
    metrics = run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert folders == [_folder(name) for name in STAGES]
    assert all((out / f / "done.json").is_file() for f in folders)
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("acc", "precision", "recall", "f1", "auroc", "fpr", "inst_auroc"):
        assert f"test/{key}" in saved
    mining = json.loads((out / _folder("mine") / "report.json").read_text())
    assert mining["false_positive_bags"] == mining["negative_bags"] > 0
    assert mining["mine_on"] == "train"
    assert mining["hard_negatives"] > 0 and (out / _folder("mine") / "gallery.png").is_file()
    generation = json.loads((out / _folder("generate") / "generation.json").read_text())
    assert (
        generation["method"] == "FMB" and generation["generated"]["bags"] == mining["negative_bags"]
    )
    # K-means on the stage-1 network's embeddings (its attention hidden layer, 128 values)
    assert generation["clusters"]["features"] == "mil" and generation["clusters"]["dim"] == 128
    assert generation["generated"]["capped_bags"] == metrics["generate/capped_bags"]
    assert metrics["generate/bags"] == mining["negative_bags"]
    test_dir = out / _folder("test")
    assert (test_dir / "predictions.csv").is_file() and (test_dir / "instances.csv").is_file()
    assert (
        len(list((test_dir / "heatmaps").glob("*.png")))
        == json.loads((out / "run_info.json").read_text())["data"]["test"]["bags"]
    )
    info = _info(cfg)
    assert info["synthetic_data"] is True and info["departures_from_paper"]
    assert info["pipeline"]["hnm"]["cluster_features"] == "mil"  # the choice, in the run's report
    # the retraining stage's own data view held the generated bags; the run's data module and the test
    # stage's view never did
    retrain = info["stages"]["retrain"]["data"]
    assert retrain["train"]["generated_negative_bags"] == mining["negative_bags"]
    assert retrain["instances"] == "features" and info["stages"]["test"]["data"]["test"]
    assert "generated_negative_bags" not in info["stages"]["test"]["data"]["train"]
    assert "generated_negative_bags" not in info["stages"]["train"]["data"]["train"]
    # run_info's data: what the last fit stage (retrain) trained on
    assert info["data"]["train"]["generated_negative_bags"] == mining["negative_bags"]
    assert info["data"]["totals"]["key_instances"] > 0

    again = run_pipeline(make_cfg(TINY_HNM))
    assert set(_statuses(cfg).values()) == {"skipped"}
    assert again == metrics

    run_pipeline(make_cfg([*TINY_HNM, "method.hnm.k=2.0"]))
    assert _statuses(cfg) == {
        "features": "skipped",
        "train": "skipped",
        "mine": "ran",
        "embed": "ran",
        "generate": "ran",
        "retrain": "ran",
        "test": "ran",
    }
    assert json.loads((out / _folder("mine") / "report.json").read_text())["k"] == 2.0


def test_out_of_fold_mining_scores_every_training_bag_once_with_an_inner_model(make_cfg) -> None:
    """method.hnm.mine_on=out_of_fold: `foreach` expands inner_fit/inner_score into one stage per inner fold;
    each training bag is scored by the inner model that did not train on it, and mining reads those
    pooled scores. FMB clusters the frozen encoder's features (method.hnm.cluster_features=encoder)."""
    import pandas as pd

    cfg = make_cfg(
        [
            *TINY_HNM,
            "method.hnm.threshold=0.5",
            "method.hnm.mine_on=out_of_fold",
            "method.hnm.inner_folds=2",
            "method.hnm.cluster_features=encoder",
        ]
    )
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    statuses = _statuses(cfg)
    assert list(statuses) == [
        "features",
        "encoder_features",
        "train",
        "inner_fit_1",
        "inner_fit_2",
        "inner_score_1",
        "inner_score_2",
        "mine",
        "generate",
        "retrain",
        "test",
    ]
    info = _info(cfg)
    train_bags = info["stages"]["train"]["data"]["train"]["bags"]
    fits = [info["stages"][f"inner_fit_{i}"]["data"]["train"]["bags"] for i in (1, 2)]
    scored = [info["stages"][f"inner_score_{i}"]["rows"] for i in (1, 2)]
    # inner fold i: fitted without its bags, scored on them; together every training bag once
    assert sum(scored) == train_bags and [f + s for f, s in zip(fits, scored)] == [train_bags] * 2
    mine_dir = out / info["stages"]["mine"]["folder"]
    report = json.loads((mine_dir / "report.json").read_text())
    assert report["mine_on"] == "out_of_fold" and report["training_bags"] == train_bags
    bags = pd.read_csv(mine_dir / "bags.csv")
    assert len(bags) == train_bags and bags["bag_name"].is_unique
    # the probabilities mined are the inner models' (each bag's from the model that left it out)
    from histo_lightning.methods.li_mil.mining_callback import bag_outputs
    from histo_lightning.stores.feature_cache import FeatureCache

    inner: dict[str, float] = {}
    for i in (1, 2):
        stage = info["stages"][f"inner_score_{i}"]
        cache = FeatureCache.reopen(out / stage["folder"] / stage["outputs"]["cache"])
        manifest, probs, _, _ = bag_outputs(cache)
        inner.update(zip(manifest["patient"], probs))
    mined = bags.set_index("bag_name")["prob"]
    assert np.allclose([mined[name] for name in inner], list(inner.values()), atol=1e-6)
    generation = json.loads(
        (out / info["stages"]["generate"]["folder"] / "generation.json").read_text()
    )
    assert generation["mine_on"] == "out_of_fold"
    if generation["hard_negatives"] and generation["method"] == "FMB":
        assert generation["clusters"]["features"] == "encoder"


def test_mil_hnm_gives_identical_metrics_cold_warm_and_killed_during_retraining(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Li et al.'s pipeline, three ways: on a cold feature cache (the features stage computes every row),
    on a warm one (it computes nothing), and killed inside retraining's last epoch then rerun (train,
    mine and generate skipped, retrain resumed from its last.ckpt): byte-identical metrics.json."""
    from histo_lightning.methods.li_mil.module import MILModule

    args = [
        *TINY_HNM,
        "method.protocol.epochs=3",
        f"paths.cache_dir={tmp_path / 'cache'}",  # cold for this test, whatever ran before it
        "pipeline.stages.test.callbacks.report.max_heatmaps=1",
    ]
    cold = make_cfg(args, "cold")
    run_pipeline(cold)
    cold_info = _info(cold)
    assert cold_info["stages"]["features"]["computed"] == cold_info["stages"]["features"]["rows"]
    warm = make_cfg(args, "warm")
    run_pipeline(warm)
    assert _info(warm)["stages"]["features"]["computed"] == 0

    steps = cold_info["stages"]["retrain"]["global_step"]  # 3 epochs; crash inside the last one

    def crash(self: MILModule, outputs: object, batch: object, batch_idx: int) -> None:
        if (
            self.trainer.default_root_dir.endswith("_retrain")
            and self.trainer.global_step == steps - 2
        ):
            raise SimulatedCrash(f"killed at step {steps - 2} of retraining")

    with monkeypatch.context() as patch, pytest.raises(SimulatedCrash):
        patch.setattr(MILModule, "on_train_batch_end", crash, raising=False)
        run_pipeline(make_cfg(args, "killed"))
    killed = make_cfg(args, "killed")
    run_pipeline(killed)
    statuses = _statuses(killed)
    assert statuses["train"] == statuses["mine"] == statuses["generate"] == "skipped"
    assert statuses["retrain"] == "resumed"

    metrics = [
        (Path(c.paths.output_dir) / "metrics.json").read_bytes() for c in (cold, warm, killed)
    ]
    # test/loss is continuous in every weight: equal bytes mean bit-identical training
    assert "test/loss" in json.loads(metrics[0])
    assert metrics[0] == metrics[1] == metrics[2]


def test_a_smoke_run_computes_the_embeddings_fmb_reads_complete(make_cfg) -> None:
    """debug=smoke limits predictions to two batches; the stage-1 embeddings FMB's K-means looks up by
    instance index (``output.complete``) are computed complete anyway (a limited store held the first
    rows only and generation failed with an IndexError on a hard negative beyond them)."""
    cfg = make_cfg([*TINY_HNM, "debug=smoke", "pipeline.stages.embed.batch_size=4", *QUIET])
    metrics = run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    generation = json.loads((out / _folder("generate") / "generation.json").read_text())
    assert generation["clusters"]["features"] == "mil" and metrics["generate/bags"] > 0
    embed = json.loads((out / _folder("embed") / "done.json").read_text())
    assert "limited" not in embed


def test_mil_ilse_on_pixels_with_the_real_colon_config(make_cfg, colon_tiny: Path) -> None:
    cfg = make_cfg(
        [
            "experiment=mil_ilse",
            "dataset=colon",
            f"dataset.root={colon_tiny}",
            "method.protocol.n_folds=3",
            "debug=smoke",
            *QUIET,
        ]
    )
    metrics = run_pipeline(cfg)
    assert "test/auroc" in metrics and "test/inst_auroc" in metrics
    statuses = _statuses(cfg)
    assert statuses == {"fit": "ran", "test": "ran"}  # pixels: no feature stage
    assert cfg.method.protocol.encoder == {"name": "ilse_cnn", "patch_size": 27}


def test_mil_ilse_on_digits_bags(make_cfg) -> None:
    cfg = make_cfg(
        [
            "experiment=mil_ilse",
            "dataset=digits_bags",
            "dataset.n_train_bags=20",
            "dataset.n_test_bags=10",
            "debug=smoke",
            *QUIET,
        ]
    )
    metrics = run_pipeline(cfg)
    assert {"test/auroc", "test/inst_auroc"} <= set(metrics)
    heatmaps = list((Path(cfg.paths.output_dir) / "03_test" / "heatmaps").glob("*.png"))
    assert heatmaps  # mosaics of the digits of each test bag


def test_mil_hnm_fmb_on_one_channel_digits_clusters_the_mil_embeddings(make_cfg) -> None:
    """FMB's K-means over the stage-1 MIL network's instance embeddings (the default
    method.hnm.cluster_features=mil) on one-channel digits: the instances reach the MIL network's LeNet
    with their one channel (they were repeated to RGB for the frozen encoder, and the embed stage
    failed with "expected input[1, 3, 8, 8] to have 1 channels")."""
    cfg = make_cfg(
        [
            "experiment=mil_hnm",
            "dataset=digits_bags",
            "dataset.n_train_bags=20",
            "dataset.n_test_bags=10",
            "method.hnm.threshold=0.0",
            "trainer.max_epochs=1",
            *QUIET,
        ]
    )
    metrics = run_pipeline(cfg)
    assert "test/auroc" in metrics
    statuses = _statuses(cfg)
    assert statuses["embed"] == "ran" and statuses["generate"] == "ran"
    assert _info(cfg)["stages"]["generate"]["metrics"]["generate/bags"] >= 1


@pytest.mark.parametrize(
    "defect",
    [
        "missing_mat",
        # the reader's messages for these two are unit-tested (test_colon_reader.py); through run.py slow
        pytest.param("no_nuclei", marks=pytest.mark.slow),
        pytest.param("wrong_layout", marks=pytest.mark.slow),
    ],
)
def test_bad_colon_input_gives_one_clear_line(
    defect: str, tmp_path: Path, colon_tiny: Path
) -> None:
    root = tmp_path / "colon"
    if defect == "wrong_layout":
        (root / "images").mkdir(parents=True)
        expected = "holds neither CRCHistoPhenotypes_2016_04_28/Classification/"
    else:
        shutil.copytree(colon_tiny, root)
        folder = root / RELEASE_DIR / CLASSIFICATION_DIR / "img3"
        if defect == "missing_mat":
            (folder / "img3_others.mat").unlink()
            expected = "missing " + str(folder / "img3_others.mat")
        else:
            shutil.rmtree(folder)
            write_colon_image(root, 3, np.full((64, 64, 3), 200, np.uint8), {})
            expected = "no classified nucleus in any of its four .mat files"
    result = run_cli(
        [
            "experiment=mil_ilse",
            "dataset=colon",
            f"dataset.root={root}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


@pytest.mark.parametrize("weights", ["/nonexistent/encoder.pth", "timm"])
def test_fmb_with_encoder_features_and_no_weights_stops_in_seconds_naming_both_ways_out(
    weights: str, tmp_path: Path
) -> None:
    """method.hnm.cluster_features=encoder without the encoder's weights offline: the pre-flight check (before
    torch is imported) ends the run in one error line naming method.hnm.cluster_features=mil and
    encoder.weights=<local file>; nothing is written."""
    import time

    start = time.monotonic()
    result = run_cli(
        [
            "experiment=mil_hnm",
            "dataset=colon_synthetic",
            "method.hnm.cluster_features=encoder",
            f"encoder.weights={weights}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        timeout=120,
        env={"HF_HUB_CACHE": str(tmp_path / "empty_hub")},
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-2000:]
    assert (
        "method.hnm.cluster_features=mil" in lines[0] and "encoder.weights=<local file>" in lines[0]
    )
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "torch" not in result.stdout and not (tmp_path / "logs").exists()


def test_weights_availability_is_decided_offline(tmp_path: Path, monkeypatch) -> None:
    from histo_lightning.utils.pretrained import timm_weights_cached, weights_problem

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_problem("resnet18.tv_in1k", "random") is None
    assert "not in the Hugging Face hub cache" in weights_problem("resnet18.tv_in1k", "timm")
    snapshot = tmp_path / "hub" / "models--timm--resnet18.tv_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert not timm_weights_cached("resnet18.tv_in1k")  # a snapshot without a weights file
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert weights_problem("resnet18.tv_in1k", "timm") is None
    assert timm_weights_cached("resnet18")  # no tag: any tag of the architecture
    local = tmp_path / "w.pth"
    assert weights_problem("resnet18", str(local)) == f"{local} is not a file"
    local.write_bytes(b"x")
    assert weights_problem("resnet18", str(local)) is None


def test_fmb_clustering_the_mil_embeddings_never_builds_the_encoder(make_cfg) -> None:
    """method.hnm.cluster_features=mil with an unusable encoder.weights: the bag features use the dataset
    protocol's weights, encoder_features is off, and the run finishes."""
    cfg = make_cfg([*TINY_HNM, "encoder.weights=/nonexistent", "method.protocol.epochs=1"])
    metrics = run_pipeline(cfg)
    assert "test/acc" in metrics
    statuses = _statuses(cfg)
    assert "encoder_features" not in statuses and statuses["embed"] == "ran"
