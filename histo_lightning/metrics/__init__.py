"""Metrics: torchmetrics ``Metric`` subclasses and suites, all correct under DDP."""

from histo_lightning.metrics.classification import ClassificationMetrics, magnification_groups
from histo_lightning.metrics.patient import PatientRecognitionRate

__all__ = ["ClassificationMetrics", "PatientRecognitionRate", "magnification_groups"]
