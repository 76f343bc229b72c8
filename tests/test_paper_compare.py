"""``python -m histo_lightning.reporting.compare``: a hand-made sweep's rows beside the papers' published
numbers (package data): ours, the paper's with its citation, the difference, inside or outside the paper's
spread, the paper rows the sweep lacks, the synthetic label of every row, and a self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from histo_lightning.reporting.compare import compare_sweeps, main, notes
from histo_lightning.reporting.cv_summary import write_summary
from histo_lightning.reporting.hydra_callbacks import PaperComparisonCallback
from histo_lightning.reporting.sweep import read_job
from histo_lightning.reporting.tables import write_report

# SMSE Table VI as printed (%): RR, ACC, F1 benign, F1 malignant per fold
TABLE6 = {
    1: (86.27, 85.71, 79.59, 89.01),
    2: (85.46, 83.35, 73.26, 87.92),
    3: (92.29, 92.51, 88.42, 94.46),
    4: (83.61, 84.36, 77.09, 88.13),
}
# the smallest valid PNG (1×1)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def smse_job(sweep: Path, fold: int, values: tuple | None, synthetic: bool = True) -> Path:
    """A finished (or, without values, killed) smse_breakhis job: PNN1, triplets m = 1, RFL (2, 1.5)."""
    job = sweep / f"{fold - 1}_fold{fold}"
    (job / ".hydra").mkdir(parents=True)
    config = {
        "task_name": "smse_breakhis",
        "fold": fold,
        "model": {"net": {"_target_": "histo_lightning.nets.pnn.pnn1"}},
        "loss": {"_target_": "histo_lightning.losses.ReinforcedFocalLoss", "lam": 2, "gamma": 1.5},
        "embedding_loss": {"_target_": "histo_lightning.losses.TripletLoss", "margin": 1.0},
        "dataset": {"synthetic": {"preset": "demo"} if synthetic else None},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"fold={fold}"]))
    if values is not None:
        names = ("test/rr", "test/acc", "test/f1_benign", "test/f1_malignant")
        (job / "metrics.json").write_text(json.dumps({n: v / 100 for n, v in zip(names, values)}))
        (job / "run_info.json").write_text(json.dumps({"synthetic_data": synthetic}))
        (job / "roc.png").write_bytes(PNG)
    return job


def test_compare_writes_rows_beside_the_paper_and_a_self_contained_page(
    tmp_path: Path, capsys
) -> None:
    sweep = tmp_path / "smse_breakhis" / "multiruns" / "2026-01-01_00-00-00"
    for fold, values in TABLE6.items():
        # fold 3 lands 25 points below the paper's RR
        shifted = (values[0] - 25.0, *values[1:]) if fold == 3 else values
        smse_job(sweep, fold, shifted)
    killed = smse_job(sweep, 5, None)  # killed: the paper's fold 5 row is missing
    # no run_info.json: the config's dataset.synthetic says
    assert read_job(killed).synthetic is True
    (sweep / "tsne.png").write_bytes(PNG)
    main([str(sweep)])
    md = (sweep / "paper_vs_ours.md").read_text()
    lines = {
        tuple(c.strip() for c in line.strip("|").split("|")[:3]): line
        for line in md.splitlines()
        if line.startswith("| Sun et al.")
    }
    # the paper's fold 1 RR, ours the same: Δ 0, no spread printed for a fold
    fold1 = lines[("Sun et al., Table VI", "1", "RR (%)")]
    assert "| 86.27 | 86.27 (n=1) | +0.00 | no spread published | synthetic |" in fold1
    assert "| 92.29 | 67.29 (n=1) | -25.00 |" in lines[("Sun et al., Table VI", "3", "RR (%)")]
    # the mean over our four folds against 88.40 ± 4.17 (population s.d. over folds): 7.7 below, outside
    mean = lines[("Sun et al., Table VI", "Mean ± st.d.", "RR (%)")]
    ours = [v[0] for v in TABLE6.values()]
    ours[2] -= 25.0
    expected = sum(ours) / 4
    assert f"| 88.40 ± 4.17 | {expected:.2f} ± " in mean and "(n=4)" in mean
    assert f"| {expected - 88.40:+.2f} | no |" in mean
    accuracy = lines[("Sun et al., Table VI", "Mean ± st.d.", "ACC (%)")]
    assert "| yes |" in accuracy  # the untouched ACC: 86.48 against 87.69 ± 4.01
    # Table III: our setting is row No. 2 m = 1.0, the same mean in the paper's unit
    row = lines[("Sun et al., Table III", "2 (L_t), m=1.0", "RR")]
    assert f"| 0.884 ± 0.042 | {expected / 100:.3f} ± " in row and "| no |" in row
    assert "**Missing** (the paper has them, these sweeps do not): 5" in md
    assert "**Missing** (the paper has them, these sweeps do not): 1 (L_p), m=0.5" in md
    assert "Other methods in the paper's table (not implemented here): ORB [40]" in md
    # every comparison line says synthetic; the page says it too
    table_lines = [line for line in md.splitlines() if line.startswith("| Sun et al.")]
    assert table_lines and all("| synthetic |" in line for line in table_lines)
    assert "SYNTHETIC data" in md
    page = (sweep / "paper_vs_ours.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # the sweep's t-SNE and four jobs' ROC
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # no external asset
    assert "<td>Sun et al., Table VI</td><td>1</td><td>RR (%)</td>" in page
    assert "wrote" in capsys.readouterr().out
    # the sweep summaries show the same comparison, and the CV summary points to it
    [(_, tables_md)] = write_report([sweep], ["smse.table6"])
    assert "### Sun et al., Table VI beside `smse.table6`" in tables_md.read_text()
    _, cv_md = write_summary(sweep)
    assert (
        "`paper_vs_ours.md` and `paper_vs_ours.html` of this sweep (Sun et al.)"
        in cv_md.read_text()
    )


def test_a_real_and_a_synthetic_sweep_together_and_a_sweep_no_paper_covers(tmp_path: Path) -> None:
    real = tmp_path / "a"
    synthetic = tmp_path / "b"
    smse_job(real, 1, TABLE6[1], synthetic=False)
    smse_job(synthetic, 2, TABLE6[2], synthetic=True)
    report = compare_sweeps([real, synthetic], ["smse.table6"])
    [comparison] = report["comparisons"]
    data = {line["row"]: line["data"] for line in comparison["lines"]}
    assert data["1"] == "real" and data["2"] == "synthetic" and data["Mean ± st.d."] == "mixed"
    assert report["synthetic_data"] == "mixed"
    # a sweep of an experiment no paper table summarises: the file says so, nothing fails
    other = tmp_path / "c"
    job = other / "0_fold1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task_name": "toy", "fold": 1}))
    (job / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    main([str(other)])
    assert "No paper table applies" in (other / "paper_vs_ours.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_the_sweep_callback_writes_the_comparison(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    sweep = tmp_path / "smse_breakhis" / "multiruns" / "t"
    smse_job(sweep, 1, TABLE6[1])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "mode": "MULTIRUN"}})
    PaperComparisonCallback().on_multirun_end(config)
    assert (sweep / "paper_vs_ours.md").is_file() and (sweep / "paper_vs_ours.html").is_file()
    defaults = yaml.safe_load(Path("conf/hydra/default.yaml").read_text())
    assert defaults["callbacks"]["paper_vs_ours"]["_target_"].endswith("PaperComparisonCallback")


# CHS-Net Table 3 as printed: FP, TP, FN per fold
TABLE3 = {
    1: (23, 153, 76),
    2: (10, 102, 150),
    3: (21, 209, 208),
    4: (4, 140, 149),
    5: (79, 273, 92),
}


def test_the_papers_own_chsnet_counts_reproduce_its_ave_row(tmp_path: Path) -> None:
    """Jobs whose detection counts are Table 3's: every compared cell is the paper's (Δ 0), the pooled
    AVE. lies within the spread derived from the paper's folds, Table 4 has no spread."""
    config = {
        "task_name": "chsnet",
        "model": {"screening": {}, "cascade": True, "hard_example_mining": True},
        "loss": {"_target_": "histo_lightning.losses.SemiFocalLoss"},
    }
    for fold, (fp, tp, fn) in TABLE3.items():
        job = tmp_path / f"{fold - 1}_fold{fold}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "fold": fold}))
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        metrics = {"test/fp": fp, "test/tp": tp, "test/fn": fn, "test/precision": precision}
        metrics |= {"test/recall": recall, "test/f1": 2 * tp / (2 * tp + fp + fn)}
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "run_info.json").write_text(json.dumps({"synthetic_data": False}))
    report = compare_sweeps([tmp_path])
    by_table = {c["table"]: c for c in report["comparisons"]}
    assert set(by_table) == {"Table 3", "Table 4"}  # no mining report: Table 2 does not apply
    table3 = by_table["Table 3"]
    compared = [line for line in table3["lines"] if line["ours"] is not None]
    assert len(compared) == 5 * 6 + 3 + 3  # folds: FP TP FN recall precision F1; Total; AVE.
    # every cell is the paper's, but fold 4's printed precision 0.9700: its counts give 140/144 = 0.9722
    off = [(x["row"], x["column"]) for x in compared if abs(x["difference"]) >= 5e-5]
    assert off == [("4", "Precision")]
    assert "On the paper's row 4: precision printed 0.9700" in "\n".join(notes(table3))
    ave = {line["column"]: line for line in compared if line["row"] == "AVE."}
    assert ave["Precision"]["within"] and ave["Precision"]["spread_derived"]
    assert {line["data"] for line in table3["lines"]} == {"real"}
    assert table3["missing"] == []
    [line] = [x for x in by_table["Table 4"]["lines"] if x["column"] == "F1 score" and x["row"] == "CHS-NET(CN+HEM+SFL)"]  # fmt: skip
    assert line["within"] is None and line["paper"] == 0.7556  # one fold in the paper, no spread
    assert by_table["Table 4"]["missing"] == ["CN+HEM+FL", "CN+HEM+SM", "HEM+SFL", "SFL"]
