"""Losses of the papers, as ``nn.Module`` criteria instantiated from the ``loss`` config group.

Plain cross-entropy (SMSE's "-" baseline, CHS-Net's "SM") is ``torch.nn.CrossEntropyLoss`` itself
(``conf/loss/cross_entropy.yaml``). CHS-Net (Li et al.): the focal (Eq. 5; ``loss=focal``) and semi-focal
(Eq. 6; ``loss=semi_focal``) losses. SMSE (Sun et al.): the pair and triplet losses (Eqs. 2, 4; config group
``embedding_loss``), the reinforced focal loss (Eq. 7; ``loss=reinforced_focal``) and their sum (Eq. 1).
Attention MIL (Ilse et al., Li et al.): the clamped bag-level cross-entropy (``loss=bag_bce``).
"""

from histo_lightning.losses.focal import FocalLoss, SemiFocalLoss
from histo_lightning.losses.mil import ClampedBagBCE
from histo_lightning.losses.reinforced_focal import ReinforcedFocalLoss, inverse_frequency_weights
from histo_lightning.losses.similarity import ContrastiveLoss, TripletLoss, squared_distance
from histo_lightning.losses.total import LossTerms, SimilarityObjective

__all__ = [
    "ClampedBagBCE",
    "ContrastiveLoss",
    "FocalLoss",
    "LossTerms",
    "ReinforcedFocalLoss",
    "SemiFocalLoss",
    "SimilarityObjective",
    "TripletLoss",
    "inverse_frequency_weights",
    "squared_distance",
]
