"""Lightning callbacks shared by the methods (Lightning's own ones are configured directly).

A method's own callbacks live in its package (e.g. :mod:`histo_lightning.methods.chsnet.mining`).
"""

from histo_lightning.callbacks.nonfinite import StopOnNonFiniteLoss
from histo_lightning.callbacks.test_report import TestReport

__all__ = ["StopOnNonFiniteLoss", "TestReport"]
