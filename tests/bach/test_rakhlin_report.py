"""The fusion/report stage (§3, Fig. 4) on given per-model probabilities, and the sweep summary in Table 1's
layout with the 2-class numbers pooled over the folds' predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from histo_lightning.data.datasets.bach import CLASS_NAMES
from histo_lightning.methods.rakhlin.metrics import binary_metrics
from histo_lightning.methods.rakhlin.pipeline import report
from histo_lightning.methods.rakhlin.tables import (
    SEED_AVERAGED,
    FoldResult,
    model_label,
    model_row,
    table1,
)
from histo_lightning.reporting.tables import write_report

LAYOUTS = ["rakhlin.table1", "rakhlin.fig4"]


def _summary(sweep: Path) -> tuple[dict, dict, str]:
    """(Table 1 rows JSON, pooled JSON, markdown) of the sweep's rakhlin_tables files."""
    [(json_path, md_path)] = write_report([sweep], LAYOUTS)
    assert json_path == sweep / "rakhlin_tables.json"
    tables = {t["layout"]: t for t in json.loads(json_path.read_text())["tables"]}
    return (
        tables["rakhlin.table1"]["rows"][0],
        tables["rakhlin.fig4"]["rows"][0],
        md_path.read_text(),
    )


def _fake_ctx(
    tmp_path: Path,
    per_model: dict,
    unlabelled: dict,
    manifest: pd.DataFrame,
    per_seed: dict | None = None,
):
    lightgbm_dir = tmp_path / "05_lightgbm"
    lightgbm_dir.mkdir()
    arrays = {"rows/test": np.arange(4), "rows/unlabelled": np.arange(4, 6)}
    for model in per_model:
        arrays[f"{model}/test"] = per_model[model]
        arrays[f"{model}/unlabelled"] = unlabelled[model]
        for seed, probs in enumerate((per_seed or {}).get(model, [])):
            arrays[f"{model}/test@seed{seed}"] = probs
    np.savez(lightgbm_dir / "probabilities.npz", **arrays)
    result = SimpleNamespace(
        path=lambda key: lightgbm_dir / "probabilities.npz", info={"models": list(per_model)}
    )
    datamodule = SimpleNamespace(sample_manifest=lambda subset: manifest, fold=3, is_synthetic=True)
    out = tmp_path / "06_report"
    out.mkdir()
    return SimpleNamespace(result=lambda name: result, datamodule=datamodule, dir=out, loggers=[])


def test_fusion_is_the_mean_of_the_models_and_the_report_is_written(tmp_path: Path) -> None:
    manifest = pd.DataFrame(
        {
            "image": ["n001.tif", "b001.tif", "is001.tif", "iv001.tif", "test0.tif", "test1.tif"],
            "label": [0, 1, 2, 3, -1, -1],
        }
    )
    a = np.array(
        [[0.7, 0.1, 0.1, 0.1], [0.1, 0.3, 0.5, 0.1], [0.1, 0.1, 0.6, 0.2], [0.2, 0.5, 0.1, 0.2]]
    )
    b = np.array(
        [[0.6, 0.2, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6], [0.1, 0.1, 0.1, 0.7]]
    )
    u_a = np.array([[0.1, 0.1, 0.1, 0.7], [0.4, 0.3, 0.2, 0.1]])
    u_b = np.array([[0.1, 0.1, 0.5, 0.3], [0.1, 0.6, 0.2, 0.1]])
    # resnet50_400's two seeds: each seed's own accuracy is logged (Table 1's cells are their mean)
    seeds = {"resnet50_400": [np.eye(4)[[0, 1, 2, 0]], np.eye(4)[[0, 0, 0, 0]]]}
    ctx = _fake_ctx(tmp_path, {"resnet50_400": a, "vgg16_650": b}, {"resnet50_400": u_a, "vgg16_650": u_b}, manifest, seeds)  # fmt: skip
    out = report(ctx, setpoints=(0.33, 0.5))
    metrics = out["metrics"]
    assert metrics["test/acc_resnet50_400@seed0"] == 0.75 and metrics["test/acc_resnet50_400@seed1"] == 0.25  # fmt: skip
    assert not any(k.startswith("test/acc_vgg16_650@") for k in metrics)
    fused = (a + b) / 2
    labels = np.arange(4)
    assert metrics["test/acc"] == pytest.approx(np.mean(fused.argmax(1) == labels))
    assert metrics["test/acc_resnet50_400"] == 0.5 and metrics["test/acc_vgg16_650"] == 0.75
    expected = binary_metrics(labels, fused, (0.33, 0.5))
    assert metrics["test/auc2"] == pytest.approx(expected["auc"])
    assert metrics["test/sensitivity2@0.33"] == pytest.approx(expected["sensitivity@0.33"])
    assert metrics["test/specificity2@0.5"] == pytest.approx(expected["specificity@0.5"])
    for name in ("roc.png", "confusion.png", "predictions.csv", "submission.csv"):
        assert (ctx.dir / name).is_file()
    predictions = pd.read_csv(ctx.dir / "predictions.csv")
    np.testing.assert_allclose(predictions[[f"p_{c}" for c in CLASS_NAMES]], fused, atol=1e-6)
    submission = pd.read_csv(ctx.dir / "submission.csv")
    assert submission.to_dict("list") == {
        "image": ["test0.tif", "test1.tif"],
        "label": [CLASS_NAMES[i] for i in ((u_a + u_b) / 2).argmax(1)],
    }


# ---- the sweep summary -------------------------------------------------------------------------------------

# Table 1 of the paper: 4-class accuracy (%) per fold
PAPER = {
    "resnet50_400": [92.0, 77.5, 86.5, 87.5, 79.5, 84.0, 85.0, 83.0, 84.0, 82.5],
    "resnet50_650": [91.0, 77.5, 86.0, 89.5, 81.0, 74.0, 85.5, 83.0, 84.5, 82.5],
    "vgg16_400": [87.5, 83.0, 81.5, 84.0, 84.0, 82.5, 80.5, 82.0, 87.5, 83.0],
    "vgg16_650": [89.5, 85.5, 78.5, 85.0, 81.0, 78.0, 81.5, 85.5, 89.0, 80.5],
    "inception_400": [93.0, 86.0, 71.5, 92.0, 85.0, 84.5, 82.5, 79.0, 79.5, 76.5],
    "inception_650": [91.0, 84.5, 73.5, 90.0, 84.0, 81.0, 82.0, 84.5, 78.0, 77.0],
}
FUSION = [92.5, 82.5, 87.5, 87.5, 87.5, 90.0, 85.0, 87.5, 87.5, 85.0]


def _fake_sweep(sweep: Path, rng: np.random.Generator) -> pd.DataFrame:
    """Ten finished rakhlin jobs whose metrics are Table 1's and whose predictions are random."""
    frames = []
    for k in range(1, 11):
        job = sweep / f"{k - 1}_fold{k}"
        (job / ".hydra").mkdir(parents=True)
        config = {
            "fold": k,
            "task_name": "rakhlin",
            "split": {"n_folds": 10},
            "rakhlin": {"setpoints": [0.33, 0.5], "carcinoma_rule": "max"},
        }
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(["experiment=rakhlin", f"fold={k}"])
        )
        metrics = {"test/acc": FUSION[k - 1] / 100, "test/acc2": 0.9}
        metrics.update({f"test/acc_{m}": v[k - 1] / 100 for m, v in PAPER.items()})
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "run_info.json").write_text(json.dumps({"synthetic_data": False, "stages": {"report": {"folder": "08_report"}}}))  # fmt: skip
        report_dir = job / "08_report"
        report_dir.mkdir()
        labels = rng.integers(0, 4, 40)
        probs = rng.dirichlet(np.ones(4), 40)
        frame = pd.DataFrame({"image": [f"x{k}_{i}.tif" for i in range(40)], "label": [CLASS_NAMES[i] for i in labels], "predicted": [CLASS_NAMES[i] for i in probs.argmax(1)]})  # fmt: skip
        for c, name in enumerate(CLASS_NAMES):
            frame[f"p_{name}"] = probs[:, c]
        frame.to_csv(report_dir / "predictions.csv", index=False)
        unlabelled = pd.DataFrame({"image": ["test0.tif", "test1.tif"]})
        for c, name in enumerate(CLASS_NAMES):
            unlabelled[f"p_{name}"] = [float(c == (2 if k <= 6 else 1)), 0.25]
        unlabelled.to_csv(report_dir / "unlabelled_probabilities.csv", index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_table1_layout_pooled_two_class_and_averaged_submission(tmp_path: Path) -> None:
    pooled_frame = _fake_sweep(tmp_path, np.random.default_rng(0))
    table, fig4, text = _summary(tmp_path)
    rows = table["rows"]
    assert list(rows) == [
        "ResNet-400",
        "ResNet-650",
        "VGG-400",
        "VGG-650",
        "Inception-400",
        "Inception-650",
        "std",
        "Model fusion",
    ]
    assert table["columns"] == [*(f"f{k}" for k in range(1, 11)), "mean", "std", SEED_AVERAGED]
    assert not table["per_seed"]  # no per-seed accuracies logged: the seed-averaged ones, said so
    # the paper's printed summary values, from its per-fold numbers (population std over folds)
    assert rows["Model fusion"]["mean"] == pytest.approx(87.25)
    assert rows["Model fusion"]["std"] == pytest.approx(2.6, abs=0.05)
    assert rows["VGG-400"]["mean"] == pytest.approx(83.55) and rows["VGG-400"]["std"] == pytest.approx(2.3, abs=0.1)  # fmt: skip
    assert [round(rows["std"][f"f{k}"], 1) for k in range(1, 11)] == [1.8, 3.5, 5.7, 2.8, 2.0, 3.7, 1.8, 2.1, 3.9, 2.7]  # fmt: skip
    assert rows["std"]["mean"] == pytest.approx(3.0, abs=0.05) and math.isnan(rows["std"]["std"])
    # 2-class numbers over the 400 pooled predictions, not averaged per fold
    labels = pooled_frame["label"].map({n: i for i, n in enumerate(CLASS_NAMES)}).to_numpy()
    probs = pooled_frame[[f"p_{n}" for n in CLASS_NAMES]].to_numpy()
    expected = binary_metrics(labels, probs, (0.33, 0.5))
    pooled = fig4["pooled"]
    assert pooled["n_images"] == 400
    assert pooled["pooled/auc"] == pytest.approx(expected["auc"])
    assert pooled["pooled/sensitivity@0.33"] == pytest.approx(expected["sensitivity@0.33"])
    for name in ("roc_pooled.png", "confusion_pooled.png", "predictions_pooled.csv"):
        assert (tmp_path / name).is_file()
    # all ten folds present: a submission averaged over every fold's models
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert submission["label"].tolist() == [
        "InSitu",
        "Normal",
    ]  # 6 folds say InSitu, 4 Benign for test0
    assert "| **Model fusion** | 92.5 | 82.5 |" in text and "over the 400 pooled" in text
    assert "logged no per-seed accuracies" in text
    # beside the paper: the fusion's mean 87.25 against 87.2 ± 2.6, ResNet-400's 84.15 against 84.2 ± 4.2
    assert "| Rakhlin et al. 2018, Table 1 | Model fusion | mean | 87.2 ± 2.6 | 87.2 ± 2.6 (n=10) | +0.0 | yes | real |" in text  # fmt: skip
    assert "| Rakhlin et al. 2018, Table 1 | ResNet-400 | mean | 84.2 ± 4.2 | 84.2 ± 3.9 (n=10) | -0.0 | yes | real |" in text  # fmt: skip
    assert "Not compared (they need split=official, the paper's own folds): f1, f2" in text
    assert "vs the best single model ResNet-400 84.2" in text


def test_incomplete_sweeps_are_summarised_without_a_submission(tmp_path: Path) -> None:
    _fake_sweep(tmp_path, np.random.default_rng(1))
    for k in (9, 10):
        (tmp_path / f"{k - 1}_fold{k}" / "metrics.json").unlink()
    table, fig4, text = _summary(tmp_path)
    assert table["columns"][:8] == [f"f{k}" for k in range(1, 9)] and fig4["pooled"]["n_folds"] == 8
    assert "submission.csv" not in fig4["files"] and not (tmp_path / "submission.csv").exists()
    assert "Missing (running or killed; not included)" in text and "8_fold9" in text
    assert model_label("inception_650") == "Inception-650" and model_label("uni_224") == "uni-224"


def test_a_model_cell_is_the_mean_over_seeds_and_its_std_over_seed_x_fold_values() -> None:
    """Rakhlin Table 1 computed both ways on a hand-made case: 2 folds × 3 seeds."""
    seed_accs = {1: [0.90, 0.80, 0.85], 2: [0.70, 0.75, 0.80]}
    averaged = {1: 0.90, 2: 0.80}  # the accuracy of the seed-averaged probabilities
    folds = [
        FoldResult(
            fold=k,
            dir=Path(f"f{k}"),
            metrics={
                "test/acc": 0.9,
                "test/acc_resnet50_400": averaged[k],
                **{f"test/acc_resnet50_400@seed{s}": v for s, v in enumerate(seed_accs[k])},
            },
            predictions=pd.DataFrame(),
            unlabelled=None,
        )
        for k in (1, 2)
    ]
    row = model_row(folds, "resnet50_400")
    # the paper's cells: per fold the mean over seeds; std over the six seed × fold values
    assert row["f1"] == pytest.approx(85.0) and row["f2"] == pytest.approx(75.0)
    assert row["mean"] == pytest.approx(80.0)
    assert row["std"] == pytest.approx(np.sqrt(250 / 6))  # 6.45; over the two fold cells it is 5.0
    assert row["n_values"] == 6 and row["per_seed"]
    # the seed-averaged model stays as the extra column
    assert row[SEED_AVERAGED] == pytest.approx(85.0)
    # without per-seed accuracies (older runs): the seed-averaged ones, std over folds
    for result in folds:
        result.metrics = {k: v for k, v in result.metrics.items() if "@seed" not in k}
    fallback = model_row(folds, "resnet50_400")
    assert (fallback["f1"], fallback["f2"], fallback["std"]) == pytest.approx((90.0, 80.0, 5.0))
    assert not fallback["per_seed"]
    assert table1(folds)["models"] == ["resnet50_400"]
