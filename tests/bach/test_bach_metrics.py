"""BACH metrics and reports (§3, Fig. 4): the carcinoma score, setpoints, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histo_lightning.errors import ConfigError
from histo_lightning.methods.rakhlin.metrics import (
    bach_metrics,
    binary_metrics,
    carcinoma_score,
    four_class_confusion,
)
from histo_lightning.methods.rakhlin.report import write_report, write_submission


def test_carcinoma_score_is_the_authors_max_rule() -> None:
    probs = np.array([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.05, 0.45], [0.4, 0.0, 0.3, 0.3]])
    np.testing.assert_allclose(carcinoma_score(probs), [0.3 / 0.8, 0.45 / 0.7, 0.3 / 0.7])
    np.testing.assert_allclose(carcinoma_score(probs, rule="sum"), [0.4, 0.5, 0.6])
    with pytest.raises(ConfigError, match="carcinoma rule"):
        carcinoma_score(probs, rule="mean")


def test_two_class_accuracy_is_the_mapped_argmax_and_score_above_half() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=500)
    labels = rng.integers(0, 4, size=500)
    metrics = binary_metrics(labels, probs)
    by_score = np.mean((carcinoma_score(probs) > 0.5) == (labels >= 2))
    assert metrics["acc"] == pytest.approx(by_score)
    assert metrics["acc"] == pytest.approx(np.mean((probs.argmax(1) >= 2) == (labels >= 2)))


def test_setpoints_known_answer() -> None:
    # carcinoma scores 0.9, 0.6, 0.4, 0.2 for carcinomas; 0.45, 0.3, 0.1, 0.05 for the others
    scores = np.array([0.9, 0.6, 0.4, 0.2, 0.45, 0.3, 0.1, 0.05])
    labels = np.array([2, 3, 2, 3, 0, 1, 0, 1])
    probs = np.stack([1 - scores, np.zeros(8), scores, np.zeros(8)], axis=1)  # max rule → score
    np.testing.assert_allclose(carcinoma_score(probs), scores)
    metrics = binary_metrics(labels, probs, setpoints=(0.33, 0.5))
    assert metrics["sensitivity@0.33"] == 0.75 and metrics["specificity@0.33"] == 0.75
    assert metrics["sensitivity@0.5"] == 0.5 and metrics["specificity@0.5"] == 1.0
    assert metrics["acc"] == 0.75
    # AUC: of the 16 (carcinoma, other) pairs, those ranked right: 4 + 4 + 3 + 2 = 13
    assert metrics["auc"] == pytest.approx(13 / 16)


def test_bach_metrics_keys_and_confusion() -> None:
    labels = np.array([0, 1, 2, 3, 3])
    fused = np.eye(4)[[0, 1, 3, 3, 2]]
    model = np.eye(4)[[0, 0, 2, 3, 3]]
    metrics = bach_metrics(labels, fused, {"resnet50-400": model})
    assert metrics["acc4"] == pytest.approx(0.6) and metrics["acc4/resnet50-400"] == pytest.approx(
        0.8
    )
    assert metrics["acc2"] == 1.0
    assert {"auc2", "sensitivity2@0.33", "specificity2@0.33", "sensitivity2@0.5"} <= metrics.keys()
    confusion = four_class_confusion(labels, fused)
    assert confusion.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]]


def test_report_and_submission_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 10)
    fused = rng.dirichlet(np.ones(4), size=40) + 0.8 * np.eye(4)[labels]
    fused /= fused.sum(1, keepdims=True)
    images = [f"img{i}.tif" for i in range(40)]
    metrics = write_report(tmp_path / "report", images, labels, fused, {"m": fused}, title="fold 1")
    for name in ("roc.png", "confusion.png"):
        with Image.open(tmp_path / "report" / name) as png:
            assert png.format == "PNG" and png.size[0] > 300
    table = pd.read_csv(tmp_path / "report" / "predictions.csv")
    assert len(table) == 40 and table["image"][0] == "img0.tif" and table["label"][0] == "Normal"
    assert (table["predicted"] == table["predicted/m"]).all()
    assert metrics["acc4"] == pytest.approx((table["label"] == table["predicted"]).mean())
    path = write_submission(tmp_path / "submission.csv", ["test0.tif", "test1.tif"], fused[[0, 35]])
    assert path.read_text().splitlines() == [
        "image,label",
        "test0.tif,Normal",
        "test1.tif,Invasive",
    ]
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "report").glob(".*.tmp"))
