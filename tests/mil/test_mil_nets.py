"""MIL nets: encoders, Eq. 1 softsign attention, Eq. 2 adaptive weighting, masks, padded = one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histo_lightning.data.bags import (
    FeatureBagDataset,
    InstanceBagDataset,
    collate_bags,
    random_dihedral,
)
from histo_lightning.nets.mil import (
    AttentionPooling,
    IdentityEncoder,
    IlseHistoCNN,
    LeNetEncoder,
    MaxPooling,
    MeanPooling,
    MILClassifier,
    TimmEncoder,
    adaptive_weighted_sum,
    masked_softmax,
    pseudo_negatives,
)
from histo_lightning.stores.instance_store import BagArrays


@pytest.mark.parametrize(
    ("encoder", "shape", "flat"),
    [
        (IlseHistoCNN(27), (5, 3, 27, 27), 48 * 5 * 5),
        (IlseHistoCNN(32), (5, 3, 32, 32), 48 * 6 * 6),
        (LeNetEncoder(28), (5, 1, 28, 28), 50 * 4 * 4),
        (LeNetEncoder(8), (5, 1, 8, 8), 50 * 2 * 2),
    ],
)
def test_encoders_give_their_dim(encoder: torch.nn.Module, shape: tuple, flat: int) -> None:
    out = encoder(torch.rand(shape))
    assert out.shape == (5, encoder.dim)
    assert encoder.head[1].in_features == flat
    assert IlseHistoCNN(27).dim == 512 and LeNetEncoder(28).dim == 500


def test_timm_and_identity_encoders() -> None:
    timm_encoder = TimmEncoder("resnet10t")
    assert timm_encoder(torch.rand(2, 3, 32, 32)).shape == (2, timm_encoder.dim)
    identity = IdentityEncoder(7)
    x = torch.rand(3, 7)
    assert torch.equal(identity(x), x)
    with pytest.raises(ValueError, match="dim=7"):
        identity(torch.rand(3, 6))


def _bags(n_features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = torch.randn(3, 5, n_features)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return h, mask


@pytest.mark.parametrize("kind", ["tanh", "gated", "softsign"])
def test_attention_weights_sum_to_one_and_padding_gets_zero(kind: str) -> None:
    h, mask = _bags()
    pooling = AttentionPooling(6, hidden=4, kind=kind)
    h_padded = h.clone()
    h_padded[~mask] = 1e6  # whatever sits in the padding must not matter
    z, w = pooling(h_padded, mask)
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    z_clean, _ = pooling(h.masked_fill(~mask.unsqueeze(-1), 0.0), mask)
    assert torch.allclose(z, z_clean)
    assert w[2, 0] == 1.0  # a bag of one instance


def test_softsign_attention_is_eq_1() -> None:
    torch.manual_seed(1)
    pooling = AttentionPooling(4, hidden=3, kind="softsign")
    g = torch.randn(1, 6, 4)
    u, bias_u = pooling.project.weight, pooling.project.bias
    v, bias_v = pooling.score.weight, pooling.score.bias
    ug = g[0] @ u.T + bias_u
    logits = (ug / (1 + ug.abs())) @ v.T + bias_v  # vᵀ (U g / (1 + |U g|))
    expected = torch.softmax(logits.squeeze(-1), dim=0)
    _, w = pooling(g, torch.ones(1, 6, dtype=torch.bool))
    assert torch.allclose(w[0], expected, atol=1e-6)
    gated = AttentionPooling(4, hidden=3, kind="gated")
    assert gated.gate is not None and pooling.gate is None


def test_adaptive_weighting_eq_2_hand_worked() -> None:
    # weights 0.5, 0.3, 0.2: the mean is 1/3, so 0.3 and 0.2 are pseudo negatives
    w = torch.tensor([[0.5, 0.3, 0.2]])
    g = torch.eye(3).unsqueeze(0)  # g_j = e_j, so z_j is instance j's contribution
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert pseudo_negatives(w, mask).tolist() == [[False, True, True]]
    z = adaptive_weighted_sum(g, w, mask, factor=2.0)
    assert torch.allclose(z, torch.tensor([[0.5, 0.6, 0.4]]))  # λ = 2 multiplies them (Eq. 2)
    half = adaptive_weighted_sum(g, w, mask, factor=0.5)  # the text's reading, 1/λ
    assert torch.allclose(half, torch.tensor([[0.5, 0.15, 0.1]]))
    plain = adaptive_weighted_sum(g, w, mask, factor=1.0)
    assert torch.allclose(plain, torch.tensor([[0.5, 0.3, 0.2]]))
    # padding neither counts in the mean nor gets weighted
    w_pad = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    mask_pad = torch.tensor([[True, True, True, False]])
    assert pseudo_negatives(w_pad, mask_pad).tolist() == [[False, True, True, False]]


def test_adaptive_weighting_applies_in_training_only_by_default() -> None:
    h, mask = _bags()
    pooling = AttentionPooling(6, hidden=4, kind="softsign", aw_factor=2.0)
    pooling.train()
    z_train, w = pooling(h, mask)
    pooling.eval()
    z_eval, w_eval = pooling(h, mask)
    assert torch.allclose(w, w_eval)
    assert torch.allclose(z_train, adaptive_weighted_sum(h, w, mask, 2.0))
    assert torch.allclose(z_eval, adaptive_weighted_sum(h, w, mask, 1.0))
    pooling.aw_at_eval = True
    assert torch.allclose(pooling(h, mask)[0], z_train)


def test_renormalised_adaptive_weighting_keeps_z_a_convex_combination() -> None:
    w = torch.tensor([[0.5, 0.3, 0.2]])
    g = torch.eye(3).unsqueeze(0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # λ = 2: scaled weights 0.5, 0.6, 0.4 (sum 1.5), renormalised to 1/3, 0.4, 4/15
    z = adaptive_weighted_sum(g, w, mask, factor=2.0, renormalise=True)
    assert torch.allclose(z, torch.tensor([[0.5, 0.6, 0.4]]) / 1.5)
    assert torch.allclose(z.sum(), torch.tensor(1.0))
    pooling = AttentionPooling(6, hidden=4, kind="softsign", aw_factor=2.0, aw_renormalise=True)
    h, mask = _bags()
    z_train, weights = pooling.train()(h, mask)
    scaled = weights * torch.where(pseudo_negatives(weights, mask), 2.0, 1.0)
    expected = torch.einsum("bn,bnm->bm", scaled / scaled.sum(1, keepdim=True), h)
    assert torch.allclose(z_train, expected, atol=1e-6)


def test_instance_embeddings_are_the_attention_network_without_its_last_layer() -> None:
    from histo_lightning.losses import ClampedBagBCE
    from histo_lightning.methods.li_mil.module import MILModule
    from histo_lightning.nets.mil import build_mil_classifier

    net = build_mil_classifier({"name": "identity", "dim": 6}, pooling="softsign", attention_dim=4)
    module = MILModule(net, ClampedBagBCE(), torch.optim.Adam)
    x = torch.randn(5, 6)
    out = module.predict_step({"index": torch.arange(5), "image": x}, 0)
    assert out["embeddings"].shape == (5, 4)
    assert torch.allclose(out["embeddings"], F.softsign(net.pooling.project(x)))
    # the attention scores are the last layer over exactly these
    assert torch.allclose(net.pooling.score(out["embeddings"]).squeeze(-1), net.pooling.scores(x))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("aw_factor", 0, "a positive number"),
        ("aw_at_eval", "sometimes", "one of True, False"),
        ("aw_renormalise", 2, "one of True, False"),
    ],
)
def test_adaptive_weighting_options_are_declared_choices(key, value, expected) -> None:
    from histo_lightning.errors import ConfigError
    from histo_lightning.nets.mil import build_mil_classifier as target
    from histo_lightning.utils.choices import check_arguments

    with pytest.raises(ConfigError, match=expected):
        check_arguments(target, {key: value})


def test_mean_and_max_pooling_are_mask_aware() -> None:
    h, mask = _bags()
    z, w = MeanPooling()(h, mask)
    assert torch.allclose(z[1], h[1, :2].mean(0)) and torch.allclose(
        w[1], torch.tensor([0.5, 0.5, 0, 0, 0])
    )
    h[1, 2:] = 100.0  # large padding must not win the max
    z, w = MaxPooling()(h, mask)
    assert torch.allclose(z[1], h[1, :2].max(0).values)
    assert torch.allclose(w.sum(1), torch.ones(3)) and (w[~mask] == 0).all()


def test_masked_softmax_of_a_single_real_instance() -> None:
    w = masked_softmax(torch.tensor([[3.0, -1.0, 7.0]]), torch.tensor([[True, False, False]]))
    assert w.tolist() == [[1.0, 0.0, 0.0]]


def _pixel_bags() -> BagArrays:
    rng = np.random.default_rng(0)
    sizes = [7, 3, 1, 5]
    n = sum(sizes)
    return BagArrays(
        instances=rng.integers(0, 255, size=(n, 27, 27, 3), dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        labels=[1, 0, 0, 1],
        instance_labels=rng.integers(0, 2, n),
        coords=rng.integers(0, 500, size=(n, 2)),
    )


@pytest.mark.parametrize("pooling", ["tanh", "gated", "softsign", "mean", "max"])
def test_a_padded_batch_gives_the_same_outputs_as_one_bag_at_a_time(pooling: str) -> None:
    torch.manual_seed(0)
    bags = _pixel_bags()
    encoder = IlseHistoCNN(27)
    if pooling == "max":
        pool = MaxPooling()
    elif pooling == "mean":
        pool = MeanPooling(aw_factor=2.0, aw_at_eval=True)
    else:
        pool = AttentionPooling(encoder.dim, 128, pooling, aw_factor=2.0, aw_at_eval=True)
    model = MILClassifier(encoder, pool).eval()
    dataset = InstanceBagDataset.from_bags(bags)
    batch = collate_bags([dataset[i] for i in range(len(dataset))])
    assert batch["instances"].shape == (4, 7, 3, 27, 27)
    assert batch["mask"].sum(1).tolist() == [7, 3, 1, 5]
    with torch.no_grad():
        together = model(batch["instances"], batch["mask"])
        for i in range(len(dataset)):
            item = dataset[i]
            alone = model(item["instances"].unsqueeze(0))
            n = len(item["instances"])
            assert torch.allclose(together["prob"][i], alone["prob"][0], atol=1e-6)
            assert torch.allclose(together["attention"][i, :n], alone["attention"][0], atol=1e-6)
            assert (together["attention"][i, n:] == 0).all()


def test_chunked_encoding_matches() -> None:
    torch.manual_seed(0)
    bags = _pixel_bags()
    batch = collate_bags([InstanceBagDataset.from_bags(bags)[i] for i in range(4)])
    model = MILClassifier(IlseHistoCNN(27), AttentionPooling(512)).eval()
    chunked = MILClassifier(model.encoder, model.pooling, instance_chunk=4).eval()
    chunked.head = model.head
    with torch.no_grad():
        a = model(batch["instances"], batch["mask"])["prob"]
        b = chunked(batch["instances"], batch["mask"])["prob"]
    assert torch.allclose(a, b, atol=1e-6)


def test_collate_pads_labels_coords_and_members() -> None:
    bags = _pixel_bags()
    dataset = InstanceBagDataset.from_bags(bags, bag_ids=[1, 3])
    item = dataset[0]
    assert item["index"] == 0 and item["label"] == 0
    assert item["members"].tolist() == [7, 8, 9]
    np.testing.assert_array_equal(item["instance_labels"].numpy(), bags.instance_labels[7:10])
    np.testing.assert_array_equal(item["coords"].numpy(), bags.coords[7:10])
    np.testing.assert_array_equal(
        (item["instances"].permute(0, 2, 3, 1) * 255).round().byte().numpy(), bags.instances[7:10]
    )
    batch = collate_bags([dataset[0], dataset[1]])
    assert batch["label"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    assert batch["instance_labels"][0, 3:].tolist() == [-1, -1]
    assert batch["members"][0].tolist() == [7, 8, 9, -1, -1]
    assert batch["size"].tolist() == [3, 5]


def test_generated_bags_gather_members_from_several_images() -> None:
    bags = _pixel_bags()
    members = [np.array([12, 0, 8]), np.array([3])]
    dataset = InstanceBagDataset(bags.instances, members, [0, 0], bags.instance_labels, bags.coords)
    item = dataset[0]
    expected = bags.instances[[12, 0, 8]]
    np.testing.assert_array_equal(
        (item["instances"].permute(0, 2, 3, 1) * 255).round().byte().numpy(), expected
    )
    assert item["members"].tolist() == [12, 0, 8]


def test_feature_bags_train_the_same_model_with_an_identity_encoder() -> None:
    bags = _pixel_bags()
    features = np.random.default_rng(1).normal(size=(bags.n_instances, 16)).astype(np.float16)
    dataset = FeatureBagDataset.from_bags(features, bags)
    item = dataset[0]
    assert item["instances"].shape == (7, 16) and item["instances"].dtype == torch.float32
    assert torch.allclose(item["instances"], torch.from_numpy(features[:7].astype(np.float32)))
    model = MILClassifier(IdentityEncoder(16), AttentionPooling(16, kind="softsign", aw_factor=2.0))
    batch = collate_bags([dataset[i] for i in range(len(dataset))])
    out = model(batch["instances"], batch["mask"])
    loss = F.binary_cross_entropy(out["prob"].clamp(1e-5, 1 - 1e-5), batch["label"].float())
    loss.backward()
    assert model.pooling.score.weight.grad is not None
    with pytest.raises(ValueError, match="feature rows"):
        FeatureBagDataset.from_bags(features[:-1], bags)
    direct = FeatureBagDataset.from_offsets(features, bags.offsets, bags.labels)
    assert torch.equal(direct[3]["instances"], dataset[3]["instances"])
    assert direct[3]["label"] == 1 and (direct[3]["instance_labels"] == -1).all()
    with pytest.raises(ValueError, match="offsets must run from 0"):
        FeatureBagDataset.from_offsets(features, [0, 3, 7], [0, 1])


def test_random_dihedral_keeps_each_instance_up_to_a_symmetry() -> None:
    x = torch.rand(64, 3, 5, 5)
    y = random_dihedral(x, torch.Generator().manual_seed(0))
    symmetries = lambda t: [  # noqa: E731
        torch.rot90(t, k, dims=(-2, -1))
        if not f
        else torch.flip(torch.rot90(t, k, dims=(-2, -1)), dims=(-1,))
        for f in (False, True)
        for k in range(4)
    ]
    found = set()
    for i in range(64):
        matches = [j for j, s in enumerate(symmetries(x[i])) if torch.equal(s, y[i])]
        assert matches
        found.add(matches[0])
    assert len(found) == 8  # all eight symmetries occur


def test_equal_weights_have_no_pseudo_negatives() -> None:
    w = torch.full((1, 7), 1.0 / 7.0)
    assert not pseudo_negatives(w, torch.ones(1, 7, dtype=torch.bool)).any()
    h = torch.randn(1, 7, 3)
    z, _ = MeanPooling(aw_factor=2.0).train()(h, torch.ones(1, 7, dtype=torch.bool))
    assert torch.allclose(z, h.mean(1), atol=1e-6)
