"""The base of every supervised LightningModule: injected net, loss, optimiser and metrics (docs/CONTRACTS.md C2).

:class:`SupervisedModule` does, once for every supervised model (the image classifier, SMSE's similarity
classifier, CHS-Net's patch classifier), what does not depend on the model:

* **injection**: the network, the loss, the optimiser (a partial taking ``params``), an optional scheduler
  (a partial taking ``optimizer``) and the metric suite (a factory; one instance for validation, one for
  test, :mod:`histo_lightning.metrics.classification`) come from config (Hydra ``instantiate``);
* **plain hyper-parameters**: ``save_hyperparameters`` keeps only plain data (numbers, strings, lists,
  dicts); injected objects are listed in :attr:`SupervisedModule.injected` and kept out, config nodes are
  converted to containers, anything else is refused. So every checkpoint loads with
  ``torch.load(path, weights_only=True)``: nothing in it needs pickle;
* **the loop**: ``train/loss_step`` and ``train/loss``, ``{val,test}/loss`` and every value of the metric
  suite under ``val/`` and ``test/`` (keys prefixed by :attr:`SupervisedModule.log_prefix`, e.g. CHS-Net's
  ``screening/``);
* **best so far**: after every validation epoch (not the sanity check) ``val/<monitor>_best``, the best
  ``val/<monitor>`` over all epochs of the run. The value is kept in every checkpoint
  (``checkpoint["monitor_best"]``) and restored on resume, so a run resumed from ``last.ckpt`` reports the
  best over the epochs before the resume too (sweepers optimise it).

A model says how a batch becomes a loss and logits (:meth:`SupervisedModule.step`) and, where it differs,
how it is optimised (:meth:`SupervisedModule.optimized_parameters`, :meth:`SupervisedModule.lr_scheduler`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from histo_lightning.utils.choices import declare_choices

Batch = dict[str, Tensor]
MetricSuite = Any  # update(probs, target, patient, group), compute() -> dict, reset()

# Epoch-level values logged here come from torchmetrics objects that already synchronised their states
# across processes, so Lightning's advice to add sync_dist=True (an extra all-reduce) does not apply.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(\w+/)?(val|test|train)/"
)

MONITOR_MODES = ("max", "min")
#: where a checkpoint keeps the best-so-far value of the monitored metric
BEST_KEY = "monitor_best"


def plain(value: Any, name: str) -> Any:
    """``value`` as plain data (config nodes become containers); a ``TypeError`` naming ``name`` otherwise."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, f"{name}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {str(k): plain(v, f"{name}.{k}") for k, v in value.items()}
    raise TypeError(
        f"hyper-parameter {name} is a {type(value).__name__}: objects do not go into checkpoints; "
        "list the argument in the module's `injected`"
    )


@declare_choices(monitor_mode=MONITOR_MODES)
class SupervisedModule(pl.LightningModule):
    """Trains ``net`` with ``loss`` and evaluates it with the ``metrics`` suite (see the module docstring).

    Args:
        net: the network (an ``nn.Module``).
        loss: a criterion ``loss(logits, target)`` (``model.loss: ${loss}`` in the configs).
        optimizer: a partial taking ``params`` (``_partial_: true``).
        metrics: a factory of a metric suite (one copy each for val and test), or None for none.
        scheduler: an optional partial taking ``optimizer``; stepped each epoch, with ``val`` monitoring
            for ``ReduceLROnPlateau``.
        monitor: the validation metric checkpoints are selected on; ``<monitor>_best`` is logged.
        monitor_mode: ``max`` or ``min``.
    """

    #: constructor arguments that are objects: kept out of the saved hyper-parameters
    injected: ClassVar[tuple[str, ...]] = ("net", "loss", "optimizer", "scheduler", "metrics")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        metrics: Callable[[], MetricSuite] | None = None,
        scheduler: Callable[..., Any] | None = None,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__()
        if monitor_mode not in MONITOR_MODES:
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        # collects the arguments of every __init__ in the chain (subclasses' too)
        self.save_hyperparameters(logger=False, ignore=list(self.injected))
        for key, value in list(self.hparams.items()):
            self.hparams[key] = plain(value, key)
        self._hparams_initial = copy.deepcopy(self._hparams)
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_metrics = metrics() if metrics is not None else None
        self.test_metrics = metrics() if metrics is not None else None
        #: a metric of the training batches logged as ``train/acc`` (subclasses set one)
        self.train_acc: Metric | None = None
        #: prefix of every logged key (CHS-Net: ``screening/``)
        self.log_prefix = ""
        #: the best ``val/<monitor>`` over all validation epochs of the run, None before the first
        self.best_value: float | None = None

    # ---- what a model provides ----------------------------------------------------------------------
    def step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        """``(loss, logits)`` of a batch in ``stage`` (``train``, ``val``, ``test``)."""
        logits = self(batch["image"])
        return self.loss(logits, batch["label"]), logits

    def log_stage_extras(self, stage: str) -> None:
        """Log what the model adds at the end of a ``stage`` epoch (e.g. loss terms)."""

    def optimized_parameters(self) -> Any:
        return self.parameters()

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Lightning's ``lr_scheduler`` entry for ``optimizer``, or None."""
        if self.scheduler_factory is None:
            return None
        return {
            "scheduler": self.scheduler_factory(optimizer=optimizer),
            "interval": "epoch",
            "monitor": self.monitor,
        }

    # ---- the loop -----------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        """The logged key of ``name`` (``val/ap`` → ``screening/val/ap``)."""
        return f"{self.log_prefix}{name}"

    def on_train_start(self) -> None:
        # the sanity-check validation must not count
        if self.val_metrics is not None:
            self.val_metrics.reset()
        self.val_loss.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, logits = self.step(batch, "train")
        self.train_loss.update(loss.detach(), weight=len(logits))
        if self.train_acc is not None:
            self.train_acc.update(logits.detach(), batch["label"])
        self.log(
            self.key("train/loss_step"), loss.detach(), on_step=True, on_epoch=False, prog_bar=True
        )
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_stage_extras("train")
        self.log(self.key("train/loss"), self.train_loss.compute())
        self.train_loss.reset()
        if self.train_acc is not None:
            self.log(self.key("train/acc"), self.train_acc.compute(), prog_bar=True)
            self.train_acc.reset()

    def evaluate(self, batch: Batch, stage: str) -> Tensor:
        """Update the ``stage`` loss and metrics with a batch; its class probabilities ``(N, C)``."""
        loss, logits = self.step(batch, stage)
        probs = logits.float().softmax(dim=-1)
        (self.val_loss if stage == "val" else self.test_loss).update(loss, weight=len(logits))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if metrics is not None:
            metrics.update(probs, batch["label"], batch.get("patient"), batch.get("group"))
        return probs

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        probs = self.evaluate(batch, "test")
        return {"probs": probs.detach(), "index": batch["index"]}

    def _epoch_values(self, stage: str) -> dict[str, Tensor]:
        """The ``stage`` metrics and loss of the epoch (then reset)."""
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        loss = self.val_loss if stage == "val" else self.test_loss
        values = {}
        if metrics is not None:
            values = {f"{stage}/{k}": v for k, v in metrics.compute().items()}
            metrics.reset()
        values[f"{stage}/loss"] = loss.compute()
        loss.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self.log_stage_extras("val")
        values = self._epoch_values("val")
        self.log_dict({self.key(k): v for k, v in values.items()})
        if self.monitor in values and not self.trainer.sanity_checking:
            self.update_best(float(values[self.monitor]))
            if self.best_value is not None:
                self.log(
                    self.key(f"{self.monitor}_best"), torch.tensor(self.best_value), prog_bar=True
                )

    def on_test_epoch_end(self) -> None:
        self.log_stage_extras("test")
        values = self._epoch_values("test")
        self.log_dict({self.key(k): v for k, v in values.items()})

    # ---- best so far, kept in checkpoints -----------------------------------------------------------
    def update_best(self, value: float) -> None:
        """Take ``value`` of the monitored metric into the best so far (NaN is ignored)."""
        if math.isnan(value):
            return
        best = self.best_value
        if best is None or (value > best if self.monitor_mode == "max" else value < best):
            self.best_value = value

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = {"monitor": self.key(self.monitor), "value": self.best_value}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(BEST_KEY)
        if state is not None and state.get("monitor") == self.key(self.monitor):
            self.best_value = state["value"]

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.optimized_parameters())
        scheduler = self.lr_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


__all__ = ["BEST_KEY", "SupervisedModule", "plain"]
