"""Frozen feature encoders: any timm backbone (ImageNet CNNs, pathology foundation models) as ``images → (B, D)``.

:func:`build_encoder` is the ``encoder`` config group's target (``conf/encoder/*.yaml``). The encoder

* takes float RGB images in [0, 1] (or uint8 0–255) of shape ``(B, 3, H, W)`` and applies its own input
  normalisation (the weights' own mean/std from timm's ``pretrained_cfg`` by default, or explicit values);
* returns one descriptor per image, by ``take``:

  - ``pooled``: the backbone's pooled output (``num_classes=0``: global average pool for CNNs, the class
    token or token average for ViTs, as the model defines it);
  - ``stages``: the global-average-pooled feature maps of the chosen stages (timm ``feature_info``
    indices), concatenated, e.g. VGG-16's blocks 2–5 after the ReLU before each pooling
    (``stages: [1, 2, 3, 4]``: 128 + 256 + 512 + 512 = 1408 values, Rakhlin et al. §2.4);
  - ``cls_mean``: for vision transformers, the class token concatenated with the mean of the patch tokens
    (Virchow's recipe);

* is frozen: ``requires_grad`` off and always in eval mode (BatchNorm statistics never move);
* runs channels-last and, on CUDA, under bf16 autocast (``precision``), returning float32;
* knows what it is: :meth:`FrozenEncoder.fingerprint` names the timm model, where the weights came from,
  the sha256 of its state dict, what is taken and the normalisation; feature caches key on it.

Weights (``weights``): ``random`` (tests, pipeline checks), ``timm`` (timm's pretrained weights from its
local cache; nothing is downloaded on a machine without network), or a path to a state dict
(``.pth``/``.bin``/``.safetensors``), which is how foundation models such as UNI, Virchow or H-optimus are
used here: build the same timm architecture (``model_kwargs``) and load the published file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from histo_lightning.errors import ConfigError
from histo_lightning.nets.weights import load_matching_weights, state_dict_digest
from histo_lightning.utils.choices import declare_choices

TAKE_MODES = ("pooled", "stages", "cls_mean")
PRECISIONS = ("bf16", "fp32")
RANDOM_INIT_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# model_kwargs values that name a class or function (timm's layer factories take them as objects)
_CALLABLE_KWARGS = ("mlp_layer", "act_layer", "norm_layer", "block_fn")


def _import_object(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"encoder.model_kwargs: cannot import {dotted!r} (expected package.module.Name)"
        ) from None


def _model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(kwargs or {})
    for key in _CALLABLE_KWARGS:
        if isinstance(out.get(key), str):
            out[key] = _import_object(out[key])
    return out


def _normalisation(
    normalization: str | Mapping[str, Sequence[float]], backbone: nn.Module
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    if isinstance(normalization, Mapping):
        mean, std = tuple(normalization["mean"]), tuple(normalization["std"])
        return mean, std, "explicit"
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD, "imagenet"
    if normalization == "timm":
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        return (
            tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)),
            f"timm:{cfg.get('tag') or cfg.get('architecture') or '?'}",
        )
    raise ConfigError(
        f"encoder.normalization={normalization!r}: expected timm, imagenet or {{mean: [...], std: [...]}}"
    )


class FrozenEncoder(nn.Module):
    """A frozen backbone with its input normalisation and descriptor head (see the module docstring).

    Built by :func:`build_encoder`; ``dim`` is the descriptor length.
    """

    def __init__(
        self,
        backbone: nn.Module,
        name: str,
        weights: str,
        take: str,
        stages: Sequence[int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        normalization_name: str,
        channels_last: bool = True,
        precision: str = "bf16",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.weights = weights
        self.take = take
        self.stages = list(stages) if stages is not None else None
        self.normalization_name = normalization_name
        self.channels_last = channels_last
        self.precision = precision
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.eval()
        self.dim = self._probe_dim()
        self._digest: str | None = None

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always eval: a frozen encoder's BatchNorm/dropout never switch to training behaviour."""
        return super().train(False)

    def _probe_dim(self) -> int:
        if self.take == "stages":
            infos = self.backbone.feature_info
            return int(sum(infos[i]["num_chs"] for i in self.stages))
        if self.take == "cls_mean":
            return 2 * int(self.backbone.num_features)
        # the pooled output is the pre-logits features: wider than num_features where a head
        # convolution or MLP follows the pool (MobileNetV3 1024, LCNet 1280, VGG's fc6/fc7 4096)
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    def normalise(self, images: Tensor) -> Tensor:
        """Float images in [0, 1] (uint8 scaled by 1/255), normalised by the encoder's mean and std."""
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        images = (images - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _descriptors(self, x: Tensor) -> Tensor:
        if self.take == "stages":
            maps = self.backbone.forward_intermediates(
                x, indices=self.stages, intermediates_only=True
            )
            return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)
        if self.take == "cls_mean":
            tokens = self.backbone.forward_features(x)
            prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
            return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=1)
        return self.backbone(x)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = self.normalise(images)
        autocast = self.precision == "bf16" and x.device.type == "cuda"
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self._descriptors(x).float()

    def fingerprint(self) -> dict[str, Any]:
        """What produced this encoder's descriptors (feature caches are keyed by it)."""
        if self._digest is None:
            self._digest = state_dict_digest(self.backbone)
        return {
            "encoder": self.name,
            "weights": self.weights,
            "weights_sha256": self._digest,
            "take": self.take,
            "stages": self.stages,
            "dim": self.dim,
            "normalization": {
                "name": self.normalization_name,
                "mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()],
            },
            # bf16 autocast on GPU changes the numbers: a cache made in bf16 is not an fp32 one
            "precision": self.precision,
        }


def _create(name: str, weights: str, take: str, model_kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        raise ConfigError(f"encoder.name={name!r} is not a timm model (see timm.list_models())")
    pretrained = weights == "timm"
    try:
        # random weights are drawn from a fixed seed: a random encoder is the same network in every run,
        # so pipeline checks are reproducible and their feature caches reusable
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise ConfigError(
            f"encoder.weights=timm: timm could not load pretrained weights for {name!r} ({err}); with no "
            "network, put them in the timm/Hugging Face cache or pass encoder.weights=/path/to/weights "
            "(encoder.weights=random for a pipeline check)"
        ) from None


@declare_choices(take=TAKE_MODES, precision=PRECISIONS)
def build_encoder(
    name: str,
    weights: str = "random",
    take: str = "pooled",
    stages: Sequence[int] | None = None,
    normalization: str | Mapping[str, Sequence[float]] = "timm",
    channels_last: bool = True,
    precision: str = "bf16",
    model_kwargs: Mapping[str, Any] | None = None,
) -> FrozenEncoder:
    """A :class:`FrozenEncoder` (the ``encoder`` group's ``_target_``; see the module docstring).

    Args:
        name: a timm model name (``resnet50.tv_in1k``, ``vgg16.tv_in1k``, ``vit_large_patch16_224``, ...).
        weights: ``random``, ``timm`` (timm's pretrained weights, from its cache) or a state-dict path.
        take: ``pooled``, ``stages`` or ``cls_mean``. stages: ``feature_info`` indices for ``stages``.
        normalization: ``timm`` (the weights' own mean/std), ``imagenet`` or ``{mean, std}``.
        channels_last: run in channels-last memory format. precision: ``bf16`` (autocast on CUDA) or ``fp32``.
        model_kwargs: extra ``timm.create_model`` arguments (``init_values``, ``dynamic_img_size``,
            ``mlp_layer: timm.layers.SwiGLUPacked`` ...), as foundation models need them.
    """
    if take not in TAKE_MODES:
        raise ConfigError(f"encoder.take={take!r}: expected one of {', '.join(TAKE_MODES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"encoder.precision={precision!r}: expected one of {PRECISIONS}")
    weights = str(weights)
    backbone = _create(name, weights, take, _model_kwargs(model_kwargs))
    if weights not in ("random", "timm"):
        load_matching_weights(backbone, weights, "encoder.weights")
    if take == "stages":
        if not stages:
            raise ConfigError("encoder.take=stages needs encoder.stages (feature_info indices)")
        n = len(backbone.feature_info)
        bad = [s for s in stages if not 0 <= int(s) < n]
        if bad:
            raise ConfigError(
                f"encoder.stages={list(stages)}: {name} has stages 0..{n - 1} "
                f"({[i['module'] for i in backbone.feature_info]})"
            )
        stages = [int(s) for s in stages]
        if hasattr(backbone, "prune_intermediate_layers"):
            # drop the layers after the last stage used (VGG's fc6/fc7 alone are 120 M parameters)
            backbone.prune_intermediate_layers(stages, prune_norm=True, prune_head=True)
    elif take == "cls_mean" and not hasattr(backbone, "num_prefix_tokens"):
        raise ConfigError(f"encoder.take=cls_mean needs a vision transformer; {name} is not one")
    mean, std, norm_name = _normalisation(normalization, backbone)
    return FrozenEncoder(
        backbone,
        name=name,
        weights=weights if weights in ("random", "timm") else "file",
        take=take,
        stages=stages if take == "stages" else None,
        mean=mean,
        std=std,
        normalization_name=norm_name,
        channels_last=channels_last,
        precision=precision,
    )


__all__ = ["FrozenEncoder", "build_encoder"]
