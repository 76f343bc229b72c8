"""LightningModules: one per method, built from injected nets, losses and metrics."""

from histo_lightning.models.base import SupervisedModule
from histo_lightning.models.chsnet import ChsnetPatchClassifier
from histo_lightning.models.chsnet_detector import ChsnetCascadeDetector
from histo_lightning.models.classifier import ImageClassifier
from histo_lightning.models.mil import EncoderFeatures, MILModule
from histo_lightning.models.similarity import SimilarityClassifier

__all__ = [
    "ChsnetCascadeDetector",
    "ChsnetPatchClassifier",
    "EncoderFeatures",
    "ImageClassifier",
    "MILModule",
    "SimilarityClassifier",
    "SupervisedModule",
]
