"""LightningModules: one per method, built from injected nets, losses and metrics."""

from histo_lightning.models.base import SupervisedModule
from histo_lightning.models.cascade import CascadeDetector
from histo_lightning.models.classifier import ImageClassifier
from histo_lightning.models.mitosis import PatchClassifier
from histo_lightning.models.similarity import SimilarityClassifier

__all__ = [
    "CascadeDetector",
    "ImageClassifier",
    "PatchClassifier",
    "SimilarityClassifier",
    "SupervisedModule",
]
