"""Lightning callbacks of histo-lightning (Lightning's own ones are configured directly)."""

from histo_lightning.callbacks.detection_report import DetectionReport
from histo_lightning.callbacks.embedding_tsne import EmbeddingTSNE
from histo_lightning.callbacks.mining import HardExampleMining
from histo_lightning.callbacks.nonfinite import StopOnNonFiniteLoss
from histo_lightning.callbacks.test_report import TestReport

__all__ = [
    "DetectionReport",
    "EmbeddingTSNE",
    "HardExampleMining",
    "StopOnNonFiniteLoss",
    "TestReport",
]
