"""The hybrid objective of SMSE (Sun et al.), §III-A, Eq. (1): ``L_total = L_embed + L_cls``.

``L_embed`` is the pair loss (Eq. 2) or the triplet loss (Eq. 4) on the embeddings of the shared embedding
network, ``L_cls`` a classification loss on the anchor's logits (the reinforced focal loss, Eq. 7, or
cross-entropy). The weights default to 1 (Eq. 1 as printed); ``embedding=None`` is the paper's "w/o ε"
ablation (Table V, row "-"): the same network trained by ``L_cls`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from histo_lightning.errors import ConfigError


@dataclass
class LossTerms:
    """The weighted total and its unweighted parts (``embed`` is None without an embedding loss)."""

    total: Tensor
    cls: Tensor
    embed: Tensor | None


class SimilarityObjective(nn.Module):
    """``w_embed · L_embed + w_cls · L_cls`` (Eq. 1 with configurable weights).

    Args:
        classification: criterion ``(logits, target) → loss``.
        embedding: a :class:`~histo_lightning.losses.ContrastiveLoss`, a
            :class:`~histo_lightning.losses.TripletLoss` or ``None`` (classification only).
        embedding_weight, classification_weight: the weights (1 and 1 in the paper).
    """

    def __init__(
        self,
        classification: nn.Module,
        embedding: nn.Module | None = None,
        embedding_weight: float = 1.0,
        classification_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if embedding is not None and getattr(embedding, "pairing", None) not in ("pair", "triplet"):
            raise ConfigError(
                f"embedding_loss {type(embedding).__name__} does not say which batches it needs "
                "(a `pairing` attribute of 'pair' or 'triplet')"
            )
        if embedding_weight < 0 or classification_weight < 0:
            raise ConfigError(
                f"model.embedding_weight={embedding_weight} and model.classification_weight="
                f"{classification_weight} must be non-negative"
            )
        self.classification = classification
        self.embedding = embedding
        self.embedding_weight = float(embedding_weight)
        self.classification_weight = float(classification_weight)

    @property
    def pairing(self) -> str | None:
        """``"pair"``, ``"triplet"`` or ``None``: what the training batches must hold."""
        return None if self.embedding is None else self.embedding.pairing

    def embedding_term(self, anchor: Tensor, partners: dict[str, Tensor]) -> Tensor:
        """L_embed of anchors and their partners (``positive``/``negative`` or ``partner``/``same``)."""
        if self.pairing == "triplet":
            return self.embedding(anchor, partners["positive"], partners["negative"])
        return self.embedding(anchor, partners["partner"], partners["same"])

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        anchor: Tensor | None = None,
        partners: dict[str, Tensor] | None = None,
    ) -> LossTerms:
        cls = self.classification(logits, target)
        if self.embedding is None or anchor is None or partners is None:
            return LossTerms(self.classification_weight * cls, cls, None)
        embed = self.embedding_term(anchor, partners)
        return LossTerms(
            self.embedding_weight * embed + self.classification_weight * cls, cls, embed
        )
