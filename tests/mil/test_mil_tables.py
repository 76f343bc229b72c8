"""Li et al.'s Table 1/2 layout (``mil.table1``/``mil.table2`` in the table registry) over a sweep: per
repetition the mean over folds, then mean ± standard error over repetitions; one row per setting (every
override that differs), and the metrics pooled over the folds' test bags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from histo_lightning.methods.li_mil.tables import write_tables
from histo_lightning.reporting.sweep import read_jobs, sweep_folders
from histo_lightning.reporting.tables import build_report, layouts

COLON = "histo_lightning.data.datasets.colon.ColonDataModule"


def job(
    sweep: Path,
    n: int,
    method: str,
    fold: int,
    repeat: int,
    acc: float | None,
    overrides: tuple[str, ...] = (),
    bags: tuple[tuple[int, float], ...] | None = None,
) -> Path:
    """A MIL job (finished when ``acc`` is given); ``bags``: its test bags' (label, probability)."""
    folder = sweep / f"{n}_{method}_fold{fold}_r{repeat}"
    (folder / ".hydra").mkdir(parents=True)
    config = {"task_name": method, "fold": fold, "repeat": repeat, "dataset": {"_target_": COLON}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    listed = [f"experiment={method}", *overrides, f"fold={fold}", f"repeat={repeat}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(listed))
    info = {"data": {"dataset": "colon_synthetic-abc"}, "synthetic_data": True}
    if bags is not None:
        info["stages"] = {"test": {"folder": "03_test"}}
        (folder / "03_test").mkdir()
        frame = pd.DataFrame(bags, columns=["label", "prob"])
        frame.assign(pred=(frame["prob"] >= 0.5).astype(int)).to_csv(folder / "03_test" / "predictions.csv", index=False)  # fmt: skip
    (folder / "run_info.json").write_text(json.dumps(info))
    if acc is not None:
        (folder / "metrics.json").write_text(json.dumps({"test/acc": acc, "test/fpr": 1 - acc}))
    return folder


def test_table_means_over_folds_then_mean_and_standard_error_over_repeats(tmp_path: Path) -> None:
    assert {"mil.table1", "mil.table2"} <= set(layouts())
    n = 0
    # mil_aw: repeat 1 folds 0.8, 0.6 (mean 0.7); repeat 2 folds 0.9, 0.9 (mean 0.9); repeat 3 fold 1.0
    for repeat, values in ((1, (0.8, 0.6)), (2, (0.9, 0.9)), (3, (1.0,))):
        for fold, value in enumerate(values, start=1):
            job(tmp_path, n, "mil_aw", fold, repeat, value)
            n += 1
    job(tmp_path, n, "mil_hnm", 1, 1, 0.5)
    job(tmp_path, n + 1, "mil_hnm", 2, 1, None)  # still running
    job(tmp_path, n + 2, "breakhis_baseline", 1, 1, 0.1)  # not a MIL job
    report = build_report([tmp_path], ["mil.table1"])
    [table] = report["tables"]
    rows = table["rows"]
    assert list(rows) == ["mil_aw", "mil_hnm"]  # the paper's order
    means = [0.7, 0.9, 1.0]
    se = math.sqrt(sum((m - sum(means) / 3) ** 2 for m in means) / 2) / math.sqrt(3)
    assert rows["mil_aw"]["test/acc"]["mean"] == pytest.approx(sum(means) / 3)
    assert rows["mil_aw"]["test/acc"]["se"] == pytest.approx(se)
    assert rows["mil_hnm"]["test/acc"]["se"] is None  # one repetition: no standard error
    assert "colon_synthetic-abc" in table["title"]

    [(_, md)] = write_tables(tmp_path)
    text = md.read_text()
    assert md.name == "mil_tables.md"
    assert "| Our Model | 0.867 ± 0.088 |" in text  # the paper's row names (package data)
    assert "| Our Model+FMB | 0.500 ± – |" in text and "Missing (running or killed" in text
    assert "standard error" in text and "population standard deviation" not in text


def test_jobs_of_one_sweep_under_other_task_names_are_found(tmp_path: Path) -> None:
    own = tmp_path / "train" / "multiruns" / "2026-01-01_00-00-00"
    own.mkdir(parents=True)
    job(tmp_path / "mil_aw" / "multiruns" / own.name, 0, "mil_aw", 1, 1, 0.5)
    job(tmp_path / "mil_aw" / "multiruns" / "another_sweep", 0, "mil_aw", 1, 1, 0.9)
    folders = sweep_folders(own)
    assert folders[0] == own and len(folders) == 2 and len(read_jobs(folders)) == 1
    [(_, md)] = write_tables(own)
    assert md.parent.name == own.name and md.parent.parent.parent.name == "mil_aw"
    assert write_tables(tmp_path / "nothing" / "multiruns" / "x") == []


def test_two_settings_of_one_experiment_are_two_rows_and_folds_pool(tmp_path: Path) -> None:
    """``model.net.aw_factor=2,0.5`` in one sweep: one row each. Pooled: every fold's test bags at once."""
    # aw_factor=2: fold 1 calls both positives right; fold 2 calls no bag positive (precision 0/0 → 0)
    folds = {
        "2": {1: ((1, 0.9), (1, 0.8), (0, 0.2)), 2: ((1, 0.3), (0, 0.1), (0, 0.4))},
        "0.5": {1: ((1, 0.9), (0, 0.7), (0, 0.1)), 2: ((1, 0.6), (1, 0.2), (0, 0.3))},
    }
    n = 0
    for factor, per_fold in folds.items():
        for fold, bags in per_fold.items():
            acc = sum((p > 0.5) == y for y, p in bags) / len(bags)
            path = job(
                tmp_path, n, "mil_aw", fold, 1, acc, (f"model.net.aw_factor={factor}",), bags
            )
            metrics = json.loads((path / "metrics.json").read_text())
            positives = [(y, p > 0.5) for y, p in bags]
            called = sum(c for _, c in positives)
            tp = sum(1 for y, c in positives if y and c)
            metrics["test/precision"] = (
                tp / called if called else 0.0
            )  # torchmetrics' zero_division=0
            (path / "metrics.json").write_text(json.dumps(metrics))
            n += 1
    report = build_report([tmp_path], ["mil.table1"])
    [table] = report["tables"]
    rows = table["rows"]
    assert list(rows) == ["mil_aw (model.net.aw_factor=0.5)", "mil_aw (model.net.aw_factor=2)"]
    two = rows["mil_aw (model.net.aw_factor=2)"]
    # fold mean: precision (1.0 + 0.0) / 2, the fold without a positive call counted
    assert two["test/precision"]["mean"] == pytest.approx(0.5)
    assert two["folds_without_positive_call"] == 1
    # pooled: 2 positive calls of 6 bags, both right; recall 2 of 3 positives
    assert two["pooled"]["test/precision"]["mean"] == pytest.approx(1.0)
    assert two["pooled"]["test/recall"]["mean"] == pytest.approx(2 / 3)
    assert two["pooled"]["test/acc"]["mean"] == pytest.approx(5 / 6)
    half = rows["mil_aw (model.net.aw_factor=0.5)"]
    assert half["pooled"]["test/precision"]["mean"] == pytest.approx(2 / 3)
    assert half["folds_without_positive_call"] == 0
    [(_, md)] = write_tables(tmp_path)
    text = md.read_text()
    assert "| Our Model (model.net.aw_factor=2) | 0.833 ± – | 0.500 ± – |" in text
    assert "Pooled over the folds of each repetition" in text and "zero_division=0" in text
    # the paper comparison under the table: both settings beside "Our Model", fold mean and pooled
    assert "Our Model (model.net.aw_factor=0.5), pooled over folds" in text
    assert "| Li et al., Table 1 | Our Model | Precision | 0.912 ± 0.010 | 0.500 (n=1) | -0.412 | no |" in text  # fmt: skip


def test_the_mining_table_counts_folds_without_false_positive_bags(tmp_path: Path) -> None:
    """Per row: folds with no false-positive bag (there SB/MB/FMB equal Our Model), mean FP bags, hard
    negatives and generated bags, folds with a capped generated bag, from each job's run_info.json."""
    sweep = tmp_path / "sweep"
    # (mine_on, fold, FP bags, hard negatives, generated bags, capped bags)
    runs = [
        ("train", 1, 0, 0, 0, 0),
        ("train", 2, 2, 10, 2, 2),
        ("out_of_fold", 1, 4, 30, 4, 1),
        ("out_of_fold", 2, 6, 50, 6, 0),
    ]
    for n, (mine_on, fold, fp, hard, made, capped) in enumerate(runs):
        folder = job(sweep, n, "mil_hnm", fold, 1, 0.5, (f"method.hnm.mine_on={mine_on}",))
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        config["hnm"] = {"mine_on": mine_on}
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        info = json.loads((folder / "run_info.json").read_text())
        info["stages"] = {
            "mine": {"metrics": {"mining/false_positive_bags": fp, "mining/hard_negatives": hard}},
            "generate": {"metrics": {"generate/bags": made, "generate/capped_bags": capped}},
        }
        (folder / "run_info.json").write_text(json.dumps(info))
    job(sweep, 9, "mil_aw", 1, 1, 0.6)  # no mining: no row in the mining table
    report = build_report([sweep], ["mil.table1"])
    rows = report["tables"][0]["rows"]
    train = rows["mil_hnm (method.hnm.mine_on=train)"]["mining"]
    assert train == {
        "folds": 2,
        "folds_without_false_positive_bag": 1,
        "mean_false_positive_bags": 1.0,
        "mean_hard_negatives": 5.0,
        "mean_generated_bags": 1.0,
        "folds_with_capped_bags": 1,
        "mine_on": "train",
    }
    oof = rows["mil_hnm (method.hnm.mine_on=out_of_fold)"]["mining"]
    assert oof["folds_without_false_positive_bag"] == 0 and oof["mean_hard_negatives"] == 40.0
    assert "mining" not in rows["mil_aw"]
    [(_, md)] = write_tables(sweep)
    text = md.read_text()
    assert "folds with no FP bag" in text and "| 1 | 1.00 | 5.0 | 1.00 | 1 |" in text
