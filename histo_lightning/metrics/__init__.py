"""Metrics: torchmetrics ``Metric`` subclasses and suites, all correct under DDP."""

from histo_lightning.metrics.classification import (
    BinaryClassificationMetrics,
    ClassificationMetrics,
)
from histo_lightning.metrics.detection import DetectionF1, detection_scores, match_detections
from histo_lightning.metrics.patient import PatientRecognitionRate

__all__ = [
    "BinaryClassificationMetrics",
    "ClassificationMetrics",
    "DetectionF1",
    "PatientRecognitionRate",
    "detection_scores",
    "match_detections",
]
