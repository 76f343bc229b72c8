"""The reinforced focal loss of SMSE (Sun et al.), §III-D, Eq. (7).

Starting from the L1 loss of the true-class probability, ``L_l1(p_t) = 1 − p_t`` (Eq. 6), a punishing
parameter λ raises the loss of hard, misclassified samples and a suppressing parameter γ lowers that of
easy, well-classified ones::

    L_rf(p_t) = λ · (1 − p_t)^γ                                                        (Eq. 7)

with p_t the softmax probability of the ground-truth class. Unlike cross-entropy (−log p_t) and the focal
loss (−(1 − p_t)^γ log p_t), it is bounded by λ, so a wrongly labelled sample that the network confidently
assigns to another class (p_t → 0) contributes a bounded loss and a vanishing gradient with respect to
the logits (``−λγ p_t (1 − p_t)^γ``), where cross-entropy's gradient tends to −1 (Fig. 4, red circle).

``(1 − p_t)^γ`` is computed as ``exp(γ · log(1 − p_t))`` from the logits
(:func:`histo_lightning.losses.focal.log_p_t_and_complement`): with 0 < γ < 1 the plain power has an
infinite derivative where p_t rounds to 1, and its backward pass gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from histo_lightning.errors import ConfigError
from histo_lightning.losses.focal import log_p_t_and_complement

INVERSE_FREQUENCY = "inverse_frequency"


def inverse_frequency_weights(class_counts: Sequence[int]) -> np.ndarray:
    """Class weights ``N / (C · n_c)`` (scikit-learn's "balanced"): 1 for every class when balanced."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if (counts <= 0).any():
        raise ConfigError(
            f"loss.class_weights=inverse_frequency: a class has no training samples (counts {counts.astype(int).tolist()})"
        )
    return counts.sum() / (len(counts) * counts)


class ReinforcedFocalLoss(nn.Module):
    """``λ · (1 − p_t)^γ`` averaged over the batch (SMSE Eq. 7).

    Args:
        lam: the punishing parameter λ (> 0). The paper's best: λ = 2 with γ = 1.5 (Table IV).
        gamma: the suppressing parameter γ (> 0).
        class_weights: ``None`` (unweighted mean, the paper's Eq. 7), a list with one weight per class, or
            ``"inverse_frequency"``: weights ``N / (C · n_c)`` from the training labels, as in the authors'
            public code; the LightningModule supplies the counts through :meth:`set_class_counts` before
            training. With weights the mean is ``Σ w_{y_i} L_i / Σ w_{y_i}`` (as ``torch.nn.CrossEntropyLoss``).

    ``forward(logits, target)``: logits ``(N, C)``, integer targets ``(N,)``.
    """

    def __init__(
        self,
        lam: float = 2.0,
        gamma: float = 1.5,
        class_weights: Sequence[float] | str | None = None,
    ) -> None:
        super().__init__()
        if lam <= 0 or gamma <= 0:
            raise ConfigError(f"loss.lam={lam} and loss.gamma={gamma} must both be positive")
        if isinstance(class_weights, str) and class_weights != INVERSE_FREQUENCY:
            raise ConfigError(
                f"loss.class_weights={class_weights!r}: expected null, a list of weights or {INVERSE_FREQUENCY!r}"
            )
        self.lam = float(lam)
        self.gamma = float(gamma)
        self.weight_mode = class_weights if isinstance(class_weights, str) else None
        weights = None
        if class_weights is not None and not isinstance(class_weights, str):
            weights = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
            if (weights < 0).any() or weights.sum() <= 0:
                raise ConfigError(f"loss.class_weights={list(class_weights)}: must be non-negative")
        self.register_buffer("weight", weights, persistent=True)

    @property
    def needs_class_counts(self) -> bool:
        return self.weight_mode == INVERSE_FREQUENCY

    def set_class_counts(self, class_counts: Sequence[int]) -> None:
        """Set inverse-frequency weights from the training set's class counts."""
        self.weight = torch.as_tensor(inverse_frequency_weights(class_counts), dtype=torch.float32)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.needs_class_counts and self.weight is None:
            raise RuntimeError(
                "ReinforcedFocalLoss(class_weights='inverse_frequency') needs set_class_counts() before use"
            )
        _, log_one_minus_p_t = log_p_t_and_complement(logits, target.view(-1))
        loss = self.lam * torch.exp(self.gamma * log_one_minus_p_t)
        if self.weight is None:
            return loss.mean()
        w = self.weight.to(loss.device)[target.long()]
        return (w * loss).sum() / w.sum().clamp_min(1e-12)

    def extra_repr(self) -> str:
        weights = self.weight_mode or (None if self.weight is None else self.weight.tolist())
        return f"lam={self.lam}, gamma={self.gamma}, class_weights={weights}"
