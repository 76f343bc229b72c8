"""BatchNorm and training batches of one sample.

BatchNorm in training mode needs more than one value per channel: a batch of one image whose feature
maps have been pooled to 1×1 (a classifier head, a small input) fails deep inside the forward pass
("Expected more than 1 value per channel when training"). Two ways to get there:

* ``dataset.batch_size=1`` with a network that has BatchNorm layers: refused up front with one line by
  :func:`check_training_batch_size`;
* a training set whose size leaves one sample for the last batch of an epoch (``N mod batch_size = 1``,
  per process under DDP): the training loaders drop that lone sample (``drop_last`` exactly then, see
  :func:`lone_last_batch`; it is a different sample every epoch since the order is shuffled).
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from histo_lightning.errors import ConfigError


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (of any dimension, synced or not)."""
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def check_training_batch_size(
    module: nn.Module, batch_size: int | None, key: str = "dataset.batch_size"
) -> None:
    """Refuse a training batch size of 1 for a network with BatchNorm layers."""
    if batch_size is not None and int(batch_size) < 2 and has_batchnorm(module):
        raise ConfigError(
            f"{key}={batch_size}: the network has BatchNorm layers, which need at least 2 samples per "
            "training batch; use a batch size of 2 or more"
        )


def lone_last_batch(n_samples: int, batch_size: int, world_size: int = 1) -> bool:
    """True when an epoch's last training batch would hold one sample (per process): drop it then."""
    per_process = math.ceil(n_samples / max(1, int(world_size)))
    return batch_size > 1 and per_process > 1 and per_process % batch_size == 1


__all__ = ["check_training_batch_size", "has_batchnorm", "lone_last_batch"]
