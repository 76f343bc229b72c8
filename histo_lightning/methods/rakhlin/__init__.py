"""Rakhlin et al. (2018): deep convolutional features + LightGBM for BACH breast histology.

``multicrop`` (50 colour augmentations × 20 crops, §2.3–2.4), ``descriptors`` (the frozen-encoder
descriptor module of the predict stages), ``gradient_boosting`` (LightGBM, §2.5), ``pipeline`` (the
stage functions of ``conf/pipeline/rakhlin*.yaml``: descriptors → LightGBM → fusion), ``metrics``
(4-class and carcinoma accuracy, §3), ``report`` (Fig. 4a/4b, predictions), ``tables`` (Table 1,
Fig. 4). Shared parts it uses: ``nets/encoders.py``, ``nets/pooling.py`` (3-norm pooling, Eq. 1),
``data/datasets/bach.py``, ``stores/feature_cache.py``.
"""

PAPER = "Rakhlin et al. 2018, Deep convolutional neural networks for breast cancer histology image analysis"
SUMMARY = "Rakhlin et al. frozen-CNN descriptors + LightGBM + fusion, BACH"
EXPERIMENTS = ("rakhlin", "rakhlin_single", "rakhlin_descriptors", "rakhlin_demo")
