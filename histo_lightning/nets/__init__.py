"""Plain ``nn.Module`` networks, free of Lightning."""

from histo_lightning.nets.chsnet import CHSNet
from histo_lightning.nets.pnn import EmbeddingClassifier, PlainEmbeddingNet, pnn1, pnn2
from histo_lightning.nets.timm_classifier import TimmClassifier

__all__ = ["CHSNet", "EmbeddingClassifier", "PlainEmbeddingNet", "TimmClassifier", "pnn1", "pnn2"]
