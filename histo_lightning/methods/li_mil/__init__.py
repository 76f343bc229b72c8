"""Li et al.: attention-based multiple-instance learning with hard-negative mining (Colon, UCSB).

``module`` (the attention-MIL LightningModule, Ilse et al. 2018 / Li et al. §3.0.1, and the frozen instance
encoder), ``mining`` (attention-based hard-negative mining, Eq. 3) and ``mining_callback`` (it, as a
consumer of a predict stage), ``bag_generation`` (SB, MB, FMB, §3.0.3), ``pipeline`` (the stage functions
of ``conf/pipeline/mil*.yaml``), ``report`` (per-bag predictions, attention, heatmaps), ``tables``
(Tables 1–2), ``plots``. Shared parts it uses: ``nets/mil.py`` (softsign attention Eq. 1, adaptive
weighting Eq. 2), ``losses/mil.py``, ``metrics/mil.py``, ``data/bag_datamodule.py``, ``data/bags.py``,
``data/bag_folds.py``, ``data/datasets/{colon,ucsb,digits_bags}.py``, ``stores/instance_store.py``.
"""

PAPER = "Li et al., attention-based deep MIL with hard negative mining (Colon, UCSB)"
SUMMARY = "Li et al. attention MIL, adaptive weighting, hard-negative mining and bag generation"
EXPERIMENTS = ("mil_ilse", "mil_aw", "mil_hnm", "mil_hnm_mb", "mil_hnm_sb")
