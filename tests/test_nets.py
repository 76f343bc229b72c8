"""PNN1/PNN2 reproduce SMSE Table I; the timm classifier builds and loads local weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histo_lightning.errors import ConfigError
from histo_lightning.nets import TimmClassifier, pnn1, pnn2

# Table I, PNN1: output (W x H x C) after each conv / pool
PNN1_TABLE = [
    (696, 458, 4), (347, 229, 4), (343, 227, 4), (171, 113, 4), (167, 111, 8), (83, 55, 8),
    (79, 53, 16), (39, 26, 16), (35, 24, 32), (17, 12, 32), (13, 10, 64), (6, 5, 64),
]  # fmt: skip
PNN2_TABLE = [
    (220, 220, 8),
    (110, 110, 8),
    (106, 106, 16),
    (53, 53, 16),
    (49, 49, 32),
    (24, 24, 32),
    (20, 20, 64),
    (10, 10, 64),
]


@pytest.mark.parametrize(
    ("factory", "size", "table", "flat"),
    [(pnn1, (460, 700), PNN1_TABLE, 1920), (pnn2, (224, 224), PNN2_TABLE, 6400)],
)
def test_plain_nets_reproduce_table_one(factory, size, table, flat) -> None:
    net = factory(num_classes=2)
    x = torch.zeros(1, 3, *size)
    shapes = []
    for layer in net.embedder.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            shapes.append((x.shape[3], x.shape[2], x.shape[1]))
    assert shapes == table
    assert net.embedder.flat_features == flat
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (flat, 256),
        (256, 256),
        (256, 12),
        (12, 2),
    ]
    assert net(torch.zeros(2, 3, *size)).shape == (2, 2)
    assert net.embed(torch.zeros(2, 3, *size)).shape == (2, 12)


def test_prelu_follows_every_parametric_layer_of_the_embedding_network() -> None:
    layers = [
        m for m in pnn1().embedder.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.PReLU))
    ]
    parametric = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(parametric) == 9  # 6 conv + 3 linear (accumulated depth 9 in Table I)
    assert all(isinstance(layers[i + 1], nn.PReLU) for i in parametric)


def test_plain_net_names_the_expected_input_size() -> None:
    with pytest.raises(ValueError, match="460x700"):
        pnn1()(torch.zeros(1, 3, 224, 224))


def test_plain_net_other_input_size() -> None:
    assert pnn1(input_size=(300, 460))(torch.zeros(1, 3, 300, 460)).shape == (1, 2)
    with pytest.raises(ValueError, match="too small"):
        pnn1(input_size=(230, 350))


def test_timm_classifier_with_embedding_and_local_weights(tmp_path) -> None:
    net = TimmClassifier("resnet18", num_classes=3, embedding_dim=12)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    assert net.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 12)
    weights = tmp_path / "backbone.pth"
    torch.save(net.backbone.state_dict(), weights)
    loaded = TimmClassifier("resnet18", num_classes=3, weights_path=str(weights))
    first = next(iter(net.backbone.state_dict()))
    assert torch.equal(loaded.backbone.state_dict()[first], net.backbone.state_dict()[first])


def test_timm_classifier_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model.net.backbone"):
        TimmClassifier("not_a_model", num_classes=2)
    with pytest.raises(ConfigError, match=r"model.net.weights_path"):
        TimmClassifier("resnet18", num_classes=2, weights_path=str(tmp_path / "missing.pth"))
