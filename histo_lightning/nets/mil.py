"""Multiple-instance networks: instance encoders, mask-aware MIL pooling, and the bag classifier.

Shapes: a batch of bags is ``instances (B, n, ...)`` with ``mask (B, n)`` (True = real instance, see
:func:`histo_lightning.data.bags.collate_bags`). Encoders see only the real instances (so padding costs
nothing and cannot touch batch statistics); pooling gives padding zero weight. A padded batch therefore
gives the same outputs as its bags one at a time.

Instance encoders (``f_phi`` of Li et al. §3.0.1), each with ``.dim``:

* :class:`IlseHistoCNN`: the instance network of Ilse et al. (2018, appendix, the Colon/breast
  experiments, after Sirinukunwattana et al. 2016): conv(4×4, 36)-ReLU-maxpool(2), conv(3×3, 48)-ReLU-
  maxpool(2), fc-512-ReLU-dropout, fc-512-ReLU-dropout; valid convolutions, stride 1. Dropout p=0.5 (the
  table gives no rate; 0.5 is the usual value and the one public re-implementations use). For 27×27
  inputs the flattened map is 5×5×48 = 1200; for 32×32, 6×6×48 = 1728 (computed from ``patch_size``).
* :class:`LeNetEncoder`: Ilse's LeNet-5 variant for 28×28 MNIST (conv(5,20)-ReLU-pool, conv(5,50)-ReLU-
  pool, fc-500-ReLU, as their ``model.py``) and an 8×8 version for scikit-learn digits (3×3 convs with
  padding 1: 8 → 4 → 2, 50×2×2 = 200 → fc-500).
* :class:`TimmEncoder`: any timm backbone, ``timm.create_model(name, num_classes=0)`` (pooled features).
* :class:`IdentityEncoder`: precomputed features (``(B, n, D)`` bags of the feature cache).

Pooling (``(h (B, n, M), mask) → (z (B, M), w (B, n))``):

* :class:`AttentionPooling` ``kind="tanh"``: Ilse Eq. 8, ``w = softmax(wᵀ tanh(V h))``;
  ``kind="gated"``: Ilse Eq. 9, ``w = softmax(wᵀ (tanh(V h) ⊙ sigm(U h)))``;
  ``kind="softsign"``: Li Eq. 1, ``w = softmax(vᵀ softsign(U g))``, ``softsign(x) = x / (1 + |x|)``.
  ``z = Σ w g`` with the adaptive weighting of Li Eq. 2 when ``aw_factor != 1``.
* :class:`MeanPooling` (uniform weights) and :class:`MaxPooling` (element-wise max; an instance's weight
  is the share of the M features where it is the maximum), the baselines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histo_lightning.utils.choices import BOOLEAN, Accepts, declare_choices

ATTENTION_KINDS = ("tanh", "gated", "softsign")
POOLINGS = (*ATTENTION_KINDS, "mean", "max")


# --------------------------------------------------------------------------------------------
# Instance encoders
# --------------------------------------------------------------------------------------------


class IlseHistoCNN(nn.Module):
    """Ilse et al.'s instance CNN for 27×27 (Colon) and 32×32 (UCSB) patches (see the module docstring)."""

    def __init__(
        self, patch_size: int = 27, in_channels: int = 3, dim: int = 512, dropout: float = 0.5
    ) -> None:
        super().__init__()
        side = ((patch_size - 3) // 2 - 2) // 2  # conv4 → pool2 → conv3 → pool2
        if side < 1:
            raise ValueError(f"patch_size={patch_size} is too small for IlseHistoCNN (needs >= 10)")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 36, kernel_size=4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(36, 48, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(48 * side * side, dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LeNetEncoder(nn.Module):
    """Ilse et al.'s LeNet-5 variant for 28×28 MNIST, or its 8×8 version for scikit-learn digits."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, dim: int = 500) -> None:
        super().__init__()
        if image_size == 28:
            kernel, padding, side = 5, 0, 4  # 28 → 24 → 12 → 8 → 4
        elif image_size == 8:
            kernel, padding, side = 3, 1, 2  # 8 → 8 → 4 → 4 → 2
        else:
            raise ValueError(
                f"LeNetEncoder supports image_size 28 (MNIST) or 8 (digits), got {image_size}"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=kernel, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, kernel_size=kernel, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * side * side, dim), nn.ReLU(inplace=True)
        )
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class TimmEncoder(nn.Module):
    """A trainable timm backbone as instance encoder: ``timm.create_model(name, num_classes=0)``.

    ``pretrained`` loads timm's weights (from its local cache; nothing is downloaded in tests) and
    ``checkpoint_path`` a local file. Inputs are normalised with the backbone's ``mean``/``std``.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        in_channels: int = 3,
        checkpoint_path: str | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=0,
            in_chans=in_channels,
            checkpoint_path=checkpoint_path or "",
        )
        config = self.backbone.pretrained_cfg or {}
        mean = torch.tensor(config.get("mean", (0.5,) * in_channels), dtype=torch.float32)
        std = torch.tensor(config.get("std", (0.5,) * in_channels), dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1)[:, :in_channels], persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1)[:, :in_channels], persistent=False)
        self.dim = int(self.backbone.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)


class IdentityEncoder(nn.Module):
    """Instances that are already feature vectors ``(N, D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"IdentityEncoder(dim={self.dim}) got features of size {x.shape[-1]}")
        return x


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over instances (dim 1) with padded instances at exactly zero weight."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=1).masked_fill(~mask, 0.0)


def pseudo_negatives(weights: Tensor, mask: Tensor) -> Tensor:
    """``(B, n)`` bool: real instances whose weight is below their bag's mean weight (Li Eq. 2's N_in).

    "Below" allows for rounding (``w < mean · (1 − 1e-6)``), so equal weights (mean pooling, a bag of
    identical instances) give no pseudo negative on any machine or batch layout.
    """
    n = mask.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (weights * mask).sum(dim=1, keepdim=True) / n
    return (weights < mean * (1.0 - 1e-6)) & mask


def adaptive_weighted_sum(
    h: Tensor, weights: Tensor, mask: Tensor, factor: float, renormalise: bool = False
) -> Tensor:
    """Li et al. Eq. 2: ``z = Σ_{j ∉ N_in} w_j g_j + λ Σ_{j ∈ N_in} w_j g_j``, ``λ = factor``.

    ``N_in`` (pseudo negatives) are the instances whose attention is below the bag's mean attention
    ("thresholding on the average weights", §3.0.1), found afresh in every forward pass. ``factor == 1``
    is the plain attention sum (Ilse Eq. 7). As written, the weights are not renormalised, so ``z`` has a
    different scale in training (λ applied) than in testing (not applied); ``renormalise`` divides the
    scaled weights by their sum (``w'_j = s_j w_j / Σ s_k w_k``), so ``z`` stays a convex combination of
    the embeddings in training and testing alike (a reading the paper does not give; an option).
    """
    if factor == 1.0:
        return torch.einsum("bn,bnm->bm", weights, h)
    scale = torch.where(
        pseudo_negatives(weights, mask), weights.new_tensor(factor), weights.new_tensor(1.0)
    )
    scaled = weights * scale
    if renormalise:
        scaled = scaled / scaled.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scaled.dtype).tiny)
    return torch.einsum("bn,bnm->bm", scaled, h)


class WeightedPooling(nn.Module):
    """``z = Σ w h`` with mask-aware softmax weights from :meth:`scores`, and optional Eq. 2 weighting.

    Args:
        aw_factor: λ of Li et al. Eq. 2 (1 = off). Eq. 2 MULTIPLIES the pseudo-negatives' weighted
            embeddings by λ, and the paper sets λ = 2; its text says "when λ is set > 1, the weights of
            the pseudo negative instances will be reduced", which Eq. 2 does not do. We implement Eq. 2
            (``aw_factor=2`` is the paper's setting as written); the text's reading (pseudo negatives
            reduced) is ``aw_factor=0.5`` (``1/λ``).
        aw_at_eval: also apply the weighting in evaluation (``model.eval()``); the paper speaks of
            "each training iteration", so the default is training only.
        aw_renormalise: divide the λ-scaled weights by their sum (:func:`adaptive_weighted_sum`), so the
            bag embedding has the same scale in training and testing.
    """

    def __init__(
        self, aw_factor: float = 1.0, aw_at_eval: bool = False, aw_renormalise: bool = False
    ) -> None:
        super().__init__()
        if aw_factor <= 0:
            raise ValueError(f"aw_factor must be positive, got {aw_factor}")
        self.aw_factor = float(aw_factor)
        self.aw_at_eval = bool(aw_at_eval)
        self.aw_renormalise = bool(aw_renormalise)

    def scores(self, h: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def instance_embeddings(self, h: Tensor) -> Tensor:
        """Per-instance vectors of the pooling's own learned representation (default: ``h`` itself)."""
        return h

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = masked_softmax(self.scores(h), mask)
        factor = self.aw_factor if (self.training or self.aw_at_eval) else 1.0
        return adaptive_weighted_sum(h, weights, mask, factor, self.aw_renormalise), weights


class AttentionPooling(WeightedPooling):
    """Attention MIL pooling: Ilse's ``tanh`` or ``gated`` attention, or Li's ``softsign`` (Eq. 1).

    Args:
        dim: M, the embedding size.
        hidden: L, the attention network's hidden size (Ilse: 128).
        kind: ``tanh`` | ``gated`` | ``softsign``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        kind: str = "tanh",
        aw_factor: float = 1.0,
        aw_at_eval: bool = False,
        aw_renormalise: bool = False,
    ) -> None:
        super().__init__(aw_factor, aw_at_eval, aw_renormalise)
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind {kind!r} is not one of {ATTENTION_KINDS}")
        self.kind = kind
        self.project = nn.Linear(dim, hidden)  # V (Ilse), U (Li Eq. 1)
        self.gate = nn.Linear(dim, hidden) if kind == "gated" else None  # U (Ilse Eq. 9)
        self.score = nn.Linear(hidden, 1)  # w (Ilse), v (Li)

    def hidden(self, h: Tensor) -> Tensor:
        """The attention network's hidden layer (L values per instance): ``softsign(U h)`` (Li Eq. 1),
        ``tanh(V h)`` (Ilse Eq. 8) or its gated form (Eq. 9)."""
        projected = self.project(h)
        if self.kind == "softsign":
            return F.softsign(projected)
        hidden = torch.tanh(projected)
        if self.gate is not None:
            hidden = hidden * torch.sigmoid(self.gate(h))
        return hidden

    def instance_embeddings(self, h: Tensor) -> Tensor:
        """The attention network without its last layer (``v``/``w``): what the MIL network learned about
        each instance, also when its instance encoder is an identity over frozen features."""
        return self.hidden(h)

    def scores(self, h: Tensor) -> Tensor:
        return self.score(self.hidden(h)).squeeze(-1)


class MeanPooling(WeightedPooling):
    """Mean over the real instances (uniform weights; Eq. 2 then changes nothing: no weight is below
    the mean)."""

    def __init__(self, dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def scores(self, h: Tensor) -> Tensor:
        return h.new_zeros(h.shape[:2])


class MaxPooling(nn.Module):
    """Element-wise max over the real instances; weight = share of the M features an instance wins."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        masked = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        z, winner = masked.max(dim=1)
        weights = F.one_hot(winner, h.shape[1]).to(h.dtype).mean(dim=1)  # (B, n)
        return z, weights


# --------------------------------------------------------------------------------------------
# The bag classifier
# --------------------------------------------------------------------------------------------


class MILClassifier(nn.Module):
    """Encoder → MIL pooling → linear head: the bag probability and the instance weights.

    ``forward(instances (B, n, ...), mask (B, n) | None)`` returns ``{"logit": (B,), "prob": (B,),
    "attention": (B, n), "embedding": (B, M)}``; ``mask=None`` means every instance is real.

    Args:
        encoder: instance encoder with ``.dim`` (M).
        pooling: a pooling module (``(h, mask) → (z, w)``).
        instance_chunk: encode at most this many instances at a time (bounds memory for large bags).
    """

    def __init__(self, encoder: nn.Module, pooling: nn.Module, instance_chunk: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Linear(int(encoder.dim), 1)
        self.instance_chunk = int(instance_chunk)

    def encode(self, instances: Tensor, mask: Tensor) -> Tensor:
        """``(B, n, M)`` embeddings of the real instances, zeros at padding."""
        real = instances[mask]
        if self.instance_chunk > 0 and len(real) > self.instance_chunk:
            encoded = torch.cat([self.encoder(c) for c in real.split(self.instance_chunk)])
        else:
            encoded = self.encoder(real)
        h = encoded.new_zeros((*mask.shape, encoded.shape[-1]))
        h[mask] = encoded
        return h

    def forward(self, instances: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        if mask is None:
            mask = torch.ones(instances.shape[:2], dtype=torch.bool, device=instances.device)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every bag needs at least one real instance")
        h = self.encode(instances, mask)
        z, weights = self.pooling(h, mask)
        logit = self.head(z).squeeze(-1)
        return {"logit": logit, "prob": torch.sigmoid(logit), "attention": weights, "embedding": z}


# --------------------------------------------------------------------------------------------
# Built from config
# --------------------------------------------------------------------------------------------

#: instance encoders by their config name (``model.net.encoder.name``)
ENCODERS: dict[str, type[nn.Module]] = {
    "ilse_cnn": IlseHistoCNN,
    "lenet": LeNetEncoder,
    "timm": TimmEncoder,
    "identity": IdentityEncoder,
}


def build_instance_encoder(spec: Mapping[str, Any] | nn.Module) -> nn.Module:
    """An instance encoder from ``{name: ilse_cnn|lenet|timm|identity, **its arguments}`` (or as given).

    The datasets' configs name the paper's encoder (``method.protocol.encoder``): ``ilse_cnn`` with
    ``patch_size`` 27 (Colon) or 32 (UCSB), ``lenet`` with ``image_size`` 8 (digits) or 28 (MNIST).
    Keys set to None are left out (a derived config drops a key of the one it extends that way, e.g.
    ``{name: identity, dim: 512, patch_size: null}``).
    """
    if isinstance(spec, nn.Module):
        return spec
    settings = {k: v for k, v in dict(spec).items() if v is not None}
    name = settings.pop("name", None)
    if name not in ENCODERS:
        raise ValueError(f"model.net.encoder.name={name!r} is not one of {sorted(ENCODERS)}")
    try:
        return ENCODERS[name](**settings)
    except TypeError as err:
        raise ValueError(f"model.net.encoder ({name}): {err}") from None


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and float(value) > 0


@declare_choices(
    pooling=POOLINGS,
    aw_factor=Accepts("a positive number (Li Eq. 2's lambda; 1: off)", _positive),
    aw_at_eval=BOOLEAN,
    aw_renormalise=BOOLEAN,
    **{"encoder.name": tuple(ENCODERS)},
)
def build_mil_classifier(
    encoder: Mapping[str, Any] | nn.Module,
    pooling: str = "tanh",
    attention_dim: int = 128,
    aw_factor: float = 1.0,
    aw_at_eval: bool = False,
    aw_renormalise: bool = False,
    instance_chunk: int = 0,
) -> MILClassifier:
    """Encoder → pooling → linear head (``model.net`` of the ``mil_*`` model configs).

    Args:
        encoder: an encoder spec (:func:`build_instance_encoder`) or module.
        pooling: ``tanh`` (Ilse Eq. 8, the tables' "MIL Model"), ``gated`` (Ilse Eq. 9), ``softsign``
            (Li Eq. 1), ``mean`` or ``max``.
        attention_dim: L, the attention network's hidden size (Ilse: 128).
        aw_factor, aw_at_eval, aw_renormalise: Li Eq. 2's λ, whether it also applies in evaluation,
            and whether the scaled weights are renormalised (see :class:`WeightedPooling`; ``mil_aw``:
            λ = 2, training only, not renormalised).
        instance_chunk: encode at most this many instances at once (0: all).
    """
    net = build_instance_encoder(encoder)
    dim = int(net.dim)
    if pooling in ATTENTION_KINDS:
        pool: nn.Module = AttentionPooling(
            dim, attention_dim, pooling, aw_factor, aw_at_eval, aw_renormalise
        )
    elif pooling == "mean":
        pool = MeanPooling(
            dim, aw_factor=aw_factor, aw_at_eval=aw_at_eval, aw_renormalise=aw_renormalise
        )
    elif pooling == "max":
        if aw_factor != 1.0:
            raise ValueError("adaptive weighting (aw_factor != 1) needs weighted pooling, not max")
        pool = MaxPooling(dim)
    else:
        raise ValueError(f"model.net.pooling={pooling!r} is not one of {POOLINGS}")
    return MILClassifier(net, pool, instance_chunk)


__all__ = [
    "ATTENTION_KINDS",
    "ENCODERS",
    "POOLINGS",
    "AttentionPooling",
    "IdentityEncoder",
    "IlseHistoCNN",
    "LeNetEncoder",
    "MILClassifier",
    "MaxPooling",
    "MeanPooling",
    "TimmEncoder",
    "WeightedPooling",
    "adaptive_weighted_sum",
    "build_instance_encoder",
    "build_mil_classifier",
    "masked_softmax",
    "pseudo_negatives",
]
