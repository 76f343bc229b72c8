"""Descriptor maths (§2.3–2.4): Eq. 1 pooling, seeded views, crops with rotations/flips, the whole image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histo_lightning.data.stain import scale_he
from histo_lightning.errors import ConfigError
from histo_lightning.methods.rakhlin.multicrop import (
    N_SYMMETRIES,
    ViewSettings,
    augmented_crops,
    draw_colour,
    draw_crops,
    gather_crops,
    image_descriptors,
    image_tensor,
    symmetry_grids,
)
from histo_lightning.nets.pooling import NormPool, norm_pool

# ---- Eq. 1 ---------------------------------------------------------------------------------------------


def test_norm_pool_is_eq1() -> None:
    rng = np.random.default_rng(0)
    d = rng.gamma(1.0, 2.0, size=(5, 20, 7))  # non-negative, like ReLU descriptors
    pooled = norm_pool(torch.from_numpy(d), p=3, dim=1).numpy()
    np.testing.assert_allclose(pooled, np.power(np.power(d, 3).mean(axis=1), 1 / 3), rtol=1e-12)
    np.testing.assert_allclose(norm_pool(torch.from_numpy(d), 1, dim=1).numpy(), d.mean(1))
    assert NormPool(3, dim=1)(torch.from_numpy(d)).shape == (5, 7)


def test_norm_pool_approaches_the_max_for_large_p() -> None:
    d = torch.rand(4, 20, 6, dtype=torch.float64) * 50
    maximum = d.amax(dim=1)
    previous = norm_pool(d, 1, dim=1)
    for p in (2, 3, 8, 32, 128):
        pooled = norm_pool(d, p, dim=1)
        assert (pooled >= previous - 1e-9).all()  # power means grow with p
        assert (pooled <= maximum + 1e-9).all() and (
            pooled >= maximum * 20 ** (-1 / p) - 1e-9
        ).all()
        previous = pooled
    assert torch.allclose(norm_pool(d, 1024, dim=1), maximum, rtol=3e-3)
    assert torch.equal(norm_pool(d, math.inf, dim=1), maximum)
    # large values and p neither overflow nor underflow in float32
    big = torch.full((1, 20, 3), 1e4, dtype=torch.float32)
    assert torch.allclose(norm_pool(big, 64, dim=1), big[:, 0])


def test_norm_pool_of_signed_descriptors_uses_the_real_root() -> None:
    d = torch.tensor([[-2.0, 1.0, 0.5], [-1.0, -1.0, -3.0]], dtype=torch.float64).T[None]
    expected = np.cbrt(np.mean(d.numpy() ** 3, axis=1))
    np.testing.assert_allclose(norm_pool(d, 3, dim=1).numpy(), expected)
    with pytest.raises(ValueError):
        norm_pool(d, 0)


# ---- views ---------------------------------------------------------------------------------------------


def test_symmetry_grids_are_the_eight_rotations_and_flips() -> None:
    crop = torch.arange(5 * 5).reshape(5, 5)
    rows, cols = symmetry_grids(5)
    seen = set()
    for v in range(N_SYMMETRIES):
        expected = torch.rot90(crop, v % 4, (0, 1))
        if v >= 4:
            expected = expected.flip(1)
        assert torch.equal(crop[rows[v], cols[v]], expected)
        seen.add(tuple(expected.flatten().tolist()))
    assert len(seen) == 8


def test_gather_crops_equals_slicing_rotating_flipping() -> None:
    image = torch.randint(0, 256, (3, 30, 41), dtype=torch.uint8)
    top = torch.tensor([0, 5, 12, 12, 0, 3, 9, 12])
    left = torch.tensor([0, 7, 23, 0, 23, 11, 2, 23])
    symmetry = torch.arange(8)
    crops = gather_crops(image, top, left, symmetry, 18)
    assert crops.shape == (8, 3, 18, 18) and crops.dtype == torch.uint8
    for b in range(8):
        expected = image[:, top[b] : top[b] + 18, left[b] : left[b] + 18]
        expected = torch.rot90(expected, int(symmetry[b]) % 4, (1, 2))
        if symmetry[b] >= 4:
            expected = expected.flip(2)
        assert torch.equal(crops[b], expected)


def test_crops_stay_inside_and_cover_every_symmetry() -> None:
    settings = ViewSettings(n_augmentations=300, n_crops=20)
    height, width, size = 40, 64, 25
    crops = draw_crops(settings, "b001", size, height, width)
    assert crops.top.shape == (300, 20)
    assert crops.top.min() == 0 and crops.top.max() == height - size  # the whole range is reached
    assert crops.left.min() == 0 and crops.left.max() == width - size
    counts = np.bincount(crops.symmetry.ravel(), minlength=N_SYMMETRIES)
    assert len(counts) == 8 and counts.min() > 0.8 * 6000 / 8  # ~uniform over the 8 symmetries
    with pytest.raises(ConfigError, match="does not fit"):
        draw_crops(settings, "b001", 41, height, width)


def test_draws_are_seeded_per_image_and_crop_size() -> None:
    settings = ViewSettings()
    colour = draw_colour(settings, "b001")
    assert colour.shape == (50, 2) and colour.min() >= 0.7 and colour.max() <= 1.3
    np.testing.assert_array_equal(colour, draw_colour(ViewSettings(), "b001"))
    assert not np.array_equal(colour, draw_colour(settings, "b002"))
    assert not np.array_equal(colour, draw_colour(ViewSettings(seed=1), "b001"))
    a = draw_crops(settings, "b001", 400, 768, 1024)
    b = draw_crops(settings, "b001", 400, 768, 1024)
    c = draw_crops(settings, "b001", 650, 768, 1024)
    np.testing.assert_array_equal(a.top, b.top)
    np.testing.assert_array_equal(a.symmetry, b.symmetry)
    assert not np.array_equal(a.top, c.top)
    with pytest.raises(ConfigError, match="he_mode"):
        ViewSettings(he_mode="rgb")


def _toy_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).double()
    return net.eval()


def test_image_descriptors_equal_the_recipe_done_by_hand() -> None:
    """Eq. 1 over the encoded crops of each augmentation, crops cut, turned and coloured as drawn."""
    rng = np.random.default_rng(0)
    array = rng.integers(30, 230, size=(36, 48, 3), dtype=np.uint8)
    settings = ViewSettings(n_augmentations=4, n_crops=3)
    encoder = _toy_encoder()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return encoder(x.double())

    out = image_descriptors(image_tensor(array), "is007", encode, settings, 20, crops_per_batch=7)
    assert out.shape == (4, 6) and out.dtype == torch.float32
    colour = draw_colour(settings, "is007")
    crops = draw_crops(settings, "is007", 20, 36, 48)
    for a in range(4):
        encoded = []
        for k in range(3):
            t, left, r, f = (int(v[a, k]) for v in (crops.top, crops.left, crops.rot, crops.flip))
            crop = np.rot90(array[t : t + 20, left : left + 20], r)
            crop = np.ascontiguousarray(crop[:, ::-1] if f else crop)
            crop = scale_he(crop, colour[a, 0], colour[a, 1])
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].double() / 255
            encoded.append(encoder(x)[0])
        expected = torch.stack(encoded).pow(3).mean(0).pow(1 / 3)
        assert torch.allclose(out[a].double(), expected, atol=1e-5)
    # any subset, any batching: the same numbers
    again = image_descriptors(image_tensor(array), "is007", encode, settings, 20, crops_per_batch=3)
    assert torch.allclose(out, again, atol=1e-6)


def test_augmented_crops_use_each_augmentations_colour() -> None:
    array = np.full((24, 24, 3), 150, dtype=np.uint8)
    settings = ViewSettings(n_augmentations=3, n_crops=2)
    colour = draw_colour(settings, "n001")
    crops = draw_crops(settings, "n001", 10, 24, 24)
    batch = augmented_crops(image_tensor(array), colour, crops, range(1, 3))
    assert batch.shape == (4, 3, 10, 10)
    for i, a in enumerate((1, 1, 2, 2)):
        expected = scale_he(array[:10, :10], colour[a, 0], colour[a, 1])
        assert torch.equal(batch[i], torch.from_numpy(expected).permute(2, 0, 1))
