"""The supervised LightningModule base (docs/CONTRACTS.md C2): plain hyper-parameters, checkpoints that load with
``weights_only=True``, and ``val/<monitor>_best`` that stays right across a resume from ``last.ckpt``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo_lightning.losses import ContrastiveLoss
from histo_lightning.methods.chsnet.module import ChsnetPatchClassifier
from histo_lightning.methods.smse.module import SimilarityClassifier
from histo_lightning.metrics import BinaryClassificationMetrics, ClassificationMetrics
from histo_lightning.models import ImageClassifier
from histo_lightning.models.base import BEST_KEY, plain


class _Images(Dataset):
    """Fixed random images whose label is learnable (the mean of the first channel > 0)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=generator)
        self.labels = (self.images[:, 0].mean(dim=(1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}


class _Data(pl.LightningDataModule):
    """No shuffling, no augmentation: training is a pure function of the weights and optimiser state."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Images(32, 0), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Images(16, 1), batch_size=16)


class _Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(4, 2)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(images))


ADAM = partial(torch.optim.Adam, lr=0.05)
METRICS = partial(ClassificationMetrics, 2, ["a", "b"], patient_level=False)


def _classifier(**kwargs) -> ImageClassifier:
    settings = {"monitor": "val/loss", "monitor_mode": "max", **kwargs}
    return ImageClassifier(_Embedder(), nn.CrossEntropyLoss(), ADAM, METRICS, **settings)


def _patch_classifier(**kwargs) -> ChsnetPatchClassifier:
    # a schedule as Hydra hands it over (a DictConfig): stored as plain data
    schedule = OmegaConf.create({"milestones": [1.5], "values": [0.05, 0.01]})
    settings = {"schedule": schedule, "monitor": "val/loss", "monitor_mode": "max", **kwargs}
    return ChsnetPatchClassifier(_Embedder(), nn.CrossEntropyLoss(), ADAM, **settings)


def _similarity() -> SimilarityClassifier:
    # single images here ("w/o ε"); the pair/triplet batches are the data module's (tests/smse)
    return SimilarityClassifier(
        _Embedder(),
        nn.CrossEntropyLoss(),
        optimizer=ADAM,
        metrics=METRICS,
        monitor="val/loss",
        monitor_mode="max",
    )


def _fit(module: pl.LightningModule, folder: Path, epochs: int, resume: bool = False) -> pl.Trainer:
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=-1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    last = folder / "last.ckpt"
    trainer.fit(module, datamodule=_Data(), ckpt_path=str(last) if resume else None)
    return trainer


@pytest.mark.parametrize("make", [_classifier, _patch_classifier], ids=["image", "patch"])
def test_best_so_far_is_right_after_a_resume(tmp_path: Path, make) -> None:
    pl.seed_everything(0)
    whole = make()
    trainer = _fit(whole, tmp_path / "whole", epochs=4)
    best_key = f"{whole.log_prefix}val/loss_best"
    per_epoch = [
        torch.load(p, weights_only=True)[BEST_KEY]["value"]
        for p in sorted((tmp_path / "whole").glob("epoch=*.ckpt"))
    ]
    uninterrupted = float(trainer.callback_metrics[best_key])
    # the first epoch is the best (max) validation loss here, so a best reset at the resume would show
    assert uninterrupted == per_epoch[0] == per_epoch[-1]

    pl.seed_everything(0)
    _fit(make(), tmp_path / "split", epochs=2)
    resumed_module = make()
    resumed = _fit(resumed_module, tmp_path / "split", epochs=4, resume=True)
    assert resumed.current_epoch == 4
    assert float(resumed.callback_metrics[best_key]) == uninterrupted
    assert resumed_module.best_value == uninterrupted


@pytest.mark.parametrize(
    "make", [_classifier, _patch_classifier, _similarity], ids=["image", "patch", "smse"]
)
def test_checkpoints_hold_only_plain_data(tmp_path: Path, make) -> None:
    module = make()
    assert not {"optimizer", "scheduler", "metrics", "net", "loss"} & set(module.hparams)
    _fit(module, tmp_path, epochs=1)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)  # nothing needs pickle
    assert checkpoint[BEST_KEY]["value"] == module.best_value
    assert checkpoint["hyper_parameters"]["monitor"] == "val/loss"
    if isinstance(module, ChsnetPatchClassifier):
        assert checkpoint["hyper_parameters"]["schedule"] == {
            "milestones": [1.5],
            "values": [0.05, 0.01],
        }
        # unprefixed: the stage runner's loggers add the stage's prefix (screening/val/f1)
        assert "val/f1" in module.trainer.callback_metrics


def test_patch_classifier_precision_recall_f1_come_from_torchmetrics() -> None:
    suite = BinaryClassificationMetrics()
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    suite.update(probs, torch.tensor([1, 1, 0, 0]))
    values = {k: float(v) for k, v in suite.compute().items()}
    # TP 1, FP 1, FN 1 at p > 0.5
    assert values["precision"] == pytest.approx(0.5) and values["recall"] == pytest.approx(0.5)
    assert values["f1"] == pytest.approx(0.5) and set(values) >= {"ap", "auroc"}


def test_hyperparameters_must_be_plain() -> None:
    smse = SimilarityClassifier(
        _Embedder(), nn.CrossEntropyLoss(), ContrastiveLoss(1.0), optimizer=ADAM, metrics=METRICS
    )
    assert "embedding_loss" not in smse.hparams and smse.hparams["embedding_weight"] == 1.0
    assert plain(OmegaConf.create({"a": [1, 2]}), "x") == {"a": [1, 2]}
    with pytest.raises(TypeError, match=r"hyper-parameter x\.a is a partial"):
        plain({"a": ADAM}, "x")
    with pytest.raises(ValueError, match="monitor_mode"):
        _classifier(monitor_mode="best")
