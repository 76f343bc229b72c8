"""A tiny data module, model, function and crash switch for the stage-runner tests (seconds, no images).

Importable as ``tests.pipeline_toy`` from the repository root, so configs can name these targets.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_lightning.data.transforms import EpochSeededLoader, worker_init
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.io import write_text_atomic


class ToySamples(Dataset):
    """Samples; with ``noise``, each draw adds Gaussian noise (an augmentation, drawn where it is loaded:
    the main process or a DataLoader worker)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, noise: float = 0.0) -> None:
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self.x[i] + self.noise * torch.randn(self.x.shape[1]) if self.noise else self.x[i]
        return {"x": x, "label": self.y[i], "index": i}


class ToyDataModule(pl.LightningDataModule):
    """Two Gaussian classes in 8 dimensions; ``n`` samples split 50/25/25 (or no validation). Training
    samples get noise (``noise``); the training loader is seeded by epoch like every data module's."""

    def __init__(
        self,
        n: int = 96,
        seed: int = 0,
        val: bool = True,
        batch_size: int = 8,
        noise: float = 0.1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 2, n)
        self.x = rng.normal(size=(n, 8)) + self.y[:, None] * 1.5
        self.val = val
        self.batch_size = batch_size
        self.noise = noise
        self.num_workers = num_workers
        self.seed = seed
        self.skipped: list = []
        idx = np.arange(n)
        self.subsets = {
            "train": idx[: n // 2],
            "val": idx[n // 2 : 3 * n // 4] if val else idx[:0],
            "test": idx[3 * n // 4 :],
        }

    name = "toy"
    is_synthetic = True

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "n": {k: len(v) for k, v in self.subsets.items()}}

    def fingerprint(self) -> str:
        return f"toy-{len(self.y)}-{self.seed}-{self.val}"

    def has_validation(self) -> bool:
        return len(self.subsets["val"]) > 0

    def _dataset(self, subset: str) -> ToySamples:
        rows = self.subsets[subset]
        return ToySamples(self.x[rows], self.y[rows])

    def predict_dataset(self, subset: str) -> ToySamples:
        return self._dataset(subset)

    def sample_manifest(self, subset: str) -> pd.DataFrame:
        rows = self.subsets[subset]
        return pd.DataFrame(
            {
                "index": np.arange(len(rows)),
                "origin": [f"sample{r}" for r in rows],
                "patient": rows,
                "label": self.y[rows],
            }
        )

    def train_dataloader(self) -> DataLoader:
        rows = self.subsets["train"]
        return EpochSeededLoader(
            ToySamples(self.x[rows], self.y[rows], noise=self.noise),
            owner=self,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            worker_init_fn=worker_init,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_validation():
            return []
        return DataLoader(self._dataset("val"), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("test"), batch_size=self.batch_size)


class ToyClassifier(pl.LightningModule):
    """A 2-layer MLP with dropout before its head and a per-step learning-rate schedule;
    ``predict_step`` returns its hidden features."""

    def __init__(
        self, lr: float = 0.05, hidden: int = 4, monitor: str = "val/acc", dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.Tanh())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 2))
        self.best = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self(batch["x"]), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", (self(batch["x"]).argmax(1) == batch["label"]).float().mean())
        return loss

    def _acc(self, batch: dict) -> torch.Tensor:
        return (self(batch["x"]).argmax(1) == batch["label"]).float().mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/acc", self._acc(batch))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.best = max(self.best, float(self.trainer.callback_metrics["val/acc"]))
        self.log("val/acc_best", self.best)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/acc", self._acc(batch))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        crash_point("predict", batch_idx)
        return {"index": batch["index"], "features": self.body(batch["x"])}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        crash_point("fit", self.trainer.global_step)

    def on_train_epoch_start(self) -> None:
        crash_point("epoch_start", self.current_epoch)

    def configure_optimizers(self) -> dict[str, Any]:
        # a per-step schedule over the whole fit, as the real models have: reading
        # estimated_stepping_batches makes Lightning build the training iterator before a resumed fit's
        # loop state is restored
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1 - 0.5 * step / steps
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class ToyEncoder(pl.LightningModule):
    """A frozen "encoder" with fixed weights and a fingerprint: its features go to a SHARED store."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.projection = nn.Linear(8, dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.linspace(-1, 1, 8 * dim).reshape(dim, 8))
            self.projection.bias.zero_()

    def fingerprint(self) -> dict[str, Any]:
        return {"encoder": "toy", "dim": self.projection.out_features}

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        crash_point("encode", batch_idx)
        time.sleep(float(os.environ.get("TOY_ENCODE_DELAY", "0")))  # a slow encoder (sweep tests)
        return {"index": batch["index"], "features": torch.tanh(self.projection(batch["x"]))}


class SimulatedCrash(RuntimeError):
    """Raised by :func:`crash_point` where ``TOY_CRASH=<where>:<count>`` says."""


def crash_point(where: str, count: int) -> None:
    """Crash once when ``TOY_CRASH`` is ``<where>:<count>`` (the tests set and clear it)."""
    if os.environ.get("TOY_CRASH") == f"{where}:{count}":
        raise SimulatedCrash(f"simulated crash in {where} at {count}")


def mean_feature_norm(ctx: Any, scale: float = 1.0) -> dict[str, Any]:
    """A function stage: reads the predict stage's cache and reports its mean feature norm."""
    cache = FeatureCache.reopen(ctx.result("embed").path("cache"))
    features = np.asarray(cache.features(), dtype=np.float64)
    norm = float(np.linalg.norm(features, axis=1).mean()) * scale
    write_text_atomic(ctx.dir / "norm.txt", f"{norm}\n")
    return {"metrics": {"mean_norm": norm}, "outputs": {"norm_file": "norm.txt"}}


def shared_feature_norm(ctx: Any) -> dict[str, Any]:
    """A function stage reading the shared store of the ``encode`` stage (every row must be there)."""
    cache = FeatureCache.reopen(ctx.result("encode").path("cache"), require_complete=True)
    features = np.asarray(cache.features(), dtype=np.float64)
    return {"metrics": {"shared_norm": float(np.linalg.norm(features, axis=1).mean())}}


TOY_PIPELINE = {
    "name": "toy",
    "stages": {
        "fit": {
            "kind": "fit",
            "module": {"_target_": "tests.pipeline_toy.ToyClassifier", "lr": 0.05},
            "max_epochs": 3,
        },
        "embed": {
            "kind": "predict",
            "from": "fit",
            "subset": "test",
            "batch_size": 4,
            "output": {"flush_every": 4, "dtype": "float32"},
        },
        "report": {
            "kind": "function",
            "fn": "tests.pipeline_toy.mean_feature_norm",
            "kwargs": {"scale": 1.0},
        },
    },
}


# a pipeline with a SHARED store (a frozen encoder over the training samples) before the toy stages
SHARED_PIPELINE = {
    "name": "toy with a shared store",
    "stages": {
        "encode": {
            "kind": "predict",
            "module": {"_target_": "tests.pipeline_toy.ToyEncoder"},
            "subset": "train",
            "batch_size": 4,
            "output": {"shared": True, "flush_every": 4, "dtype": "float32"},
        },
        **TOY_PIPELINE["stages"],
        "shared_report": {"kind": "function", "fn": "tests.pipeline_toy.shared_feature_norm"},
    },
}


def random_draws(ctx: Any, label: str = "") -> dict[str, Any]:
    """A function stage that draws from Python's, numpy's and torch's global generators (as a K-means or a
    t-SNE would) and reports the draws."""
    import random

    draws = {
        "python": random.random(),
        "numpy": float(np.random.rand()),  # noqa: NPY002 (the global stream under test)
        "torch": float(torch.rand(1)),
    }
    return {"metrics": draws, "label": label}


def train_on_class(ctx: Any, label: int = 1) -> None:
    """A data hook: this stage trains on the samples of one class only (in its own view)."""
    view = ctx.datamodule
    rows = view.subsets["train"]
    view.subsets = {**view.subsets, "train": rows[view.y[rows] == label]}


def training_samples(ctx: Any) -> dict[str, Any]:
    """A function stage reporting how many training samples its data view holds."""
    return {"metrics": {"train_samples": len(ctx.datamodule.subsets["train"])}}
