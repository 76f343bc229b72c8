"""CHS-Net (Ma et al. 2019): cascaded mitosis detection on TUPAC16.

``module`` (the screening/refined patch classifier, §4.2.2), ``mining`` (offline hard-example mining,
§3.1.1, §4.2.2), ``detector`` (the cascade over whole HPFs, §3.1.2, §4.3), ``detection_report`` and
``overlays`` (what a pathologist looks at), ``tables`` (Tables 2–4), ``pipeline`` (the stage functions of
``conf/pipeline/chsnet.yaml``). Shared parts it uses: ``nets/chsnet.py`` (Table 1, §3.1.3),
``losses/focal.py`` (Eqs. 5–6), ``metrics/detection.py``, ``data/datasets/tupac16.py`` (reader), ``data/sampling/mitosis_patches.py`` (patch
index), ``data/stain.py`` (Macenko, §4.2.1), ``data/sampling/samplers.py`` (the 1 : 1 : 3 draw).
"""

PAPER = "Ma et al. 2019, CHS-NET: a cascaded hybrid strategy network for mitosis detection"
SUMMARY = "CHS-Net mitosis detection (cascade + hard-example mining + semi-focal loss), TUPAC16"
EXPERIMENTS = (
    "chsnet",
    "chsnet_fl",
    "chsnet_ce",
    "chsnet_single_hem",
    "chsnet_single",
    "chsnet_demo",
    "chsnet_single_demo",
)
