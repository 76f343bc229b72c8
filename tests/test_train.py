"""The training task end to end, in-process, on the tiny synthetic BreakHis with debug=smoke."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from histo_lightning.entry import run
from histo_lightning.errors import ConfigError, CorruptImageError
from histo_lightning.pipelines.runner import run_pipeline
from tests.conftest import SMOKE


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_smoke_run_writes_metrics_and_report(make_cfg) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "fold=3"])
    value = run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = _metrics(out)
    for key in ("test/acc", "test/rr", "test/auroc", "test/f1_benign", "test/f1_malignant"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test/loss"] > 0.0
    assert {f"test/rr_{m}x" for m in (40, 100, 200, 400)} <= set(metrics)
    # optimized_metric (val/acc_best) was logged and returned
    assert value is not None and 0.0 <= value <= 1.0
    info = json.loads((out / "run_info.json").read_text())
    assert info["synthetic_data"] is True and info["fold"] == 3
    assert info["data"]["dataset"].startswith("breakhis_synthetic-")
    predictions = pd.read_csv(out / "02_test" / "predictions.csv")
    assert len(predictions) == 16  # limit_test_batches=2 x eval_batch_size=8
    assert (predictions["correct"] == (predictions["label"] == predictions["pred"])).all()
    assert predictions["correct"].mean() == pytest.approx(metrics["test/acc"])
    for name in (
        "plots/roc.png",
        "plots/confusion_matrix.png",
        "patient_scores.csv",
        "confusion_matrix.csv",
    ):
        assert (out / "02_test" / name).stat().st_size > 0
    assert (out / "01_fit" / "checkpoints" / "last.ckpt").is_file()
    assert info["stages"]["fit"]["status"] == "ran" and info["stages"]["test"]["status"] == "ran"
    for checkpoint in (out / "01_fit" / "checkpoints").glob("*.ckpt"):  # nothing in it needs pickle
        assert "monitor_best" in torch.load(checkpoint, weights_only=True)


def test_evaluate_a_checkpoint_without_training(make_cfg) -> None:
    cfg = make_cfg(
        ["experiment=breakhis_baseline", *SMOKE, "fold=2", "trainer.limit_test_batches=1.0"], "fit"
    )
    run_pipeline(cfg)
    fitted = Path(cfg.paths.output_dir)
    best = json.loads((fitted / "run_info.json").read_text())["stages"]["fit"]["best_checkpoint"]
    ckpt = fitted / "01_fit" / best
    eval_cfg = make_cfg(
        [
            "experiment=breakhis_baseline",
            *SMOKE,
            "fold=2",
            "trainer.limit_test_batches=1.0",
            "train=false",
            f"ckpt_path={ckpt}",
        ],
        "eval",
    )
    assert run(eval_cfg) is None
    evaluated = _metrics(Path(eval_cfg.paths.output_dir))
    assert evaluated == pytest.approx(_metrics(fitted))
    evaluated_dir = Path(eval_cfg.paths.output_dir)
    assert not (evaluated_dir / "01_fit").exists()
    tested = json.loads((evaluated_dir / "run_info.json").read_text())["stages"]["test"]
    assert tested["tested_checkpoint"] == str(ckpt)


def test_train_false_needs_a_checkpoint(make_cfg) -> None:
    with pytest.raises(ConfigError, match="train=false needs ckpt_path"):
        run_pipeline(make_cfg(["experiment=breakhis_baseline", *SMOKE, "train=false"]))


def test_rerun_of_a_finished_run_reports_it_without_training(make_cfg) -> None:
    overrides = ["experiment=breakhis_baseline", *SMOKE, "trainer.limit_test_batches=1"]
    first = make_cfg(overrides)
    value = run(first)
    out = Path(first.paths.output_dir)
    metrics = _metrics(out)
    done = (out / "01_fit" / "done.json").read_text()
    again = run(make_cfg(overrides))  # same run directory (same run_id)
    info = json.loads((out / "run_info.json").read_text())
    assert {s["status"] for s in info["stages"].values()} == {"skipped"}
    assert (out / "01_fit" / "done.json").read_text() == done
    assert _metrics(out) == metrics and again == value  # val/acc_best is reported again


def test_a_run_killed_during_its_test_is_tested_again_not_trained(make_cfg) -> None:
    overrides = ["experiment=breakhis_baseline", *SMOKE, "trainer.limit_test_batches=1"]
    first = make_cfg(overrides)
    run(first)
    out = Path(first.paths.output_dir)
    (out / "02_test" / "done.json").unlink()  # as if killed while testing
    run(make_cfg(overrides))
    stages = json.loads((out / "run_info.json").read_text())["stages"]
    assert stages["fit"]["status"] == "skipped" and stages["test"]["status"] == "ran"


def test_an_interrupted_fit_resumes_and_resume_false_starts_over(make_cfg) -> None:
    overrides = ["experiment=breakhis_baseline", *SMOKE, "trainer.max_epochs=2", "test=false"]
    first = make_cfg(overrides)
    run(first)
    out = Path(first.paths.output_dir)
    (out / "01_fit" / "done.json").unlink()  # killed after the last checkpoint was written
    assert run(make_cfg(overrides)) is not None
    fit = json.loads((out / "run_info.json").read_text())["stages"]["fit"]
    assert fit["status"] == "resumed" and fit["resumed_from"].endswith(
        "01_fit/checkpoints/last.ckpt"
    )
    assert fit["global_step"] == 4 and "val/acc_best" in fit["metrics"]
    fresh = make_cfg([*overrides, "resume=false"])
    run(fresh)
    fit = json.loads((out / "run_info.json").read_text())["stages"]["fit"]
    assert fit["status"] == "ran" and fit["resumed_from"] is None


def test_without_a_validation_set_the_last_checkpoint_is_tested(make_cfg) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "split.val_fraction=0"])
    value = run(cfg)  # optimized_metric val/acc_best falls back to train/acc
    stages = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())["stages"]
    assert stages["fit"]["has_validation"] is False and stages["fit"]["monitor"] is None
    assert value == pytest.approx(stages["fit"]["metrics"]["train/acc"])
    assert "test/acc" in _metrics(Path(cfg.paths.output_dir))


def test_missing_ckpt_path_is_named(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"ckpt_path=/nope.ckpt does not exist"):
        run_pipeline(make_cfg(["experiment=breakhis_baseline", *SMOKE, "ckpt_path=/nope.ckpt"]))


def test_optimized_metric_must_be_logged(make_cfg, capsys) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "optimized_metric=val/not_a_metric"])
    with pytest.raises(SystemExit) as stopped:  # a user error: one line, exit code 2
        run(cfg)
    assert stopped.value.code == 2
    assert "error: optimized_metric=val/not_a_metric was never logged" in capsys.readouterr().err
    # the run had started: its folder is marked as failed, not half-written
    assert (Path(cfg.paths.output_dir) / "failed.json").is_file()


def test_wandb_without_account_logs_offline_into_the_run_dir(make_cfg, caplog) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "logger=[csv,wandb]", "tags=[test]"])
    with caplog.at_level("INFO"):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    offline_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(f.suffix == ".wandb" for f in offline_runs[0].iterdir())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B: offline")]
    assert len(lines) == 1 and "no W&B API key" in lines[0]
    images = {p.name.split("_")[0] for p in offline_runs[0].rglob("media/images/**/*.png")}
    assert {"roc", "confusion"} <= images, "ROC and confusion-matrix plots are sent to W&B"
    assert (out / "csv").is_dir()


def test_several_loggers_at_once(make_cfg) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "logger=[csv,tensorboard]"])
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((out / "csv").rglob("metrics.csv"))


@pytest.fixture
def corrupt_copy(make_cfg, data_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny synthetic tree with one image truncated."""
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE], "probe")
    from hydra.utils import instantiate

    source = instantiate(cfg.dataset).root
    copy = tmp_path / "breakhis_copy"
    shutil.copytree(source, copy)
    victim = sorted(copy.rglob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:100])
    return copy, victim.name


def _real_layout_overrides(root: Path, tmp_path: Path) -> list[str]:
    return [
        "experiment=breakhis_baseline",
        "debug=smoke",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        f"dataset.root={root}",
        f"paths.split_dir={tmp_path / 'splits'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]


def test_corrupt_image_fails_naming_the_file(make_cfg, corrupt_copy, tmp_path: Path) -> None:
    root, victim = corrupt_copy
    with pytest.raises(
        CorruptImageError, match=rf"unreadable image .*{victim}.*dataset.on_corrupt=skip"
    ):
        run_pipeline(make_cfg(_real_layout_overrides(root, tmp_path)))


def test_corrupt_image_skipped_and_listed(make_cfg, corrupt_copy, tmp_path: Path) -> None:
    root, victim = corrupt_copy
    cfg = make_cfg(
        [
            *_real_layout_overrides(root, tmp_path),
            "dataset.on_corrupt=skip",
            "trainer.limit_test_batches=1.0",
        ]
    )
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    assert victim in (out / "skipped_images.txt").read_text()
    info = json.loads((out / "run_info.json").read_text())
    assert [Path(p).name for p in info["data"]["skipped_images"]] == [victim]
    assert info["synthetic_data"] is False  # read through dataset.root like real data
    assert (
        victim
        not in pd.read_csv(out / "02_test" / "predictions.csv")["path"]
        .map(lambda p: Path(p).name)
        .tolist()
    )


def test_image_cache_none_decodes_on_access(make_cfg) -> None:
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "dataset.image_cache=none"])
    with open_dict(cfg):
        cfg.dataset.num_workers = 0
    run_pipeline(cfg)
    assert "test/acc" in _metrics(Path(cfg.paths.output_dir))


def test_explicit_ckpt_path_resumes_into_a_new_run(make_cfg) -> None:
    overrides = ["experiment=breakhis_baseline", *SMOKE, "trainer.limit_test_batches=1"]
    first = make_cfg([*overrides, "trainer.max_epochs=1"], "first")
    run_pipeline(first)
    last = Path(first.paths.output_dir) / "01_fit" / "checkpoints" / "last.ckpt"
    second = make_cfg([*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"], "second")
    run_pipeline(second)
    fit = json.loads((Path(second.paths.output_dir) / "run_info.json").read_text())["stages"]["fit"]
    assert fit["resumed_from"] == str(last) and fit["global_step"] == 4


def test_magnification_filter(make_cfg) -> None:
    from hydra.utils import instantiate

    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "dataset.magnifications=[40,400]"])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert set(datamodule.table["magnification"]) == {40, 400}
    assert set(datamodule.datasets["train"].groups) <= {40, 400}
    with pytest.raises(ConfigError, match=r"dataset.magnifications=\[40, 50\]"):
        run_pipeline(
            make_cfg(["experiment=breakhis_baseline", *SMOKE, "dataset.magnifications=[40,50]"])
        )


@pytest.mark.parametrize("debug", ["fdr", "profiler"])
def test_debug_configs_run(debug: str, make_cfg) -> None:
    overrides = [
        *SMOKE[:-3],
        f"debug={debug}",
        "experiment=breakhis_baseline",
        "callbacks.rich_progress_bar=null",
    ]
    cfg = make_cfg(
        [
            *overrides,
            "dataset.batch_size=4",
            "dataset.eval_batch_size=8",
            "++trainer.limit_train_batches=2",
        ]
    )
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    assert "test/acc" in _metrics(out)
    if debug == "profiler":
        assert list(out.glob("*profile*.txt"))


@pytest.mark.slow
def test_overfit_drives_the_training_loss_down(make_cfg) -> None:
    cfg = make_cfg(
        [
            *SMOKE[:-3],
            "debug=overfit",
            "experiment=breakhis_baseline",
            "callbacks.rich_progress_bar=null",
            "dataset.batch_size=4",
            "trainer.max_epochs=40",
            "test=false",
        ]
    )
    metrics = run_pipeline(cfg)
    history = pd.read_csv(next(Path(cfg.paths.output_dir).rglob("metrics.csv")))
    losses = history["train/loss"].dropna().to_numpy()
    assert losses[-1] < 0.2 * losses[0] and metrics["train/acc"] == 1.0


@pytest.mark.timeout(180)
def test_forked_loader_workers_after_opencv_use_in_threads(make_cfg) -> None:
    """Regression: DataLoader workers forked after the parent ran OpenCV in threads deadlocked."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import numpy as np
    from hydra.utils import instantiate

    big = np.zeros((2000, 2000, 3), np.uint8)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: cv2.cvtColor(big, cv2.COLOR_RGB2BGR), range(4)))
    cfg = make_cfg(["experiment=breakhis_baseline", *SMOKE, "dataset.num_workers=2"])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = [batch for _, batch in zip(range(2), loader)]
    assert batches[0]["image"].shape[1:] == (3, 460, 700)
