"""LightningModules: one per method, built from injected nets, losses and metrics."""

from histo_lightning.models.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
