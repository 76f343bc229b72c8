"""Gathering results across the processes of a DDP job (each rank evaluated a disjoint share).

Evaluation loaders use an unrepeated distributed sampler (:mod:`histo_lightning.data.base`), so every
sample is seen by exactly one rank; callbacks that write per-sample files gather the ranks' shares here.
Outside DDP (one process, or torch.distributed not initialised) gathering is the identity.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a torch.distributed process group is running."""
    return dist.is_available() and dist.is_initialized()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable object), in rank order, on every rank; ``[obj]`` outside DDP."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


__all__ = ["gather_objects", "is_distributed"]
