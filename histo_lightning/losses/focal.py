"""Focal loss (Lin et al. 2017) and CHS-Net's semi-focal loss (Ma et al. 2019, §3.3).

Both take logits ``(N, C)`` and integer targets ``(N,)``. ``p_t`` is the softmax probability of the true
class (Eq. 4 for two classes: ``p`` for a mitosis, ``1 - p`` otherwise), and the loss is the mean over the
batch of

* Eq. 5, focal: ``FL(p_t) = -alpha (1 - p_t)^gamma log(p_t)``
* Eq. 6, semi-focal: ``SFL(p_t) = -alpha log(p_t) min((1 - p_t)^gamma, threshold)``

The semi-focal loss caps the modulating factor at ``threshold``: a confidently "wrong" sample, which in
TUPAC16 is often an unannotated mitosis labelled negative, contributes at most ``threshold · alpha ·
(-log p_t)`` instead of up to ``alpha · (-log p_t)``, so label noise cannot dominate the gradient.

``alpha`` in the paper is a single weight (α = 5, §3.3, §4.2.2), not Lin et al.'s per-class α ∈ [0, 1]
(a value of 5 cannot be a class balance). A sequence of C values gives the per-class form
``alpha_t = alpha[target]`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FocalLoss(nn.Module):
    """Eq. 5: ``mean(-alpha (1 - p_t)^gamma log p_t)``.

    Args:
        alpha: a scalar weight (the paper's α = 5), or one weight per class.
        gamma: focusing parameter γ ≥ 0 (the paper's 2); γ = 0 and α = 1 is cross-entropy.
    """

    def __init__(self, alpha: float | Sequence[float] = 5.0, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma={gamma} must be >= 0")
        weights = torch.as_tensor(alpha, dtype=torch.float32)
        if weights.ndim > 1:
            raise ValueError(f"alpha must be a number or one number per class, got {alpha!r}")
        self.register_buffer("alpha", weights, persistent=False)
        self.gamma = float(gamma)

    def _alpha_t(self, targets: Tensor) -> Tensor:
        return self.alpha if self.alpha.ndim == 0 else self.alpha[targets]

    def modulation(self, p_t: Tensor) -> Tensor:
        """The factor on ``-log p_t``: ``(1 - p_t)^gamma``."""
        return (1.0 - p_t).clamp_min(0.0).pow(self.gamma)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p_t = F.log_softmax(logits.float(), dim=-1).gather(1, targets.long()[:, None])[:, 0]
        factor = self.modulation(log_p_t.exp())
        return (-self._alpha_t(targets) * factor * log_p_t).mean()


class SemiFocalLoss(FocalLoss):
    """Eq. 6: ``mean(-alpha log(p_t) min((1 - p_t)^gamma, threshold))`` (§3.3; §4.2.2: α 5, γ 2, 0.6)."""

    def __init__(
        self, alpha: float | Sequence[float] = 5.0, gamma: float = 2.0, threshold: float = 0.6
    ) -> None:
        super().__init__(alpha, gamma)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold} must be in (0, 1]")
        self.threshold = float(threshold)

    def modulation(self, p_t: Tensor) -> Tensor:
        return super().modulation(p_t).clamp_max(self.threshold)


__all__ = ["FocalLoss", "SemiFocalLoss"]
