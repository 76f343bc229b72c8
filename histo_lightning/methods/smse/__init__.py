"""SMSE (Sun et al.): similarity-based multi-scale embeddings, BreakHis and PAIP 2019.

``module`` (the embedding classifier trained on pairs or triplets, §III, Fig. 3), ``tables`` (Tables
III–VIII, X), ``tsne`` (Fig. 10). Shared parts it uses: ``nets/pnn.py`` (PNN1/PNN2, Table I),
``losses/similarity.py`` (Eqs. 2, 4), ``losses/reinforced_focal.py`` (Eq. 7), ``losses/total.py``
(Eq. 1), ``data/sampling/pairing.py`` (Algorithms 1–2), ``metrics/patient.py`` (patient-wise
recognition rate), ``data/datasets/breakhis.py``, ``data/datasets/paip.py``, ``data/wsi.py``.
"""

PAPER = "Sun et al., Similarity-based multi-scale embeddings (SMSE) for histopathology"
SUMMARY = "SMSE image classification (embeddings + reinforced focal loss), BreakHis and PAIP 2019"
EXPERIMENTS = (
    "breakhis_baseline",
    "breakhis_demo",
    "smse_breakhis",
    "smse_breakhis_pair",
    "smse_breakhis_ce",
    "smse_paip",
)
