"""The descriptor module (§2.3–2.4): output shapes (VGG-16 blocks 2–5 = 1,408), Eq. 1 over the encoded views,
its fingerprint (the feature cache's key) and the preprocess check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from histo_lightning.errors import ConfigError
from histo_lightning.methods.rakhlin.descriptors import DescriptorExtractor
from histo_lightning.methods.rakhlin.multicrop import ViewSettings, image_descriptors
from histo_lightning.nets.encoders import build_encoder
from tests.bach.conftest import he_image
from tests.conftest import CONF

VIEWS = {"n_augmentations": 3, "n_crops": 2}


def _batch(module: DescriptorExtractor, images: list[np.ndarray], keys: list[str]) -> dict:
    return {
        "index": torch.arange(len(images)),
        "image": torch.from_numpy(np.stack(images)),
        "key": keys,
        "preprocess": [module.preprocess_key] * len(images),
    }


def test_vgg16_descriptor_has_1408_values() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["encoder=vgg16_blocks", "encoder.weights=random"])
    module = DescriptorExtractor(instantiate(cfg.encoder), crop_size=32, views=VIEWS)
    assert module.feature_shape() == (3, 1408)
    rng = np.random.default_rng(0)
    out = module.predict_step(_batch(module, [he_image(rng, 2, (48, 64))], ["is001"]), 0)
    assert out["features"].shape == (1, 3, 1408) and torch.isfinite(out["features"]).all()
    assert (
        out["features"] >= 0
    ).all()  # after the ReLU before each pooling: Eq. 1 of non-negatives


def test_predict_step_is_eq1_over_each_images_views() -> None:
    encoder = build_encoder("resnet18", "random")
    module = DescriptorExtractor(encoder, crop_size=24, views=VIEWS, p=3)
    rng = np.random.default_rng(1)
    images = [he_image(rng, label, (40, 56)) for label in (0, 3)]
    out = module.predict_step(_batch(module, images, ["n001", "iv002"]), 0)
    assert out["features"].shape == (2, 3, 512) and out["index"].tolist() == [0, 1]
    for image, key, row in zip(images, ["n001", "iv002"], out["features"]):
        alone = image_descriptors(
            torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            key,
            encoder,
            ViewSettings(**VIEWS),
            24,
            p=3,
        )
        torch.testing.assert_close(row, alone)  # batching images changes nothing
    swapped = module.predict_step(_batch(module, images[::-1], ["iv002", "n001"]), 0)
    torch.testing.assert_close(swapped["features"][0], out["features"][1])


def test_fingerprint_names_what_changes_the_descriptors() -> None:
    encoder = build_encoder("resnet18", "random")
    base = DescriptorExtractor(encoder, 400, VIEWS).fingerprint()
    assert base["encoder"]["weights_sha256"] and base["preprocess"].startswith("rescale0.5-cubic")
    changed = {
        "crop": DescriptorExtractor(encoder, 650, VIEWS),
        "p": DescriptorExtractor(encoder, 400, VIEWS, p=1),
        "seed": DescriptorExtractor(encoder, 400, {**VIEWS, "seed": 1}),
        "he_mode": DescriptorExtractor(encoder, 400, {**VIEWS, "he_mode": "rakhlin2018"}),
        "views": DescriptorExtractor(encoder, 400, {**VIEWS, "n_crops": 20}),
        "scale": DescriptorExtractor(encoder, 400, VIEWS, preprocess={"scale": 0.25}),
        "stain": DescriptorExtractor(
            encoder, 400, VIEWS, preprocess={"stain_normalization": "none"}
        ),
        "encoder": DescriptorExtractor(build_encoder("resnet18", "random", take="stages", stages=[3, 4]), 400, VIEWS),
    }  # fmt: skip
    for what, module in changed.items():
        assert module.fingerprint() != base, what
    same = DescriptorExtractor(encoder, 400, VIEWS, crops_per_batch=7, name="other")
    assert same.fingerprint() == base  # speed settings and names do not key the cache


def test_images_of_another_preprocess_are_refused() -> None:
    module = DescriptorExtractor(build_encoder("resnet18", "random"), 16, VIEWS)
    batch = _batch(module, [np.zeros((20, 20, 3), dtype=np.uint8)], ["b001"])
    batch["preprocess"] = ["rescale0.25-cubic"]
    with pytest.raises(ConfigError, match="preprocess"):
        module.predict_step(batch, 0)
    with pytest.raises(ConfigError, match="encoder group"):
        DescriptorExtractor(None, 400)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="views"):
        DescriptorExtractor(build_encoder("resnet18", "random"), 400, {"n_views": 3})
