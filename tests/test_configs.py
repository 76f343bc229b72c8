"""Every config option composes, and what it names can be instantiated (no data is read here)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from histo_lightning.utils.instantiate import instantiate_callbacks, instantiate_loggers
from tests.conftest import CONF, SMOKE


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_cfg)


#: what an experiment needs on the command line to compose into a runnable job
REQUIRED_OVERRIDES = {
    "rakhlin_single": ["encoder=resnet50", "crop=400"],
    "rakhlin_descriptors": ["encoder=resnet50", "crop=400"],
}


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_instantiates(experiment: str, make_cfg) -> None:
    cfg = make_cfg(
        [f"experiment={experiment}", "trainer=cpu", *REQUIRED_OVERRIDES.get(experiment, [])]
    )
    assert cfg.task_name != "train", "experiments name their runs"
    datamodule = hydra.utils.instantiate(cfg.dataset)
    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.logger)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert datamodule.fold == cfg.fold and trainer.max_epochs == cfg.trainer.max_epochs
    from histo_lightning.pipelines.runner import PipelineRunner

    PipelineRunner(cfg).check()  # stage kinds, the method's own config checks
    for name, stage in cfg.pipeline.stages.items():
        if stage.kind != "fit" or not stage.get("enabled", True):
            continue
        module = hydra.utils.instantiate(stage.module)
        monitor = stage.get("monitor") or module.hparams.get("monitor")
        assert monitor == (cfg.get("model") or {}).get("monitor", monitor), (
            f"stage {name} monitors {monitor}"
        )


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_runs_a_batch(model: str, make_cfg) -> None:
    if model.startswith("mil_"):  # bag models: a padded batch of two digit bags (3 and 5 instances)
        # their encoder, lr and weight decay are Li et al.'s protocol for the dataset (method=li_mil)
        cfg = make_cfg(["dataset=digits_bags", "method=li_mil", "loss=bag_bce", f"model={model}"])
        module = hydra.utils.instantiate(cfg.model)
        instances, mask = torch.rand(2, 5, 1, 8, 8), torch.ones(2, 5, dtype=torch.bool)
        mask[0, 3:] = False
        out = module(instances, mask)
        assert out["prob"].shape == (2,) and torch.all((out["prob"] > 0) & (out["prob"] < 1))
        module.loss(out["prob"], torch.tensor([0.0, 1.0])).backward()
        assert isinstance(module.configure_optimizers(), (torch.optim.Optimizer, dict))
        return
    # model=chsnet's stage modules read their schedule from the CHS-Net experiment's method: node
    method = ["experiment=chsnet"] if model == "chsnet" else []
    cfg = make_cfg([*SMOKE, *method, f"model={model}"])
    if model == "chsnet":  # the pipeline's stage modules, on 128 x 128 mitosis patches
        cfg.model.net.width = 0.125
        module = hydra.utils.instantiate(cfg.model.screening)
        logits = module.net(torch.zeros(2, 3, 128, 128))
        assert logits.shape == (2, 2)
        module.loss(logits, torch.tensor([0, 1])).backward()
        return
    module = hydra.utils.instantiate(cfg.model)
    height, width = cfg.model.net.get("input_size", [460, 700])
    logits = module(torch.zeros(2, 3, height, width))
    assert logits.shape == (2, cfg.dataset.num_classes)
    loss = module.loss(logits, torch.tensor([0, 1]))
    loss.backward()
    assert isinstance(module.configure_optimizers(), (torch.optim.Optimizer, dict))


@pytest.mark.parametrize(
    "group",
    ["trainer", "logger", "callbacks", "debug", "split", "dataset", "loss", "pipeline", "encoder"],
)
def test_every_group_option_composes(group: str) -> None:
    for option in _options(group):
        cfg = _compose(["experiment=breakhis_baseline", f"{group}={option}"])
        assert OmegaConf.to_container(cfg.trainer, resolve=False)


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu"])
def test_cpu_trainers_instantiate(trainer: str, make_cfg) -> None:
    cfg = make_cfg([f"trainer={trainer}"])
    built = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert built.num_devices == (2 if trainer == "ddp_cpu" else 1)


def test_loggers_instantiate_offline(make_cfg) -> None:
    cfg = make_cfg(["logger=many_loggers"])
    loggers = instantiate_loggers(cfg.logger)
    assert sorted(type(lg).__name__ for lg in loggers) == [
        "CSVLogger",
        "TensorBoardLogger",
        "WandbLogger",
    ]
    wandb_logger = next(lg for lg in loggers if type(lg).__name__ == "WandbLogger")
    assert wandb_logger._wandb_init["mode"] == "offline"
    assert wandb_logger._wandb_init["group"] == cfg.task_name
    assert wandb_logger._wandb_init["name"] == f"{cfg.task_name}_fold{cfg.fold}"


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm", "slurm_ddp"])
def test_launchers_and_sweeper_compose(launcher: str) -> None:
    cfg = _compose(
        [
            "experiment=breakhis_baseline",
            f"hydra/launcher={launcher}",
            "hparams_search=breakhis_optuna",
        ],
        hydra_cfg=True,
    )
    assert "launcher" in cfg.hydra and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/acc_best"


def test_debug_wins_over_experiment() -> None:
    cfg = _compose(["experiment=breakhis_baseline", "debug=smoke"])
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 2


def test_fold_and_paths_defaults() -> None:
    cfg = _compose([])
    assert cfg.fold == 1 and isinstance(cfg.fold, int)
    root = Path(__file__).resolve().parents[1]
    assert cfg.paths.root_dir == str(root) and cfg.paths.data_dir == str(root / "data")
    # the papers' published splits ship inside the package: nothing beside the repository is read
    assert cfg.paths.resources_dir == str(root / "histo_lightning" / "resources")
    bach = _compose(["experiment=rakhlin", "split=official"])
    assert Path(bach.dataset.official_folds).is_file()
    assert Path(bach.dataset.official_folds).is_relative_to(root / "histo_lightning" / "resources")


def _fold_repeat_pairs(jobs: list[list[str]]) -> list[tuple[int, int]]:
    pairs = []
    for job in jobs:
        values = dict(o.split("=", 1) for o in job)
        pairs.append((int(values["fold"]), int(values.get("repeat", 1))))
    return pairs


@pytest.mark.parametrize(
    ("overrides", "folds", "repetitions"),
    [
        (
            ["experiment=mil_hnm", "dataset=colon"],
            10,
            5,
        ),  # Li et al. §4.0.2: 10-fold CV, 5 repetitions
        (["experiment=mil_ilse", "dataset=ucsb"], 4, 5),  # 4-fold CV, 5 repetitions
        (["experiment=mil_aw", "dataset=colon_synthetic"], 10, 5),
        (["experiment=mil_ilse", "dataset=digits_bags"], 1, 5),  # no folds: repetitions only
        (["experiment=rakhlin"], 10, 1),  # 10 folds; the 5 LightGBM seeds run inside each job
        (["experiment=rakhlin_demo", "split=official"], 10, 1),
        (["experiment=chsnet"], 5, 1),  # CHS-Net §4.1: 5-fold cross-validation
        (["experiment=chsnet_single_demo"], 5, 1),
        (["experiment=smse_breakhis"], 5, 1),  # BreakHis' five folds
        (
            ["experiment=smse_paip", "model=smse_resnet", "embedding_loss=none"],
            1,
            1,
        ),  # PAIP: one holdout split
    ],
)
def test_each_paper_protocol_sweeps_its_folds_and_repetitions(
    overrides: list[str], folds: int, repetitions: int
) -> None:
    from itertools import product

    from histo_lightning.utils.protocol import sweep_jobs

    jobs = sweep_jobs(overrides)
    expected = list(product(range(1, folds + 1), range(1, repetitions + 1)))
    assert sorted(_fold_repeat_pairs(jobs)) == expected
    assert all(set(overrides) <= set(job) for job in jobs)


def test_the_command_line_replaces_the_protocol_lists() -> None:
    from histo_lightning.utils.protocol import sweep_jobs

    colon = ["experiment=mil_hnm", "dataset=colon"]
    assert _fold_repeat_pairs(sweep_jobs([*colon, "fold=3"])) == [(3, r) for r in range(1, 6)]
    assert _fold_repeat_pairs(sweep_jobs([*colon, "fold=3", "repeat=2"])) == [(3, 2)]
    assert len(sweep_jobs([*colon, "repeat=1,2"])) == 20
    # method.protocol.repetitions is what the sweep reads
    assert len(sweep_jobs([*colon, "method.protocol.repetitions=2"])) == 20
    # an Optuna search pins the fold instead of optimising over it
    cfg = _compose(
        ["experiment=breakhis_baseline", "hparams_search=breakhis_optuna", "fold=2"], True
    )
    assert str(cfg.hydra.sweeper.params.fold) == "2"


def test_dataset_configs_hold_data_settings_only_and_each_protocol_names_a_dataset() -> None:
    """A dataset config describes the data (reader, layout, loaders); a method's training settings for
    it (Li et al.'s folds, learning rate, epochs, encoder, the synthetic demos' shortcuts) live in
    conf/protocol/<method>/<dataset>.yaml, which conf/train.yaml picks by the dataset's name."""
    training_keys = {"protocol", "lr", "epochs", "weight_decay", "max_epochs", "optimizer"}
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        keys = set(OmegaConf.load(path).keys())
        assert not keys & training_keys, f"{path.name}: {sorted(keys & training_keys)}"
    protocols = sorted((CONF / "protocol" / "li_mil").glob("*.yaml"))
    assert {p.stem for p in protocols} >= {"colon", "colon_synthetic", "ucsb", "ucsb_synthetic"}
    for path in protocols:
        assert (CONF / "dataset" / path.name).is_file()
        cfg = _compose(["experiment=mil_ilse", f"dataset={path.stem}"])
        assert cfg.method.name == "li_mil" and cfg.method.protocol.epochs == cfg.trainer.max_epochs
        assert cfg.model.optimizer.lr == cfg.method.protocol.lr
    # other methods get no protocol node
    assert "protocol" not in (_compose(["experiment=chsnet_demo"]).method or {})
