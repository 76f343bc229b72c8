"""Any timm backbone as an image classifier, pretrained from timm or from a local weights file.

A ``tv:<name>`` backbone is a torchvision classification model instead (e.g. ``tv:googlenet``, the
Inception v1 of SMSE Table X that timm does not have), with its final linear layer removed.
"""

from __future__ import annotations

import timm
from torch import Tensor, nn

from histo_lightning.errors import ConfigError
from histo_lightning.nets.weights import load_matching_weights

TORCHVISION_PREFIX = "tv:"


def torchvision_backbone(name: str, pretrained: bool, drop_rate: float = 0.0) -> nn.Module:
    """A torchvision classification model without its last linear layer; ``num_features`` set.

    GoogLeNet is built without its auxiliary classifiers (they only help ImageNet training from scratch).
    """
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"model.net.backbone={TORCHVISION_PREFIX}{name}: not a torchvision classification model "
            "(see torchvision.models.list_models())"
        )
    kwargs: dict = {"weights": "DEFAULT" if pretrained else None}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = not pretrained
    model = torchvision.models.get_model(name, **kwargs)
    for attr in ("fc", "classifier", "head", "heads"):
        last = getattr(model, attr, None)
        if isinstance(last, nn.Sequential) and len(last) and isinstance(last[-1], nn.Linear):
            model.num_features = last[-1].in_features
            last[-1] = nn.Identity()
            break
        if isinstance(last, nn.Linear):
            model.num_features = last.in_features
            setattr(model, attr, nn.Identity())
            break
    else:
        raise ConfigError(
            f"model.net.backbone={TORCHVISION_PREFIX}{name}: cannot find its final linear layer"
        )
    if drop_rate and hasattr(model, "dropout"):
        model.dropout = nn.Dropout(drop_rate)
    return model


class TimmClassifier(nn.Module):
    """A timm backbone with global pooling, an optional embedding layer and a linear classifier.

    Args:
        backbone: any ``timm.list_models()`` name, e.g. ``resnet18``, ``inception_v3``, ``efficientnet_b0``,
            or ``tv:<name>`` for a torchvision model (``tv:googlenet``, ``tv:resnet50``).
        num_classes: output classes.
        pretrained: load timm's pretrained weights (needs them in the local HF/timm cache or network).
        weights_path: a local ``.pth``/``.safetensors`` state dict for the backbone instead (no network);
            its classifier keys are ignored.
        embedding_dim: if set, a linear embedding of this size (then PReLU) sits between the pooled features
            and the classifier; :meth:`embed` returns it (used by the similarity losses of SMSE).
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: bool = False,
        weights_path: str | None = None,
        embedding_dim: int | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if backbone.startswith(TORCHVISION_PREFIX):
            self.backbone = torchvision_backbone(
                backbone[len(TORCHVISION_PREFIX) :], pretrained and weights_path is None, drop_rate
            )
        else:
            if backbone not in timm.list_models(pretrained=False) and not timm.is_model(backbone):
                raise ConfigError(
                    f"model.net.backbone={backbone!r} is not a timm model (see timm.list_models()) "
                    f"nor {TORCHVISION_PREFIX}<torchvision model>"
                )
            self.backbone = timm.create_model(
                backbone,
                pretrained=pretrained and weights_path is None,
                num_classes=0,
                drop_rate=drop_rate,
            )
        if weights_path is not None:
            load_matching_weights(self.backbone, weights_path, "model.net.weights_path")
        features = self.backbone.num_features
        if embedding_dim:
            self.embedding = nn.Sequential(nn.Linear(features, embedding_dim), nn.PReLU())
            features = embedding_dim
        else:
            self.embedding = nn.Identity()
        self.classifier = nn.Linear(features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.embedding(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))
