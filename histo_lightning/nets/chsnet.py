"""The CHS-Net patch classifier (Ma et al. 2019): Table 1's feature extractor and §3.1.3's feature fusion.

Both the screening and the refined network of the cascade (§3.1.1, §3.1.2: "Its structure is the same
as screening network's") are a :class:`CHSNet`.

**Feature extractor (Table 1).** ``conv1`` is a 7×7 convolution with 128 filters at stride 1, followed by
five stages ``conv2_x … conv6_x`` of bottleneck residual blocks (1×1, 3×3, 1×1) with bottleneck/output
widths 32/128, 64/256, 128/512, 256/1024, 512/2048, depths 3, 3, 5, 3, 3 and strides 1, 2, 2, 2, 2, so a
64×64 input gives maps of 64, 32, 16, 8 and 4 pixels. Table 1 ends with "bn + relu + average pool", the
signature of the pre-activation ResNet (He et al. 2016, "identity mappings"; TensorFlow's ``resnet_v2``,
whose settings the paper's "moving average decay" and "batch normalization moving decay" are): every
block is BN → ReLU → conv, the stride sits in the first block of a stage (in its 3×3 convolution), and a
1×1 projection of the pre-activated input forms the shortcut where the shape changes.

**Feature fusion (§3.1.3, Fig. 3).** "We fuse the feature vectors of each layer and then we do the final
classification": the output of every stage ``conv2_x … conv6_x`` goes through its own BN + ReLU + global
average pooling (for ``conv6_x`` that is Table 1's last row), the pooled vectors are concatenated
(128 + 256 + 512 + 1024 + 2048 = 3968 features at the paper's widths) and classified by two fully
connected layers with dropout 0.5 ("the dropout layer retains 50%", §4.2.2) before each. The width of the
hidden layer is not given; ``fusion_hidden`` (default 1024) sets it.

**Initialisation and BN (§4.2.2).** Xavier (Glorot uniform) weights and zero biases everywhere; the
"batch normalization moving decay of 0.99" is PyTorch momentum 0.01.

**Input (§3.4.1).** "Our input is the patch resized to 64 × 64 and its center part with same size": the
network takes the 128×128 patch (uint8 or float) and builds the two views itself (:func:`two_views`):
the patch averaged 2×2 down to 64×64 (context) and its central 64×64 crop (full resolution). How the
two views enter Table 1's single-input extractor is not stated; ``input_views`` chooses:

* ``stack`` (default): the two RGB views are stacked into one 6-channel 64×64 image for ``conv1`` (one
  extractor, Table 1's cost, early fusion of context and detail);
* ``siamese``: one extractor (shared weights) runs on each view and the fused vectors of both views are
  concatenated before the fully connected layers (twice the cost).

``width`` multiplies every channel count (Table 1's widths are ``width=1``); narrow networks make
CPU demos possible. Logits are ``(N, 2)``, class 1 = mitosis (the paper labels mitosis 0; only the
naming differs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histo_lightning.utils.choices import declare_choices

# Table 1: (bottleneck width, output width, blocks, stride) of conv2_x ... conv6_x
TABLE1_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (32, 128, 3, 1),
    (64, 256, 3, 2),
    (128, 512, 5, 2),
    (256, 1024, 3, 2),
    (512, 2048, 3, 2),
)
TABLE1_CONV1 = 128
PATCH_SIZE = 128  # §3.4.1: 128 x 128 patches
VIEW_SIZE = 64  # network input: 64 x 64 views
INPUT_VIEWS = ("stack", "siamese")
MIN_CHANNELS_LAST_WIDTH = 0.09


def two_views(patches: Tensor) -> tuple[Tensor, Tensor]:
    """``(context, centre)`` of ``(N, 3, 128, 128)`` patches: 2×2-averaged whole patch and central 64×64.

    The 2×2 average is the area resize 128 → 64 (what ``cv2.INTER_AREA`` computes for a factor of 2), so
    that sliding-window detection can average the whole HPF once and take 64×64 windows of it
    (:mod:`histo_lightning.methods.chsnet.detector`) and get exactly the same context view.
    """
    if patches.shape[-2:] != (PATCH_SIZE, PATCH_SIZE):
        raise ValueError(f"expected (N, 3, 128, 128) patches, got {tuple(patches.shape)}")
    x = to_float(patches)
    offset = (PATCH_SIZE - VIEW_SIZE) // 2
    return F.avg_pool2d(x, 2), x[..., offset : offset + VIEW_SIZE, offset : offset + VIEW_SIZE]


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels → float in [-1, 1]; float input is assumed to be scaled already."""
    if x.dtype == torch.uint8:
        return x.float().mul_(1.0 / 127.5).sub_(1.0)
    return x


def scaled(channels: int, width: float) -> int:
    """``channels × width``, rounded, at least 4."""
    return max(4, round(channels * width))


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1×1 → BN-ReLU-conv3×3 (stride) → BN-ReLU-conv1×1, plus the (projected) shortcut."""

    def __init__(
        self, in_ch: int, mid_ch: int, out_ch: int, stride: int, bn_momentum: float
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_ch, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class CHSNetExtractor(nn.Module):
    """Table 1: conv1 and the stages conv2_x … conv6_x; returns every stage's pooled, normalised features."""

    def __init__(
        self,
        in_channels: int = 6,
        width: float = 1.0,
        stages: Sequence[Sequence[int]] = TABLE1_STAGES,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        stem = scaled(TABLE1_CONV1, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=1, padding=3, bias=False)
        blocks: list[nn.Module] = []
        heads: list[nn.Module] = []
        prev = stem
        self.stage_channels: list[int] = []
        for mid, out, depth, stride in stages:
            mid_w, out_w = scaled(mid, width), scaled(out, width)
            layers = [
                PreActBottleneck(
                    prev if i == 0 else out_w, mid_w, out_w, stride if i == 0 else 1, bn_momentum
                )
                for i in range(depth)
            ]
            blocks.append(nn.Sequential(*layers))
            # BN + ReLU before pooling (Table 1's last row for conv6_x; the same for every fused stage)
            heads.append(nn.Sequential(nn.BatchNorm2d(out_w, momentum=bn_momentum), nn.ReLU()))
            self.stage_channels.append(out_w)
            prev = out_w
        self.stages = nn.ModuleList(blocks)
        self.stage_heads = nn.ModuleList(heads)
        self.out_features = sum(self.stage_channels)

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """The raw output map of every stage (conv2_x … conv6_x)."""
        maps = []
        x = self.conv1(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, sum of stage widths)``: BN-ReLU-GAP of each stage, concatenated."""
        pooled = [head(m).mean(dim=(2, 3)) for head, m in zip(self.stage_heads, self.stage_maps(x))]
        return torch.cat(pooled, dim=1)


@declare_choices(input_views=INPUT_VIEWS)
class CHSNet(nn.Module):
    """Screening / refined network of CHS-Net: Table 1 extractor + multi-level feature fusion (§3.1.3).

    Args:
        num_classes: 2 (non-mitosis, mitosis).
        width: channel multiplier of Table 1 (1.0 = the paper's widths).
        fusion_hidden: units of the first fully connected layer of the fusion part (not given in the
            paper), before the width multiplier.
        dropout: dropout probability in the fusion part (§4.2.2: 0.5).
        input_views: ``stack`` (6-channel input) or ``siamese`` (shared extractor per view), see the module doc.
        bn_momentum: BatchNorm momentum (§4.2.2's moving decay 0.99 → 0.01).
        channels_last: keep weights and activations in channels-last memory format (faster convolutions
            on CPUs and tensor-core GPUs; the numbers are the same). Ignored below width 0.09, where
            oneDNN's channels-last backward crashed on this CPU build.

    ``forward`` takes ``(N, 3, 128, 128)`` patches; :meth:`forward_views` takes the two 64×64 views.
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: float = 1.0,
        fusion_hidden: int = 1024,
        dropout: float = 0.5,
        input_views: str = "stack",
        bn_momentum: float = 0.01,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if input_views not in INPUT_VIEWS:
            raise ValueError(f"input_views={input_views!r}: expected one of {INPUT_VIEWS}")
        if width <= 0:
            raise ValueError(f"width={width} must be positive")
        self.input_views = input_views
        self.extractor = CHSNetExtractor(
            in_channels=6 if input_views == "stack" else 3, width=width, bn_momentum=bn_momentum
        )
        fused = self.extractor.out_features * (2 if input_views == "siamese" else 1)
        hidden = scaled(fusion_hidden, width)
        self.fusion = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(fused, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.reset_parameters()
        # oneDNN (torch 2.x CPU build here) crashed (SIGSEGV in the backward pass) on channels-last
        # convolutions at width 0.0625; very narrow networks gain nothing from it anyway
        channels_last = channels_last and width >= MIN_CHANNELS_LAST_WIDTH
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def reset_parameters(self) -> None:
        """Xavier (Glorot uniform) weights, zero biases; BN scale 1, shift 0 (§4.2.2)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_views(self, context: Tensor, centre: Tensor) -> Tensor:
        """Logits ``(N, 2)`` from the two ``(N, 3, 64, 64)`` views (uint8 or scaled float)."""
        context, centre = to_float(context), to_float(centre)
        if self.input_views == "stack":
            x = torch.cat([context, centre], dim=1)
            features = self.extractor(x.contiguous(memory_format=self.memory_format))
        else:
            x = torch.cat([context, centre], dim=0)
            both = self.extractor(x.contiguous(memory_format=self.memory_format))
            features = torch.cat(both.chunk(2, dim=0), dim=1)
        return self.fusion(features)

    def forward(self, patches: Tensor) -> Tensor:
        """Logits ``(N, 2)`` of ``(N, 3, 128, 128)`` patches."""
        return self.forward_views(*two_views(patches))


__all__ = ["TABLE1_STAGES", "CHSNet", "CHSNetExtractor", "PreActBottleneck", "two_views"]
