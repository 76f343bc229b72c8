"""The plain neural networks PNN1 and PNN2 of SMSE (Sun et al.), Table I.

Each is an embedding network (convolution/max-pool stages, then three linear layers down to a 12-d
embedding) followed by a linear classifier. §IV-A: "there is a non-linear activation layer PReLU following
each parametric layer of the embedding network", so every convolution and every embedding linear layer,
the last (12-d) one included, is followed by a PReLU; the classifier is a single linear layer whose logits
go to a softmax (inside the loss).

Kernel shapes in Table I are written height × width while output sizes are written width × height:
PNN1's "3 × 5" convolution turns a 700 × 460 (W × H) image into 696 × 458, so the kernel is 3 high and
5 wide; its "2 × 3 @2" pooling is 2 high, 3 wide, stride 2. With a 460 × 700 input this reproduces every
output size of the table and the 1920 = 6 · 5 · 64 features of the first linear layer. The flattened size
is derived from ``input_size``, so other image sizes work too (the table's sizes are the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PlainNetSpec:
    """One column of SMSE Table I."""

    channels: tuple[int, ...]
    conv_kernel: tuple[int, int]  # (height, width)
    pool_kernel: tuple[int, int]  # (height, width)
    input_size: tuple[int, int]  # (height, width)
    hidden: int = 256
    embedding_dim: int = 12


PNN1_SPEC = PlainNetSpec(
    channels=(4, 4, 8, 16, 32, 64), conv_kernel=(3, 5), pool_kernel=(2, 3), input_size=(460, 700)
)
PNN2_SPEC = PlainNetSpec(
    channels=(8, 16, 32, 64), conv_kernel=(5, 5), pool_kernel=(2, 2), input_size=(224, 224)
)


class PlainEmbeddingNet(nn.Module):
    """Embedding network f(x) = ε of Table I: (conv → PReLU → max-pool) × k, flatten, 3 × (linear → PReLU)."""

    def __init__(self, spec: PlainNetSpec, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in spec.channels:
            layers += [
                nn.Conv2d(prev, width, kernel_size=spec.conv_kernel, stride=1),
                nn.PReLU(width),
                nn.MaxPool2d(kernel_size=spec.pool_kernel, stride=2),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        try:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, *spec.input_size)).numel()
        except RuntimeError as err:
            raise ValueError(
                f"input_size {spec.input_size} is too small for {len(spec.channels)} conv/pool stages"
            ) from err
        self.input_size = spec.input_size
        self.flat_features = flat
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, spec.hidden),
            nn.PReLU(),
            nn.Linear(spec.hidden, spec.hidden),
            nn.PReLU(),
            nn.Linear(spec.hidden, spec.embedding_dim),
            nn.PReLU(),
        )
        self.embedding_dim = spec.embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"expected images of {self.input_size[0]}x{self.input_size[1]} (H x W), got "
                f"{tuple(x.shape[-2:])}; resize in the dataset transforms or set the net's input_size"
            )
        return self.head(self.features(x))


class EmbeddingClassifier(nn.Module):
    """An embedding network followed by a linear classifier (Table I's "Classifier" rows).

    ``forward`` returns logits; :meth:`embed` returns the embedding ε that the SMSE pair/triplet losses use.
    """

    def __init__(self, embedder: nn.Module, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embedder = embedder
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.embedder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def _plain_net(
    spec: PlainNetSpec,
    num_classes: int,
    input_size: Sequence[int] | None,
    embedding_dim: int | None,
):
    if input_size is not None:
        spec = PlainNetSpec(
            **{**spec.__dict__, "input_size": (int(input_size[0]), int(input_size[1]))}
        )
    if embedding_dim is not None:
        spec = PlainNetSpec(**{**spec.__dict__, "embedding_dim": int(embedding_dim)})
    return EmbeddingClassifier(PlainEmbeddingNet(spec), spec.embedding_dim, num_classes)


def pnn1(
    num_classes: int = 2, input_size: Sequence[int] | None = None, embedding_dim: int | None = None
) -> EmbeddingClassifier:
    """PNN1 (SMSE Table I, BreakHis): six 3×5 conv / 2×3 pool stages on 460×700 (H×W) images."""
    return _plain_net(PNN1_SPEC, num_classes, input_size, embedding_dim)


def pnn2(
    num_classes: int = 2, input_size: Sequence[int] | None = None, embedding_dim: int | None = None
) -> EmbeddingClassifier:
    """PNN2 (SMSE Table I, PAIP 2019): four 5×5 conv / 2×2 pool stages on 224×224 images."""
    return _plain_net(PNN2_SPEC, num_classes, input_size, embedding_dim)
