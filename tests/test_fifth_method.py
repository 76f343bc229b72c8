"""docs/architecture.md's "How to add a fifth method", followed for a toy method.

Everything the checklist asks for is written into a temporary folder, nothing into the repository: the
method package (``__init__`` with PAPER/SUMMARY/EXPERIMENTS, its LightningModule, its table layout) on
``histo_lightning.methods``' search path, and its config files (experiment, model, dataset) on Hydra's.
Without an edit to any existing file, ``python run.py --help`` lists the experiment under its paper, the
table registry finds its layout, and the experiment runs end to end.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import histo_lightning.methods
from histo_lightning.cli import CONF, usage
from histo_lightning.pipelines.runner import run_pipeline
from histo_lightning.reporting import tables

FILES = {
    # 1. the package, naming the paper and its experiments (imports nothing)
    "methods/toymethod/__init__.py": '''
        """Toy et al.: a two-layer perceptron on two Gaussian classes (a fifth method, for a test)."""

        PAPER = "Toy et al. 2026, a method in one package"
        SUMMARY = "Toy method: an MLP on two Gaussian classes"
        EXPERIMENTS = ("toymethod",)
    ''',
    # 2. its LightningModule and its table layout
    "methods/toymethod/module.py": '''
        """The toy method's LightningModule (Toy et al. Eq. 1: softmax of a two-layer perceptron)."""

        from tests.pipeline_toy import ToyClassifier


        class ToyMethodModule(ToyClassifier):
            """The toy method's module: the runner tests' MLP."""
    ''',
    "methods/toymethod/tables.py": '''
        """Toy et al.'s Table 1, registered as ``toymethod.table1``."""

        from histo_lightning.reporting.tables import register_table, table_result


        @register_table("toymethod", "table1")
        def table1(jobs):
            return table_result("toymethod.table1", "Toy Table 1", [], [], ["test/acc"])
    ''',
    # 4. the experiment (first comment line: what it runs), its model; 5. the data it reuses
    "conf/experiment/toymethod.yaml": """
        # @package _global_
        # Toy et al. Table 1: the toy MLP on two Gaussian classes, fit + test.
        defaults:
          - override /dataset: toy
          - override /model: toymethod
        task_name: toymethod
        optimized_metric: val/acc_best
    """,
    "conf/model/toymethod.yaml": """
        _target_: histo_lightning.methods.toymethod.module.ToyMethodModule
        lr: 0.05
    """,
    "conf/dataset/toy.yaml": """
        _target_: tests.pipeline_toy.ToyDataModule
        n: 48
    """,
}


@pytest.fixture
def toy_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "fifth"
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    monkeypatch.setattr(
        histo_lightning.methods,
        "__path__",
        [*histo_lightning.methods.__path__, str(root / "methods")],
    )
    monkeypatch.setattr(tables, "_REGISTRY", dict(tables._REGISTRY))
    yield root
    for name in [m for m in sys.modules if m.startswith("histo_lightning.methods.toymethod")]:
        del sys.modules[name]


def test_the_checklist_adds_a_method_without_editing_a_file(toy_method: Path, make_cfg) -> None:
    written = sorted(str(p.relative_to(toy_method)) for p in toy_method.rglob("*") if p.is_file())
    assert len(written) == 6  # 3 in the method's package, 3 config files; 0 existing files edited

    help_text = usage((CONF, toy_method / "conf"))
    block = help_text.split("Toy method: an MLP on two Gaussian classes", 1)[1]
    assert "paper: Toy et al. 2026" in block
    assert (
        "toymethod  Toy et al. Table 1: the toy MLP on two Gaussian classes, fit + test." in block
    )

    assert "toymethod.table1" in tables.layouts()

    cfg = make_cfg(
        [
            f"hydra.searchpath=[file://{toy_method / 'conf'}]",
            "experiment=toymethod",
            "trainer=cpu",
            "callbacks=none",
            "trainer.max_epochs=2",
        ]
    )
    metrics = run_pipeline(cfg)
    assert "test/acc" in metrics
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written == {"test/acc": metrics["test/acc"]}
