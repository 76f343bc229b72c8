"""SMSE (Sun et al.): similarity-based multi-scale embeddings trained with pairs or triplets (§III, Fig. 3).

One shared embedding network f maps every image of a pair or triplet to its embedding ε = f(x); a linear
classifier on the anchor's embedding gives the class probabilities. The objective is Eq. (1),
``L_total = L_embed + L_cls``: the pair loss (Eq. 2) or the triplet loss (Eq. 4) on the embeddings and a
classification loss (the reinforced focal loss, Eq. 7, or cross-entropy) on the anchor's logits. The
paper's "w/o ε" ablation (Table V) is this module with ``embedding_loss=None``: the same network and
classifier trained by ``L_cls`` on single images.

"Multi-scale" comes from the data: BreakHis images of all four magnifications are pooled in training
(``dataset.magnifications`` = all), so pairs and triplets mix magnifications and the embedding has to hold
a class together across scales.

Validation and test classify every image exactly once, as an anchor, so the metric keys are those of
:class:`~histo_lightning.models.classifier.ImageClassifier` (``test/rr``, ``test/acc``, ``test/f1_<class>``,
``test/auroc``, ``test/rr_<group>``); with fixed evaluation pairs/triplets (``dataset.pair_eval``) the
embedding loss is reported there too (``val/embed_loss``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from histo_lightning.errors import ConfigError
from histo_lightning.losses.total import LossTerms, SimilarityObjective
from histo_lightning.models.base import Batch, SupervisedModule
from histo_lightning.models.classifier import ImageClassifier

PARTNER_KEYS = {"triplet": ("positive", "negative"), "pair": ("partner",)}


class SimilarityClassifier(ImageClassifier):
    """Shared embedding network + classifier on the anchor, trained by Eq. (1).

    Args:
        net: an ``nn.Module`` with ``embed(x) → ε`` and a ``classifier`` module ``ε → logits``
            (:func:`~histo_lightning.nets.pnn1`, :func:`~histo_lightning.nets.pnn2`,
            :class:`~histo_lightning.nets.TimmClassifier` with an ``embedding_dim``).
        loss: L_cls, ``(logits, target) → loss``.
        embedding_loss: L_embed: :class:`~histo_lightning.losses.ContrastiveLoss` (pairs),
            :class:`~histo_lightning.losses.TripletLoss` (triplets) or ``None`` ("w/o ε").
        embedding_weight, classification_weight: weights of the two terms (1 and 1 in Eq. 1).
        **kwargs: :class:`ImageClassifier` arguments (``optimizer``, ``metrics``, ``scheduler``,
            ``monitor``, ``monitor_mode``, ``channels_last``).

    Batches for training are pairs/triplets from the data module (``dataset.pairing=auto`` reads
    :attr:`pairing`); logged: ``{train,val,test}/loss`` (the total), ``…/embed_loss``, ``…/cls_loss``.
    """

    injected = (*SupervisedModule.injected, "embedding_loss")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        embedding_loss: nn.Module | None = None,
        embedding_weight: float = 1.0,
        classification_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, loss, **kwargs)
        if not callable(getattr(net, "embed", None)) or not isinstance(
            getattr(net, "classifier", None), nn.Module
        ):
            raise ConfigError(
                f"model.net ({type(net).__name__}) needs an embed() method and a classifier module for "
                "SMSE; use pnn1/pnn2 or TimmClassifier with embedding_dim set"
            )
        self.objective = SimilarityObjective(
            classification=loss,
            embedding=embedding_loss,
            embedding_weight=embedding_weight,
            classification_weight=classification_weight,
        )
        self.term_means = nn.ModuleDict(
            {
                f"{stage}_{term}": MeanMetric()
                for stage in ("train", "val", "test")
                for term in ("embed", "cls")
            }
        )

    @property
    def pairing(self) -> str | None:
        """``"pair"``, ``"triplet"`` or ``None``: what the data module must serve for training."""
        return self.objective.pairing

    def embed(self, images: Tensor) -> Tensor:
        return self.net.embed(self.prepare_images(images))

    def _forward_batch(self, batch: Batch) -> tuple[LossTerms, Tensor, Tensor]:
        """Loss terms, anchor logits and anchor embeddings of a batch (pairs/triplets or single images)."""
        keys = PARTNER_KEYS.get(self.pairing or "", ())
        anchors = batch["image"]
        if keys and all(k in batch for k in keys):
            n = len(anchors)
            embeddings = self.embed(torch.cat([anchors, *(batch[k] for k in keys)]))
            anchor, *others = embeddings.split(n)
            partners = dict(zip(keys, others))
            if self.pairing == "pair":
                partners["same"] = batch["same"]
            logits = self.net.classifier(anchor)
            return self.objective(logits, batch["label"], anchor, partners), logits, anchor
        if keys and self.training:
            raise ConfigError(
                f"the embedding loss needs {self.pairing}s but the training batches hold single images; "
                "set dataset.pairing=auto"
            )
        anchor = self.embed(anchors)
        logits = self.net.classifier(anchor)
        return self.objective(logits, batch["label"]), logits, anchor

    def step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        terms, logits, _ = self._forward_batch(batch)
        n = len(logits)
        self.term_means[f"{stage}_cls"].update(terms.cls.detach(), weight=n)
        if terms.embed is not None:
            self.term_means[f"{stage}_embed"].update(terms.embed.detach(), weight=n)
        return terms.total, logits

    def log_stage_extras(self, stage: str) -> None:
        """``<stage>/embed_loss`` and ``<stage>/cls_loss``: the two terms of Eq. (1)."""
        for term in ("embed", "cls"):
            metric = self.term_means[f"{stage}_{term}"]
            if metric.update_called:
                self.log(f"{stage}/{term}_loss", metric.compute())
            metric.reset()
