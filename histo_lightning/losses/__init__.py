"""Losses of the papers, as ``nn.Module`` criteria instantiated from the ``loss`` config group.

Plain cross-entropy (SMSE's "-" baseline, CHS-Net's "SM") is ``torch.nn.CrossEntropyLoss`` itself
(``conf/loss/cross_entropy.yaml``); CHS-Net's focal (Eq. 5) and semi-focal (Eq. 6) losses are here.
"""

from histo_lightning.losses.focal import FocalLoss, SemiFocalLoss

__all__ = ["FocalLoss", "SemiFocalLoss"]
