"""LightningModules: one per method, built from injected nets, losses and metrics."""

from histo_lightning.models.classifier import ImageClassifier
from histo_lightning.models.similarity import SimilarityClassifier

__all__ = ["ImageClassifier", "SimilarityClassifier"]
