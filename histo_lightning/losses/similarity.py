"""Embedding losses of SMSE (Sun et al.), §III-C: the pair (contrastive) loss and the triplet loss.

Both act on embeddings ε = f(x) of the shared embedding network and use squared Euclidean distances
``‖ε − ε′‖²`` as in Eqs. (2) and (4). Each loss says which batches it needs through :attr:`pairing`
(``"pair"``: an anchor and one partner with a same-class flag; ``"triplet"``: an anchor, a positive and a
negative), which the data module reads to build pairs or triplets (Algorithms 1 and 2).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from histo_lightning.errors import ConfigError
from histo_lightning.utils.choices import declare_choices

CONTRASTIVE_FORMS = ("paper", "hadsell")


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ``‖a − b‖²`` of two ``(N, D)`` embeddings."""
    return (a - b).pow(2).sum(dim=-1)


@declare_choices(form=CONTRASTIVE_FORMS)
class ContrastiveLoss(nn.Module):
    """The pair loss L_p of SMSE Eq. (2), averaged over pairs.

    ``form="paper"`` (default) is Eq. (2) as printed, on squared distances throughout::

        L_p(ε, ε′, s) = s · ‖ε − ε′‖²  +  (1 − s) · max(0, m − ‖ε − ε′‖²)

    ``form="hadsell"`` is the contrastive loss of Hadsell et al. (2006) that the authors' public code uses,
    whose dissimilar-pair term is on the (unsquared) distance d = ‖ε − ε′‖::

        L(ε, ε′, s) = ½ · (s · d²  +  (1 − s) · max(0, m − d)²)

    The two agree on similar pairs up to the factor ½ but not on dissimilar ones: the paper's form pushes
    ``d²`` beyond m, Hadsell's pushes ``d`` beyond m (so ``d²`` beyond m²).

    Args:
        margin: m.
        form: ``paper`` or ``hadsell``.

    ``forward(emb_a, emb_b, same)``: embeddings ``(N, D)`` and ``same`` ``(N,)``, 1 for a same-class pair
    (s = 1) and 0 otherwise; returns the mean over the N pairs.
    """

    pairing: ClassVar[str] = "pair"

    def __init__(self, margin: float = 1.0, form: str = "paper") -> None:
        super().__init__()
        if form not in CONTRASTIVE_FORMS:
            raise ConfigError(
                f"embedding_loss.form={form!r}: expected one of {', '.join(CONTRASTIVE_FORMS)}"
            )
        if margin <= 0:
            raise ConfigError(f"embedding_loss.margin={margin}: must be positive")
        self.margin = float(margin)
        self.form = form

    def forward(self, emb_a: Tensor, emb_b: Tensor, same: Tensor) -> Tensor:
        same = same.to(emb_a.dtype)
        d2 = squared_distance(emb_a, emb_b)
        if self.form == "paper":
            loss = same * d2 + (1 - same) * torch.clamp(self.margin - d2, min=0)
        else:
            # sqrt of 0 has an infinite gradient: keep identical embeddings differentiable
            d = torch.sqrt(d2.clamp_min(1e-12))
            loss = 0.5 * (same * d2 + (1 - same) * torch.clamp(self.margin - d, min=0).pow(2))
        return loss.mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, form={self.form!r}"


class TripletLoss(nn.Module):
    """The triplet loss L_t of SMSE Eq. (4), averaged over triplets::

        L_t(ε_a, ε_p, ε_n) = max(0, ‖ε_a − ε_p‖² − ‖ε_a − ε_n‖² + m)

    ``forward(anchor, positive, negative)`` takes three ``(N, D)`` embeddings.
    """

    pairing: ClassVar[str] = "triplet"

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ConfigError(f"embedding_loss.margin={margin}: must be positive")
        self.margin = float(margin)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return torch.clamp(
            squared_distance(anchor, positive) - squared_distance(anchor, negative) + self.margin,
            min=0,
        ).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
