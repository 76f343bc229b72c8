"""LightningModules shared by the methods: the supervised base and the plain image classifier.

Each method's own modules live in its package (:mod:`histo_lightning.methods`).
"""

from histo_lightning.models.base import SupervisedModule
from histo_lightning.models.classifier import ImageClassifier

__all__ = ["ImageClassifier", "SupervisedModule"]
