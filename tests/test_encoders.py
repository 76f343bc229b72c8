"""Frozen encoders of the ``encoder`` group: descriptor sizes, frozen eval mode, local weights, fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from histo_lightning.errors import ConfigError
from histo_lightning.nets.encoders import build_encoder
from tests.conftest import CONF


def test_vgg16_blocks_2_to_5_give_1408_values_taken_before_pooling() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["encoder=vgg16_blocks", "encoder.weights=random"])
    encoder = instantiate(cfg.encoder)
    images = torch.rand(2, 3, 64, 64)
    descriptors = encoder(images)
    assert encoder.dim == 1408 and descriptors.shape == (2, 1408)
    maps = encoder.backbone.forward_intermediates(
        encoder.normalise(images), indices=[1, 2, 3, 4], intermediates_only=True
    )
    # block k's map is at 1/2^k of the input: taken before its max pool, after the ReLU
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4]
    assert all((m >= 0).all() for m in maps)
    assert torch.allclose(descriptors[:, :128], maps[0].mean(dim=(2, 3)), atol=1e-6)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "lcnet_050", "resnet18"])
def test_pooled_dim_is_the_pooled_output_width(name: str) -> None:
    """Models with a head after the pool (MobileNetV3, LCNet) output head_hidden_size, not num_features."""
    encoder = build_encoder(name, take="pooled")
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, encoder.dim)


def test_encoder_is_frozen_and_stays_in_eval_mode() -> None:
    encoder = build_encoder("resnet18", take="pooled")
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(encoder(x), encoder(x))
    assert encoder(x).shape == (3, 512)
    # uint8 images are scaled to [0, 1] first
    torch.testing.assert_close(
        encoder((x * 255).round().to(torch.uint8)), encoder((x * 255).round() / 255)
    )


def test_random_weights_are_reproducible_and_local_weights_load(tmp_path: Path) -> None:
    a, b = build_encoder("resnet18"), build_encoder("resnet18")
    assert a.fingerprint()["weights_sha256"] == b.fingerprint()["weights_sha256"]
    with torch.random.fork_rng():
        torch.manual_seed(123)
        import timm

        other = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "resnet18.pth"
    torch.save(other.state_dict(), path)
    loaded = build_encoder("resnet18", weights=str(path))
    assert loaded.fingerprint()["weights"] == "file"
    assert loaded.fingerprint()["weights_sha256"] != a.fingerprint()["weights_sha256"]
    x = torch.rand(1, 3, 64, 64)
    expected = other.eval()((x - loaded.mean) / loaded.std)
    torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), path)
    with pytest.raises(ConfigError, match=r"encoder.weights=.*vit.pth.*same architecture"):
        build_encoder("resnet18", weights=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        build_encoder("resnet18", weights=str(tmp_path / "missing.pth"))


def test_vit_class_token_plus_mean_patch_token() -> None:
    encoder = build_encoder("vit_tiny_patch16_224", take="cls_mean", normalization="imagenet")
    x = torch.rand(2, 3, 224, 224)
    tokens = encoder.backbone.forward_features(encoder.normalise(x))
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
    assert encoder.dim == 2 * 192
    torch.testing.assert_close(encoder(x), expected)


def test_bad_encoder_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"encoder.name='not_a_net'"):
        build_encoder("not_a_net")
    with pytest.raises(ConfigError, match=r"encoder.stages=\[9\]"):
        build_encoder("resnet18", take="stages", stages=[9])
    with pytest.raises(ConfigError, match=r"encoder.take='tokens'"):
        build_encoder("resnet18", take="tokens")


def test_fingerprint_names_what_changes_the_descriptors() -> None:
    pooled = build_encoder("resnet18").fingerprint()
    staged = build_encoder("resnet18", take="stages", stages=[3, 4]).fingerprint()
    assert pooled["take"] == "pooled" and staged["stages"] == [3, 4]
    assert staged["dim"] == 256 + 512
    custom = build_encoder("resnet18", normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    assert custom.fingerprint()["normalization"]["name"] == "explicit"
