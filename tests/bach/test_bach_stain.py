"""Rakhlin et al.'s H&E colour augmentation (§2.3): scale_he, its batched torch twin, the 2018 mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histo_lightning.data.stain import (
    RUIFROK_STAIN_MATRIX,
    he_concentrations,
    scale_he,
    scale_he_batch,
)
from histo_lightning.data.synthetic.he_render import (
    render_optical_density,
    sample_stain_style,
    smooth_noise,
)
from histo_lightning.errors import ConfigError


def _he_image(seed: int = 0, size: int = 48) -> np.ndarray:
    """A small H&E-like image (Beer-Lambert rendering of smooth H and E maps), no saturated pixels."""
    rng = np.random.default_rng(seed)
    shape = (size, size + 8)
    hema = np.clip(0.3 + 0.15 * smooth_noise(rng, shape, 4.0), 0.05, None)
    eosin = np.clip(0.25 + 0.1 * smooth_noise(rng, shape, 6.0), 0.05, None)
    rgb = render_optical_density(hema, eosin, sample_stain_style(rng))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def test_identity_factors_return_the_image() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)  # every value, incl. 0 and 255
    for mode in ("concentrations", "rakhlin2018"):
        np.testing.assert_array_equal(scale_he(image, 1.0, 1.0, mode=mode), image)


@pytest.mark.parametrize(("h", "e"), [(1.3, 1.0), (0.7, 1.0), (1.0, 1.25), (0.8, 1.2)])
def test_scaling_multiplies_the_stain_concentrations(h: float, e: float) -> None:
    image = _he_image()
    scaled = scale_he(image, h, e)
    before, after = he_concentrations(image), he_concentrations(scaled)
    # uint8 rounding moves a channel's OD by at most 0.5 / ((I + 1) ln 10), < 0.007 for I >= 30, and
    # M⁻¹ amplifies that at most ~2.5×; darker or clipped pixels do not carry their concentrations
    inside = (scaled >= 30).all(-1) & (scaled < 255).all(-1)
    assert inside.mean() > 0.9
    tolerance = 0.02
    np.testing.assert_allclose(after[inside, 0], h * before[inside, 0], atol=tolerance)
    np.testing.assert_allclose(after[inside, 1], e * before[inside, 1], atol=tolerance)
    np.testing.assert_allclose(after[inside, 2], before[inside, 2], atol=tolerance)
    # the least-squares factor between the concentrations before and after is h (e) to 1 %
    for channel, factor in ((0, h), (1, e), (2, 1.0)):
        b, a = before[inside, channel], after[inside, channel]
        assert abs(float(a @ b / (b @ b)) - factor) < 0.01


def test_concentrations_recompose_to_the_optical_density() -> None:
    image = _he_image(2)
    od = -np.log10((image.astype(np.float64) + 1) / 240.0)
    np.testing.assert_allclose(he_concentrations(image) @ RUIFROK_STAIN_MATRIX, od, atol=1e-12)


def test_rakhlin2018_scales_red_and_green_optical_densities() -> None:
    """The published code's bug: OD_R · h and OD_G · e, blue unchanged — not the stain amounts."""
    image = _he_image(3)
    h, e = 1.3, 0.7
    buggy = scale_he(image, h, e, mode="rakhlin2018")
    od = -np.log10((image.astype(np.float64) + 1) / 240.0)
    expected = np.clip(np.rint(240.0 * 10 ** -(od * [h, e, 1.0]) - 1), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(buggy, expected)
    np.testing.assert_array_equal(buggy[..., 2], image[..., 2])
    assert np.abs(buggy.astype(int) - scale_he(image, h, e).astype(int)).max() > 10


@pytest.mark.parametrize("mode", ["concentrations", "rakhlin2018"])
def test_batched_torch_version_equals_numpy(mode: str) -> None:
    images = [_he_image(s) for s in range(3)]
    h = torch.tensor([0.7, 1.0, 1.3])
    e = torch.tensor([1.3, 0.85, 0.7])
    batch = torch.cat([_as_batch(i) for i in images])
    out64 = scale_he_batch(batch, h, e, mode=mode, dtype=torch.float64)
    out32 = scale_he_batch(batch, h, e, mode=mode)
    assert out64.dtype == torch.uint8 and out64.shape == batch.shape
    for b, image in enumerate(images):
        reference = scale_he(image, float(h[b]), float(e[b]), mode=mode)
        np.testing.assert_array_equal(out64[b].permute(1, 2, 0).numpy(), reference)
        diff = np.abs(out32[b].permute(1, 2, 0).numpy().astype(int) - reference)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="rakhlin2018"):
        scale_he(_he_image(), 1.0, 1.0, mode="rgb")
    with pytest.raises(ValueError, match="uint8"):
        scale_he(np.zeros((4, 4, 3), dtype=np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        scale_he_batch(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.ones(1), torch.ones(1))
