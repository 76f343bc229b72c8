"""Li et al.'s Table 1/2 layout (``mil.table1``/``mil.table2`` in the table registry) over a sweep: per
repetition the mean over folds, then mean ± standard error over repetitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from histo_lightning.reporting.mil_tables import sweep_folders, write_tables
from histo_lightning.reporting.sweep import read_jobs
from histo_lightning.reporting.tables import build_report, layouts

COLON = "histo_lightning.data.colon.ColonDataModule"


def job(sweep: Path, n: int, method: str, fold: int, repeat: int, acc: float | None) -> None:
    folder = sweep / f"{n}_{method}_fold{fold}_r{repeat}"
    (folder / ".hydra").mkdir(parents=True)
    config = {"task_name": method, "fold": fold, "repeat": repeat, "dataset": {"_target_": COLON}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"fold={fold}"]))
    (folder / "run_info.json").write_text(
        json.dumps({"data": {"dataset": "colon_synthetic-abc"}, "synthetic_data": True})
    )
    if acc is not None:
        (folder / "metrics.json").write_text(json.dumps({"test/acc": acc, "test/fpr": 1 - acc}))


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
    assert "| Our Model (softsign + AW) | 0.867 ± 0.088 |" in text
    assert "| Our Model + FMB | 0.500 ± – |" in text and "Missing (running or killed" in text
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
