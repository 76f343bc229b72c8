"""The stage runner on a toy three-stage pipeline (fit → predict into the feature cache → function).

Finished stages are skipped, changed ones redone with everything after them, an interrupted fit resumes
from its last checkpoint to the same weights as in one go, an interrupted prediction computes only the rows
its cache lacks; a stage's random numbers do not depend on whether earlier stages ran or were skipped, and
what a stage's data hooks set stays in that stage.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.stores.store import StoreError
from histo_lightning.utils.checkpoints import load_state_dict
from tests.pipeline_toy import SHARED_PIPELINE, TOY_PIPELINE, SimulatedCrash


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


def _weights(cfg, checkpoint: str) -> dict:
    return load_state_dict(Path(cfg.paths.output_dir) / "01_fit" / checkpoint)


@pytest.mark.parametrize(
    ("crash", "workers"),
    [
        ("fit:8", 0),  # 6 steps per epoch: inside the second epoch, main-process loading
        (
            "epoch_start:2",
            2,
        ),  # at a boundary (epoch 1's checkpoint written), two DataLoader workers
    ],
)
def test_an_interrupted_fit_resumes_to_the_weights_of_one_run_in_one_go(
    toy_cfg, monkeypatch, crash: str, workers: int
) -> None:
    """Dropout, the samples' noise (drawn in workers too) and the shuffled order all start every epoch
    from (seed, stage, epoch): the resumed fit repeats the interrupted epochs exactly."""
    reference_cfg = toy_cfg("reference", num_workers=workers)
    reference = run_pipeline(reference_cfg)
    monkeypatch.setenv("TOY_CRASH", crash)
    with pytest.raises(SimulatedCrash):
        run_pipeline(toy_cfg(num_workers=workers))
    out = Path(toy_cfg().paths.output_dir)
    assert not (out / "01_fit" / "done.json").exists()
    monkeypatch.delenv("TOY_CRASH")
    resumed = run_pipeline(toy_cfg(num_workers=workers))
    fit = _info(toy_cfg())["stages"]["fit"]
    assert fit["status"] == "resumed" and fit["resumed_from"].endswith("last.ckpt")
    assert fit["global_step"] == 18
    # bit-identical training: the same weights, best checkpoint and every metric (continuous ones too)
    for checkpoint in ("last.ckpt", fit["best_checkpoint"].removeprefix("checkpoints/")):
        ours, theirs = (
            _weights(toy_cfg(), "checkpoints/" + checkpoint),
            _weights(reference_cfg, "checkpoints/" + checkpoint),
        )
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[k].numpy(), theirs[k].numpy()) for k in ours)
    assert resumed == reference


def _draws_pipeline(order: list[str] | None = None) -> dict:
    pipeline = copy.deepcopy(TOY_PIPELINE)
    for name in ("draws", "draws_again"):
        pipeline["stages"][name] = {
            "kind": "function",
            "fn": "tests.pipeline_toy.random_draws",
            "kwargs": {"label": "first"},
        }
    if order:
        pipeline["order"] = order
    return pipeline


def test_a_stage_draws_the_same_random_numbers_whether_earlier_stages_ran_or_were_skipped(
    toy_cfg,
) -> None:
    def draws(metrics: dict, stage: str = "draws") -> dict:
        return {k: v for k, v in metrics.items() if k.startswith(f"{stage}/")}

    ran = run_pipeline(toy_cfg(pipeline=_draws_pipeline()))
    assert draws(ran) and draws(ran) != {
        k.replace("draws_again", "draws"): v for k, v in draws(ran, "draws_again").items()
    }  # each stage its own stream, from its name
    # the same run folder, the draws stage changed: fit, embed and report are skipped, draws redone
    changed = _draws_pipeline()
    changed["stages"]["draws"]["kwargs"]["label"] = "second"
    skipped = run_pipeline(toy_cfg(pipeline=changed))
    statuses = _statuses(toy_cfg())
    assert statuses["fit"] == statuses["embed"] == statuses["report"] == "skipped"
    assert statuses["draws"] == "ran"
    assert draws(skipped) == draws(ran)
    # no earlier stage in the process at all
    alone = run_pipeline(toy_cfg("alone", pipeline=_draws_pipeline(order=["draws"])))
    assert draws(alone) == draws(ran)


def test_what_a_stage_data_hooks_set_stays_in_that_stage(toy_cfg) -> None:
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["fit"]["data"] = [{"fn": "tests.pipeline_toy.train_on_class", "label": 1}]
    pipeline["stages"]["count"] = {"kind": "function", "fn": "tests.pipeline_toy.training_samples"}
    cfg = toy_cfg(pipeline=pipeline)
    metrics = run_pipeline(cfg)
    info = _info(cfg)
    one_class = info["stages"]["fit"]["data"]["n"]["train"]
    assert 0 < one_class < 48  # the fit trained on its view: class 1 only
    assert metrics["count/train_samples"] == 48  # the stage after it sees the whole training set
    # run_info's data: what the last fit stage trained on (its own view)
    assert info["data"]["n"]["train"] == one_class and "data" not in info["stages"]["count"]


def test_a_stage_with_the_old_setup_key_is_refused_in_one_line(toy_cfg) -> None:
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["fit"]["setup"] = [{"fn": "tests.pipeline_toy.train_on_class"}]
    with pytest.raises(ConfigError, match=r"pipeline.stages.fit.setup: .* data: \[...\]"):
        run_pipeline(toy_cfg(pipeline=pipeline))


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


def _shared_cfg(toy_cfg, tmp_path: Path, name: str, limit: int | None = None):
    cfg = toy_cfg(name, pipeline=SHARED_PIPELINE)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path / "cache")  # a cold cache of this test's own
        cfg.pipeline.stages.fit.max_epochs = 1
        if limit is not None:
            cfg.trainer.limit_predict_batches = limit
    return cfg


def test_a_limited_run_leaves_no_half_built_store_for_a_later_run(toy_cfg, tmp_path) -> None:
    smoke = _shared_cfg(toy_cfg, tmp_path, "smoke", limit=2)
    metrics = run_pipeline(smoke)
    stages = _info(smoke)["stages"]
    # the shared store is computed complete despite the limit (48 training samples, not 2 batches of 4)
    assert stages["encode"]["computed"] == stages["encode"]["rows"] == 48
    shared = FeatureCache.reopen(stages["encode"]["outputs"]["cache"], require_complete=True)
    assert shared.n == 48 and "shared_report/shared_norm" in metrics
    # the stage's own store holds exactly the samples the limit reached, complete
    own = FeatureCache.reopen(Path(smoke.paths.output_dir) / "03_embed" / "features", True)
    assert own.n == 8 and own.source_rows == 24
    assert own.manifest["source_index"].tolist() == list(range(8))
    # a full run on the same cache computes none of the shared rows, and all of its own
    full = _shared_cfg(toy_cfg, tmp_path, "full")
    run_pipeline(full)
    stages = _info(full)["stages"]
    assert stages["encode"]["computed"] == 0 and stages["embed"]["computed"] == 24
    assert FeatureCache.reopen(stages["encode"]["outputs"]["cache"]).folder == shared.folder


def test_a_truncated_store_is_computed_again_or_refused_in_one_line(toy_cfg, tmp_path, caplog):
    cfg = _shared_cfg(toy_cfg, tmp_path, "run")
    first = run_pipeline(cfg)
    shared = Path(_info(cfg)["stages"]["encode"]["outputs"]["cache"])
    with open(
        shared / "features.npy", "r+b"
    ) as handle:  # cut short, as a full disk or a kill would
        handle.truncate(200)
    # a reader that cannot recompute it names it in one line
    with pytest.raises(
        StoreError, match=r"feature cache .* is corrupt \(features.npy holds 200 bytes"
    ):
        FeatureCache.reopen(shared, require_complete=True)
    # the rerun skips the finished stage but computes its damaged store again before anyone reads it
    with caplog.at_level(logging.WARNING):
        again = run_pipeline(_shared_cfg(toy_cfg, tmp_path, "run"))
    assert again == first and _statuses(cfg)["encode"] == "skipped"
    warnings = " | ".join(r.getMessage() for r in caplog.records)
    assert "features.npy holds 200 bytes" in warnings and "computing it again" in warnings
    assert "rebuilding it" in warnings
    assert FeatureCache.reopen(shared, require_complete=True).n == 48


def test_resume_false_redoes_every_stage(toy_cfg) -> None:
    run_pipeline(toy_cfg())
    cfg = toy_cfg()
    with open_dict(cfg):
        cfg.resume = False
    run_pipeline(cfg)
    assert _statuses(cfg) == {"fit": "ran", "embed": "ran", "report": "ran"}


def test_without_validation_the_last_checkpoint_is_used(toy_cfg, recwarn) -> None:
    cfg = toy_cfg(val=False)
    run_pipeline(cfg)
    # no validation loop runs, so Lightning has no empty loader list to warn about
    assert not [w for w in recwarn if "across ranks is zero" in str(w.message)]
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
    shared = yaml.safe_dump(SHARED_PIPELINE, sort_keys=False)
    (root / "pipeline" / "toy_shared.yaml").write_text(shared)
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


@pytest.mark.slow  # two joblib workers start Python, torch and Lightning (~1-2 min on 2 busy cores)
def test_a_parallel_sweep_on_a_cold_cache_finishes_both_jobs(tmp_path: Path) -> None:
    """Two joblib jobs need the same (cold) shared store at once: one fills it (slowly, so that the other
    arrives meanwhile), the other waits for it and computes nothing; both finish. (The same cooperation
    without the launcher, in a second: tests/test_feature_cache.py.)"""
    from tests.conftest import run_cli

    config_dir = _toy_config_dir(tmp_path / "conf")
    logs = tmp_path / "logs"
    result = run_cli(
        [
            "-m",
            f"hydra.searchpath=[file://{config_dir}]",
            "experiment=toy",
            "pipeline=toy_shared",
            "trainer.max_epochs=1",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "seed=1,2",
            f"paths.log_dir={logs}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        env={"OMP_NUM_THREADS": "1", "TOY_ENCODE_DELAY": "0.5"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    infos = [
        json.loads(p.read_text()) for p in sorted(logs.glob("toy/multiruns/*/*/run_info.json"))
    ]
    assert len(infos) == 2 and all(
        "shared_report/shared_norm" in i["stages"]["shared_report"]["metrics"] for i in infos
    )
    encode = [i["stages"]["encode"] for i in infos]
    assert sorted(e["computed"] for e in encode) == [0, 48]  # built once, never twice
    assert encode[0]["outputs"]["cache"] == encode[1]["outputs"]["cache"]
    assert FeatureCache.reopen(encode[0]["outputs"]["cache"]).complete


def _foreach_pipeline(items) -> dict:
    """draws once per item (``foreach``), each seeded by its own name, with ``{item}`` substituted."""
    pipeline = copy.deepcopy(TOY_PIPELINE)
    pipeline["stages"]["draws"] = {
        "kind": "function",
        "foreach": items,
        "fn": "tests.pipeline_toy.random_draws",
        "kwargs": {"label": "copy {item}"},
    }
    pipeline["order"] = ["fit", "draws", "embed", "report"]
    return pipeline


def test_a_foreach_stage_runs_once_per_item_as_named_stages(toy_cfg) -> None:
    from histo_lightning.pipelines.expand import foreach_items

    cfg = toy_cfg(pipeline=_foreach_pipeline("1,2,3"))
    metrics = run_pipeline(cfg)
    # expanded in its place in the order, one folder per copy, each its own stream (seeded by name)
    assert list(_statuses(cfg)) == ["fit", "draws_1", "draws_2", "draws_3", "embed", "report"]
    out = Path(cfg.paths.output_dir)
    assert (out / "02_draws_1").is_dir() and (out / "04_draws_3").is_dir()
    streams = [
        tuple(v for k, v in sorted(metrics.items()) if k.startswith(f"draws_{i}/"))
        for i in (1, 2, 3)
    ]
    assert all(streams) and len(set(streams)) == 3
    info = _info(cfg)
    assert info["stages"]["draws_2"]["status"] == "ran"
    # a rerun skips every copy; one item more adds only its stage (and redoes the ones after it)
    run_pipeline(toy_cfg(pipeline=_foreach_pipeline("1,2,3")))
    assert set(_statuses(cfg).values()) == {"skipped"}
    more = run_pipeline(toy_cfg(pipeline=_foreach_pipeline([1, 2, 3, 4])))
    statuses = _statuses(cfg)
    assert statuses["draws_3"] == "skipped" and statuses["draws_4"] == "ran"
    assert {k: v for k, v in more.items() if k.startswith("draws_2/")} == {
        k: v for k, v in metrics.items() if k.startswith("draws_2/")
    }
    # no item: no stage
    empty = toy_cfg("empty", pipeline=_foreach_pipeline(None))
    run_pipeline(empty)
    assert list(_statuses(empty)) == ["fit", "embed", "report"]
    assert foreach_items("s", 2) == [1, 2] and foreach_items("s", "a, b") == ["a", "b"]


@pytest.mark.parametrize("items", ["1,1", True, 2.5, -1])
def test_a_bad_foreach_is_refused_in_one_line(toy_cfg, items) -> None:
    with pytest.raises(ConfigError, match=r"pipeline.stages.draws.foreach"):
        run_pipeline(toy_cfg(pipeline=_foreach_pipeline(items)))
