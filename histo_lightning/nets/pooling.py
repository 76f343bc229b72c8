"""p-norm pooling of a set of descriptors (Rakhlin et al. Eq. 1, after Boureau et al. 2010)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def norm_pool(descriptors: Tensor, p: float = 3.0, dim: int = -2) -> Tensor:
    """``d_pool = ((1/N) Σ_i d_i^p)^(1/p)`` over ``dim`` (Eq. 1), per feature.

    ``p = 1`` is the mean, ``p → ∞`` the maximum (``p=math.inf`` gives it exactly); the paper uses
    ``p = 3``. Computed in float32 or wider, as ``m · ((1/N) Σ (d_i/m)^p)^(1/p)`` with ``m`` the largest
    ``|d_i|`` of the feature, so large ``p`` neither overflows nor underflows. The root is the real one
    (``sign(x)·|x|^(1/p)``): for the non-negative descriptors of ReLU networks that is Eq. 1 as written;
    for odd ``p`` and signed descriptors (other encoders) it is the real-valued Eq. 1.
    """
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    x = descriptors if descriptors.dtype in (torch.float32, torch.float64) else descriptors.float()
    if math.isinf(p):
        return x.amax(dim=dim)
    if p == 1:
        return x.mean(dim=dim)
    scale = x.abs().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    ratio = x / scale
    powered = ratio.abs().pow(p) * (ratio.sign() if p % 2 == 1 else 1.0)
    mean = powered.mean(dim=dim)
    root = mean.abs().pow(1.0 / p) * mean.sign()
    return root * scale.squeeze(dim)


class NormPool(nn.Module):
    """:func:`norm_pool` as a module (``p`` and ``dim`` fixed)."""

    def __init__(self, p: float = 3.0, dim: int = -2) -> None:
        super().__init__()
        self.p, self.dim = float(p), dim

    def forward(self, descriptors: Tensor) -> Tensor:
        return norm_pool(descriptors, self.p, self.dim)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}"


__all__ = ["NormPool", "norm_pool"]
