"""Li et al.: attention-based multiple-instance learning with hard-negative mining (Colon, UCSB).

Today the method's code still lives in the layered packages (``models/mil.py``, ``mil/``,
``callbacks/mil_*.py``, ``pipelines/mil.py``, ``reporting/mil_*.py``); it moves here once the
concurrent mining work has landed.
"""

PAPER = "Li et al., attention-based deep MIL with hard negative mining (Colon, UCSB)"
SUMMARY = "Li et al. attention MIL, adaptive weighting, hard-negative mining and bag generation"
EXPERIMENTS = ("mil_ilse", "mil_aw", "mil_hnm", "mil_hnm_mb", "mil_hnm_sb")
