"""A non-finite loss stops the fit with one line naming stage, epoch and batch; BatchNorm and batches of 1."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from histo_lightning.callbacks import StopOnNonFiniteLoss
from histo_lightning.errors import ConfigError, HistoError, NonFiniteLossError
from histo_lightning.utils.batchnorm import check_training_batch_size, lone_last_batch


class _Regression(pl.LightningModule):
    """Linear regression whose targets are NaN at the given sample indices."""

    stage = "screening"

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.steps_seen = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.steps_seen += 1
        return nn.functional.mse_loss(self.layer(x)[:, 0], y)

    def on_before_optimizer_step(self, optimizer) -> None:
        for p in self.parameters():  # a NaN batch leaves the weights alone (as a loss scaler would)
            p.grad = torch.nan_to_num(p.grad, nan=0.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(nan_batches: set[int], patience: int, tmp_path) -> _Regression:
    n, batch = 40, 4
    y = torch.zeros(n)
    for b in nan_batches:
        y[b * batch : (b + 1) * batch] = float("nan")
    loader = DataLoader(TensorDataset(torch.randn(n, 2), y), batch_size=batch)
    model = _Regression()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[StopOnNonFiniteLoss(patience=patience)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    return model


def test_first_nan_loss_stops_the_fit_naming_stage_epoch_and_batch(tmp_path) -> None:
    with pytest.raises(NonFiniteLossError) as caught:
        _fit({3}, patience=1, tmp_path=tmp_path / "01_screening")  # a stage folder of the runner
    message = str(caught.value)
    assert isinstance(caught.value, HistoError)
    assert "loss is nan in stage screening, epoch 0, batch 3" in message
    assert "patience=1" in message and "\n" not in message


def test_patience_counts_consecutive_non_finite_losses(tmp_path) -> None:
    # two isolated NaN batches are tolerated with patience 2; three in a row are not
    model = _fit({2, 5}, patience=2, tmp_path=tmp_path)
    assert model.steps_seen == 20  # both epochs ran to the end
    with pytest.raises(NonFiniteLossError, match=r"batch 6 .*3 in a row"):
        _fit({4, 5, 6}, patience=3, tmp_path=tmp_path)


def test_patience_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="patience=0"):
        StopOnNonFiniteLoss(patience=0)


def test_batch_size_one_is_refused_for_batchnorm_networks() -> None:
    with_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match=r"dataset\.batch_size=1: the network has BatchNorm"):
        check_training_batch_size(with_bn, 1)
    check_training_batch_size(with_bn, 2)
    check_training_batch_size(nn.Linear(2, 2), 1)  # no BatchNorm: a batch of one is fine


@pytest.mark.parametrize(
    ("n", "batch", "world", "drop"),
    [
        (33, 32, 1, True),
        (32, 32, 1, False),
        (34, 32, 1, False),
        (1, 32, 1, False),
        (65, 32, 2, True),
        (66, 32, 2, True),
        (67, 32, 2, False),
        (10, 1, 1, False),
    ],
)
def test_only_a_lone_last_sample_is_dropped(n: int, batch: int, world: int, drop: bool) -> None:
    assert lone_last_batch(n, batch, world) is drop
