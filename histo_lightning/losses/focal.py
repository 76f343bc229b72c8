"""Focal loss (Lin et al. 2017) and CHS-Net's semi-focal loss (Ma et al. 2019, §3.3).

Both take logits ``(N, C)`` and integer targets ``(N,)``. ``p_t`` is the softmax probability of the true
class (Eq. 4 for two classes: ``p`` for a mitosis, ``1 - p`` otherwise), and the loss is the mean over the
batch of

* Eq. 5, focal: ``FL(p_t) = -alpha (1 - p_t)^gamma log(p_t)``
* Eq. 6, semi-focal: ``SFL(p_t) = -alpha log(p_t) min((1 - p_t)^gamma, threshold)``

The semi-focal loss caps the modulating factor at ``threshold``: a confidently "wrong" sample, which in
TUPAC16 is often an unannotated mitosis labelled negative, contributes at most ``threshold · alpha ·
(-log p_t)`` instead of up to ``alpha · (-log p_t)``, so label noise cannot dominate the gradient.

**Gradients for 0 < gamma < 1.** ``(1 - p_t)^gamma`` has an infinite derivative at ``p_t = 1`` when
``gamma < 1``, and ``p_t`` rounds to exactly 1 in float32 once a logit leads by ~17: computed as
``(1 - p_t).pow(gamma)`` the backward pass gives ``inf · 0 = NaN``. The modulating factor is therefore
computed in log space, ``exp(gamma · log(1 - p_t))`` with ``log(1 - p_t) = logsumexp(other logits) -
logsumexp(all logits)`` (:func:`log_p_t_and_complement`), whose gradient is finite for every logit
(and tends to 0 where ``p_t`` tends to 1, as the loss does).

``alpha`` in the paper is a single weight (α = 5, §3.3, §4.2.2), not Lin et al.'s per-class α ∈ [0, 1]
(a value of 5 cannot be a class balance). A sequence of C values gives the per-class form
``alpha_t = alpha[target]`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def log_p_t_and_complement(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_t, log(1 - p_t))`` of the softmax of ``logits`` ``(N, C)`` at integer ``targets`` ``(N,)``.

    ``log(1 - p_t)`` is the log of the other classes' total probability, ``logsumexp`` of the other
    logits minus ``logsumexp`` of all: finite with a finite gradient even where ``p_t`` rounds to 1 (it
    is then very negative, not ``-inf``). Needs at least two classes.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half precision: compute in float32
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits of shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    targets = targets.long()[:, None]
    total = torch.logsumexp(logits, dim=-1)
    log_p_t = logits.gather(1, targets)[:, 0] - total
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, targets, True)
    others = torch.logsumexp(logits.masked_fill(is_target, float("-inf")), dim=-1)
    return log_p_t, others - total


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

    def modulation(self, log_one_minus_p_t: Tensor) -> Tensor:
        """The factor on ``-log p_t``: ``(1 - p_t)^gamma``, from ``log(1 - p_t)`` (finite gradients)."""
        if self.gamma == 0.0:
            return torch.ones_like(log_one_minus_p_t)
        return torch.exp(self.gamma * log_one_minus_p_t)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p_t, log_one_minus_p_t = log_p_t_and_complement(logits, targets)
        factor = self.modulation(log_one_minus_p_t)
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

    def modulation(self, log_one_minus_p_t: Tensor) -> Tensor:
        return super().modulation(log_one_minus_p_t).clamp_max(self.threshold)


__all__ = ["FocalLoss", "SemiFocalLoss", "log_p_t_and_complement"]
