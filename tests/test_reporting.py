"""The sweep reader, the CV summary with failed jobs, and the registry of paper-table layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from histo_lightning.methods.chsnet.tables import method_label
from histo_lightning.reporting import tables
from histo_lightning.reporting.cv_summary import POOLED_ROW, summarize, write_summary
from histo_lightning.reporting.hydra_callbacks import TableReportCallback
from histo_lightning.reporting.sweep import read_jobs
from histo_lightning.reporting.tables import build_report, layouts, main, register_table

# CHS-Net Table 3 as published: (FP, TP, FN, precision, F1) per fold
PAPER_TABLE3 = [
    (23, 153, 76, 0.8693, 0.7556),
    (10, 102, 150, 0.9107, 0.5604),
    (21, 209, 208, 0.9087, 0.6461),
    (4, 140, 149, 0.9700, 0.6467),
    (79, 273, 92, 0.7756, 0.7615),
]


def _job(
    sweep: Path,
    n: int,
    fold: int,
    config: dict,
    metrics: dict | None = None,
    info: dict | None = None,
    failure: dict | None = None,
) -> Path:
    job = sweep / f"{n}_fold{fold}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "fold": fold}))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"fold={fold}"]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "run_info.json").write_text(json.dumps({"synthetic_data": False, **(info or {})}))
    if failure is not None:
        (job / "failed.json").write_text(json.dumps(failure))
    return job


def _chsnet(cascade: bool = True, hem: bool = True, loss: str = "SemiFocalLoss") -> dict:
    return {
        "task_name": "chsnet",
        "model": {"screening": {}, "cascade": cascade, "hard_example_mining": hem},
        "loss": {"_target_": f"histo_lightning.losses.{loss}"},
    }


def _detection(fp: int, tp: int, fn: int, precision: float, f1: float) -> dict:
    return {
        "test/fp": fp,
        "test/tp": tp,
        "test/fn": fn,
        "test/precision": precision,
        "test/recall": tp / (tp + fn),
        "test/f1": f1,
    }


def _mining(fold: int) -> dict:
    return {
        "stages": {
            "mining": {
                "status": "ran",
                "folder": "02_mining",
                "metrics": {
                    "mining/fp": 100 * fold,
                    "mining/tp": 50,
                    "mining/fn": 1,
                    "mining/recall_pos": 0.99 - 0.001 * fold,
                    "mining/recall_neg": 0.87,
                    "mining/precision": 0.4,
                    "mining/f1": 0.55,
                },
            }
        }
    }


def test_failed_and_missing_jobs_are_listed_not_averaged(tmp_path: Path) -> None:
    config = {"task_name": "breakhis_baseline"}
    _job(tmp_path, 0, 1, config, {"test/acc": 0.8})
    _job(tmp_path, 1, 2, config, {"test/acc": 0.6})
    failure = {
        "error": "fold=3 is out of range:\n split defines folds 1…2",
        "type": "ConfigError",
        "traceback_file": None,
    }
    _job(tmp_path, 2, 3, config, failure=failure)
    _job(tmp_path, 3, 4, config)  # still running (or killed)
    statuses = [j.status for j in read_jobs(tmp_path)]
    assert statuses == ["finished", "finished", "failed", "missing"]

    summary = summarize(tmp_path)
    assert summary["n"] == 2 and summary["mean"]["test/acc"] == pytest.approx(0.7)
    assert summary["n_failed"] == 1
    assert summary["failed"] == [
        {
            "fold": 3,
            "dir": "2_fold3",
            "error": "ConfigError: fold=3 is out of range: split defines folds 1…2",
        }
    ]
    assert summary["missing"] == [{"fold": 4, "dir": "3_fold4"}]
    json_path, md_path = write_summary(tmp_path)
    markdown = md_path.read_text()
    assert "- fold 3 (2_fold3): ConfigError: fold=3 is out of range" in markdown
    assert "Missing (running or killed; not included): fold 4 (3_fold4)" in markdown
    assert json.loads(json_path.read_text())["failed"][0]["dir"] == "2_fold3"


def test_a_rerun_job_counts_its_newer_result(tmp_path: Path) -> None:
    job = _job(tmp_path, 0, 1, {}, failure={"error": "out of memory", "type": "RuntimeError"})
    (job / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))  # the rerun finished later
    (only,) = read_jobs(tmp_path)
    assert only.status == "finished" and only.metrics == {"test/acc": 0.9}


def test_the_ave_row_is_pooled_like_chsnet_table3(tmp_path: Path) -> None:
    for fold, row in enumerate(PAPER_TABLE3, start=1):
        _job(tmp_path, fold - 1, fold, _chsnet(), _detection(*row), _mining(fold))
    summary = summarize(tmp_path)
    pooled = summary["pooled"]
    assert (pooled["test/fp"], pooled["test/tp"], pooled["test/fn"]) == (137, 877, 675)
    # the paper's AVE. row: 0.5651 / 0.8649 / 0.6836, not the mean of the folds' F1 (0.6741)
    assert pooled["test/recall"] == pytest.approx(0.5651, abs=5e-5)
    assert pooled["test/precision"] == pytest.approx(0.8649, abs=5e-5)
    assert pooled["test/f1"] == pytest.approx(0.6836, abs=5e-5)
    assert summary["mean"]["test/f1"] == pytest.approx(0.6741, abs=5e-5)
    assert f"**{POOLED_ROW}**" in write_summary(tmp_path)[1].read_text()

    report = build_report([tmp_path], ["chsnet.table2", "chsnet.table3"])
    table2, table3 = report["tables"]
    ((_, body3),) = table3["sections"]
    assert "| Total | 137 | 877 | 675 | -/- | - | - |" in body3
    assert "| AVE. | - | - | - | 0.5651/– | 0.8649 | 0.6836 |" in body3
    assert "| 1 | 23 | 153 | 76 | 0.6681/– | 0.8693 | 0.7556 |" in body3
    ((label, body2),) = table2["sections"]
    assert label == "CHS-NET(CN+HEM+SFL)"
    assert "| AVE. | - | - | - | 0.9870/0.8700 |  |  |" in body2  # mean of the fold recalls


def test_table4_has_one_pooled_row_per_ablation(tmp_path: Path) -> None:
    ablations = {
        "sfl": _chsnet(cascade=False, hem=False),
        "chsnet": _chsnet(),
        "ce": _chsnet(loss="CrossEntropyLoss"),
        "hem": _chsnet(cascade=False),
        "fl": _chsnet(loss="FocalLoss"),
    }
    sweeps = []
    for name, config in ablations.items():
        sweep = tmp_path / name
        _job(sweep, 0, 1, config, _detection(*PAPER_TABLE3[0]))
        sweeps.append(sweep)
    _job(tmp_path / "chsnet", 1, 2, _chsnet(), failure={"error": "NaN loss", "type": "HistoError"})
    main([*map(str, sweeps), "--layout", "chsnet.table4", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "chsnet_tables.json").read_text())
    (table4,) = written["tables"]
    assert [r["setting"] for r in table4["rows"]] == [
        "CHS-NET(CN+HEM+SFL)",
        "CN+HEM+FL",
        "CN+HEM+SM",
        "HEM+SFL",
        "SFL",
    ]
    markdown = (tmp_path / "chsnet_tables.md").read_text()
    assert "| CHS-NET(CN+HEM+SFL) | 1 | 0.6681/– | 0.8693 | 0.7556 |" in markdown
    assert "NaN loss" in markdown and "1 failed" in markdown


def test_every_method_registers_its_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    names = set(layouts())
    monkeypatch.setattr(tables, "_REGISTRY", dict(tables._REGISTRY))  # the toy layout goes away
    assert {f"smse.table{n}" for n in (3, 4, 5, 6, 7, 10)} <= names
    assert {"chsnet.table2", "chsnet.table3", "chsnet.table4"} <= names
    with pytest.raises(ValueError, match=r"unknown table layout.*chsnet\.table2"):
        TableReportCallback(["table3"])

    @register_table("toy", "table1")
    def toy(jobs: list) -> dict:
        return {"layout": "toy.table1", "title": "Toy", "sections": [], "settings": []}

    assert layouts()["toy.table1"].build is toy
    with pytest.raises(ValueError, match="registered twice"):
        register_table("toy", "table1")(lambda jobs: {})
    assert method_label(_chsnet(cascade=False, hem=True, loss="FocalLoss")) == "HEM+FL"
