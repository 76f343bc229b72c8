"""SMSE on (tiny synthetic) BreakHis end to end, the module's objective, and the paper-table report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from histo_lightning.errors import ConfigError
from histo_lightning.losses import ContrastiveLoss, ReinforcedFocalLoss, TripletLoss
from histo_lightning.methods.smse.module import SimilarityClassifier
from histo_lightning.metrics import ClassificationMetrics
from histo_lightning.nets import pnn2
from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.reporting.tables import build_report
from histo_lightning.reporting.tables import main as tables_main
from histo_lightning.stores.feature_cache import FeatureCache
from tests.conftest import SMOKE

PAPER_KEYS = ["test/rr", "test/acc", "test/f1_benign", "test/f1_malignant", "test/auroc"]
MAG_KEYS = [f"test/rr_{m}x" for m in (40, 100, 200, 400)]


def test_smse_breakhis_triplets_end_to_end(make_cfg) -> None:
    cfg = make_cfg(["experiment=smse_breakhis", *SMOKE, "fold=2"])
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(PAPER_KEYS + MAG_KEYS) <= set(metrics)
    assert metrics["test/embed_loss"] >= 0 and metrics["test/cls_loss"] >= 0
    assert metrics["test/loss"] == pytest.approx(
        metrics["test/embed_loss"] + metrics["test/cls_loss"], rel=1e-4
    )
    info = json.loads((out / "run_info.json").read_text())
    assert info["data"]["pairing"] == "triplet" and info["synthetic_data"] is True
    for name in ("05_tsne/plots/tsne.png", "02_test/plots/roc.png", "02_test/patient_scores.md"):
        assert (out / name).stat().st_size > 0
    train_cache = FeatureCache.reopen(out / "03_embed_train" / "features")
    assert train_cache.shape[1:] == (12,)  # Table I: 12-d embedding
    test_cache = FeatureCache.reopen(out / "04_embed_test" / "features")
    # debug=smoke predicts at most limit_predict_batches=2 batches of eval_batch_size=8
    assert len(test_cache.done_indices()) == min(len(test_cache.manifest), 2 * 8) > 0
    assert {"label", "group", "patient", "origin"} <= set(test_cache.manifest.columns)
    history = next(out.rglob("metrics.csv")).read_text()
    assert "train/embed_loss" in history and "train/cls_loss" in history
    checkpoint = torch.load(out / "01_fit" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "embedding_loss" not in checkpoint["hyper_parameters"]


@pytest.mark.parametrize(
    ("experiment", "pairing"), [("smse_breakhis_pair", "pair"), ("smse_breakhis_ce", None)]
)
def test_pair_and_without_embedding_variants(
    experiment: str, pairing: str | None, make_cfg
) -> None:
    cfg = make_cfg([f"experiment={experiment}", *SMOKE, "pipeline=fit_test"])
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(PAPER_KEYS + MAG_KEYS) <= set(metrics)
    assert ("test/embed_loss" in metrics) == (pairing is not None)
    assert json.loads((out / "run_info.json").read_text())["data"]["pairing"] == pairing


def test_explicit_pairing_must_match_the_model(make_cfg) -> None:
    with pytest.raises(
        ConfigError, match=r"dataset.pairing=pair but the model .* trains on triplets"
    ):
        run_pipeline(make_cfg(["experiment=smse_breakhis", *SMOKE, "dataset.pairing=pair"]))


def _module(embedding_loss, channels_last: bool = False) -> SimilarityClassifier:
    torch.manual_seed(0)
    return SimilarityClassifier(
        net=pnn2(2, input_size=(96, 96)),
        loss=ReinforcedFocalLoss(2.0, 1.5),
        embedding_loss=embedding_loss,
        optimizer=lambda params: torch.optim.Adam(params),
        metrics=lambda: ClassificationMetrics(2, ["normal", "tumour"], patient_level=False),
        channels_last=channels_last,
    )


def test_objective_is_embedding_plus_classification_loss_on_the_anchor() -> None:
    module = _module(TripletLoss(1.0))
    assert module.pairing == "triplet"
    images = {k: torch.rand(3, 3, 96, 96) for k in ("image", "positive", "negative")}
    batch = {**images, "label": torch.tensor([0, 1, 1])}
    module.train()
    total = module.training_step(batch, 0)
    with torch.no_grad():
        e = {k: module.net.embed(v) for k, v in images.items()}
        expected = TripletLoss(1.0)(e["image"], e["positive"], e["negative"]) + ReinforcedFocalLoss(
            2.0, 1.5
        )(module.net.classifier(e["image"]), batch["label"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    # the shared network is trained by both terms
    total.backward()
    assert all(p.grad is not None for p in module.net.parameters())
    # single-image training batches are refused when the loss needs triplets
    with pytest.raises(ConfigError, match="needs triplets"):
        module.training_step({"image": images["image"], "label": batch["label"]}, 0)


def test_pair_module_and_channels_last() -> None:
    module = _module(ContrastiveLoss(1.0))
    assert module.pairing == "pair" and _module(None).pairing is None
    images = torch.rand(2, 3, 96, 96)
    fast = _module(ContrastiveLoss(1.0), channels_last=True)
    fast.load_state_dict(module.state_dict())
    assert torch.allclose(module(images), fast(images), atol=1e-5)
    assert "embedding_loss" not in module.hparams  # injected modules live in the state dict


def _fake_job(sweep: Path, n: int, fold: int, config: dict, metrics: dict) -> None:
    job = sweep / f"{n}_fold{fold}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "fold": fold}))
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "run_info.json").write_text(json.dumps({"synthetic_data": True}))


def _config(kind: str | None, margin: float = 1.0, lam: float = 2.0, gamma: float = 1.5) -> dict:
    losses = {"triplet": "TripletLoss", "pair": "ContrastiveLoss"}
    return {
        "task_name": f"smse_{kind}",
        "embedding_loss": None
        if kind is None
        else {"_target_": f"histo_lightning.losses.{losses[kind]}", "margin": margin},
        "loss": {
            "_target_": "histo_lightning.losses.ReinforcedFocalLoss",
            "lam": lam,
            "gamma": gamma,
        },
        "model": {"net": {"_target_": "histo_lightning.nets.pnn1"}},
    }


def _metrics(rr: float) -> dict:
    return {
        "test/rr": rr,
        "test/acc": rr - 0.01,
        "test/f1_benign": rr - 0.1,
        "test/f1_malignant": rr + 0.02,
        **{k: rr + d for k, d in zip(MAG_KEYS, (-0.01, 0.01, 0.02, -0.02))},
    }


def test_table_layouts_from_sweeps(tmp_path: Path) -> None:
    margins = tmp_path / "margins"
    n = 0
    for kind in ("pair", "triplet"):
        for m in (0.5, 1.0):
            for fold, rr in ((1, 0.8), (2, 0.9)):
                _fake_job(margins, n, fold, _config(kind, margin=m), _metrics(rr + m / 100))
                n += 1
    report = build_report([margins], ["smse.table3"])
    (table,) = report["tables"]
    assert [s["setting"] for s in table["settings"]] == [
        ["Pair", 0.5],
        ["Pair", 1.0],
        ["Triplet", 0.5],
        ["Triplet", 1.0],
    ]
    first = table["settings"][0]
    assert first["n_folds"] == 2 and first["mean"]["test/rr"] == pytest.approx(0.855)
    assert first["std"]["test/rr"] == pytest.approx(0.05)  # population s.d. of 0.805, 0.905
    markdown = table["sections"][0][1]
    assert "| 1 (L_p) | 0.5 | 2 | 0.855±0.050 |" in markdown
    # Table V from three experiments' sweeps; Table VII averages the magnification means and s.d.s
    sweeps = []
    for kind in ("triplet", "pair", None):
        sweep = tmp_path / f"exp_{kind}"
        for fold, rr in ((1, 0.8), (2, 0.9)):
            _fake_job(sweep, fold - 1, fold, _config(kind), _metrics(rr))
        sweeps.append(sweep)
    tables_main(
        [
            *map(str, sweeps),
            "--layout",
            "smse.table5",
            "--layout",
            "smse.table7",
            "--out",
            str(tmp_path),
        ]
    )
    written = json.loads((tmp_path / "smse_tables.json").read_text())
    table5, table7 = written["tables"]
    assert [s["setting"][0] for s in table5["settings"]] == ["Triplet", "Pair", "-"]
    assert "85.00±5.00" in table7["sections"][0]["markdown"]  # Average = mean of per-mag means
    assert "Synthetic data" in (tmp_path / "smse_tables.md").read_text()


def test_table_sweep_configs_compose() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        table3 = compose(
            "train",
            ["experiment=smse_breakhis", "hparams_search=smse_table3"],
            return_hydra_config=True,
        )
        params = table3.hydra.sweeper.params
        assert params["embedding_loss"] == "contrastive,triplet"
        assert params["embedding_loss.margin"] == "0.5,1.0,1.5,2.0"
        assert list(table3.hydra.callbacks.smse_tables.layouts) == ["smse.table3"]
        table4 = compose(
            "train",
            ["experiment=smse_breakhis", "hparams_search=smse_table4"],
            return_hydra_config=True,
        )
        grid = table4.hydra.sweeper.params["+rfl"].split(",")
        assert len(grid) == 6
        for option in grid:
            cfg = compose("train", ["experiment=smse_breakhis", f"+rfl={option}"])
            lam, gamma = option.removeprefix("lam").split("_gamma")
            assert (cfg.loss.lam, cfg.loss.gamma) == (float(lam), float(gamma.replace("p", ".")))
            assert cfg.loss._target_.endswith("ReinforcedFocalLoss")
    GlobalHydra.instance().clear()


def test_table10_is_a_sweep_and_the_old_experiments_name_it() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from histo_lightning.cli import explain
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        table10 = compose(
            "train",
            ["experiment=smse_paip", "hparams_search=smse_table10"],
            return_hydra_config=True,
        )
        params = table10.hydra.sweeper.params
        assert params["model"].split(",") == ["smse_pnn2", "smse_googlenet", "smse_resnet"]
        assert params["embedding_loss"].split(",") == ["none", "contrastive", "triplet"]
        assert list(table10.hydra.callbacks.smse_tables.layouts) == ["smse.table10"]
    GlobalHydra.instance().clear()
    message = explain(["experiment=smse_paip_resnet_ce"])
    assert message is not None and "\n" not in message
    assert "hparams_search=smse_table10" in message
    assert "model=smse_resnet embedding_loss=none" in message
