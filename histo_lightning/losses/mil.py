"""The bag-level loss of attention MIL (Ilse et al. 2018; Li et al. §4.0.2 "a cross-entropy loss").

Ilse et al.'s ``calculate_objective``: the bag probability is clamped to ``[eps, 1 − eps]`` (eps 1e-5)
before the binary cross-entropy ``−(y log p + (1 − y) log(1 − p))``, so a confident wrong bag costs at
most ``−log(eps)`` ≈ 11.5 and never an infinite loss or gradient. The mean over the bags of a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClampedBagBCE(nn.Module):
    """Binary cross-entropy of clamped bag probabilities ``(B,)`` against bag labels ``(B,)``."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < eps < 0.5:
            raise ValueError(f"loss.eps={eps} must be in (0, 0.5)")
        self.eps = float(eps)

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        p = probs.float().clamp(self.eps, 1.0 - self.eps)
        y = target.float()
        return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p)).mean()


__all__ = ["ClampedBagBCE"]
