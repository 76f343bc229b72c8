"""SMSE losses against their equations (Eqs. 2, 4, 6, 7 and 1) on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from histo_lightning.errors import ConfigError
from histo_lightning.losses import (
    ContrastiveLoss,
    ReinforcedFocalLoss,
    SimilarityObjective,
    TripletLoss,
    inverse_frequency_weights,
)

A = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
B = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 0.5]])  # squared distances 25, 1, 0.25
SAME = torch.tensor([1, 0, 0])


def test_contrastive_paper_form_is_eq2_on_squared_distances() -> None:
    # s=1: d² = 25; s=0: (m − d²)+ = (1 − 1)+ = 0 and (1 − 0.25)+ = 0.75
    assert ContrastiveLoss(margin=1.0)(A, B, SAME).item() == pytest.approx((25 + 0 + 0.75) / 3)
    # the margin acts on d², not d: m = 2 gives (2 − 1) = 1 and (2 − 0.25) = 1.75
    assert ContrastiveLoss(margin=2.0)(A, B, SAME).item() == pytest.approx((25 + 1 + 1.75) / 3)


def test_contrastive_hadsell_form() -> None:
    # ½(s·d² + (1 − s)·max(0, m − d)²): 12.5, ½(1 − 1)² = 0, ½(1 − 0.5)² = 0.125
    loss = ContrastiveLoss(margin=1.0, form="hadsell")(A, B, SAME)
    assert loss.item() == pytest.approx((12.5 + 0 + 0.125) / 3)


def test_contrastive_gradients() -> None:
    a = A.clone().requires_grad_(True)
    ContrastiveLoss(margin=1.0)(a, B, SAME).backward()
    # pair 0 (similar): ∂(d²)/∂a = 2(a − b), divided by the 3 pairs of the mean
    assert torch.allclose(a.grad[0], 2 * (A[0] - B[0]) / 3)
    # pair 1: d² = m exactly, the hinge is inactive; pair 2: ∂(m − d²)/∂a = −2(a − b)
    assert torch.allclose(a.grad[1], torch.zeros(2))
    assert torch.allclose(a.grad[2], -2 * (A[2] - B[2]) / 3)
    # Hadsell at identical embeddings stays finite
    x = torch.zeros(1, 2, requires_grad=True)
    ContrastiveLoss(form="hadsell")(x, torch.zeros(1, 2), torch.tensor([0])).backward()
    assert torch.isfinite(x.grad).all()


def test_contrastive_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match=r"embedding_loss\.form"):
        ContrastiveLoss(form="cosine")
    with pytest.raises(ConfigError, match=r"embedding_loss\.margin"):
        ContrastiveLoss(margin=0)


def test_triplet_is_eq4() -> None:
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [0.5, 0.0], [2.0, 0.0]])  # d²(a, p) = 1, 0.25, 4
    negative = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])  # d²(a, n) = 1, 9, 1
    # (1 − 1 + 1)+ = 1, (0.25 − 9 + 1)+ = 0, (4 − 1 + 1)+ = 4
    assert TripletLoss(margin=1.0)(anchor, positive, negative).item() == pytest.approx(5 / 3)
    assert TripletLoss(margin=0.5)(anchor, positive, negative).item() == pytest.approx(
        (0.5 + 0 + 3.5) / 3
    )
    a = anchor.clone().requires_grad_(True)
    TripletLoss(margin=1.0)(a, positive, negative).backward()
    # active triplet: ∂/∂a (‖a − p‖² − ‖a − n‖²) = 2(n − p); inactive triplet: 0
    assert torch.allclose(a.grad[0], 2 * (negative[0] - positive[0]) / 3)
    assert torch.allclose(a.grad[1], torch.zeros(2))


def _logits_for(p_t: float) -> torch.Tensor:
    """Two-class logits whose softmax gives class 1 the probability p_t."""
    return torch.tensor([[0.0, math.log(p_t / (1 - p_t))]])


def test_reinforced_focal_is_eq7() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    target = torch.tensor([1, 0])  # p_t = 0.75 and 0.25
    expected = (2 * 0.25**1.5 + 2 * 0.75**1.5) / 2
    assert ReinforcedFocalLoss(2.0, 1.5)(logits, target).item() == pytest.approx(expected)
    # λ = γ = 1 is the L1 loss of Eq. (6): 1 − p_t
    assert ReinforcedFocalLoss(1.0, 1.0)(logits, target).item() == pytest.approx((0.25 + 0.75) / 2)


def test_reinforced_focal_punishes_hard_and_suppresses_easy_samples() -> None:
    """Fig. 4: above the L1 loss for hard samples, below it (and below CE) for easy ones."""
    rfl = ReinforcedFocalLoss(2.0, 1.5)
    target = torch.tensor([1])
    hard, easy = _logits_for(0.1), _logits_for(0.9)
    assert rfl(hard, target).item() > 1 - 0.1
    assert rfl(easy, target).item() < 1 - 0.9
    assert rfl(easy, target).item() < F.cross_entropy(easy, target).item()
    # larger γ suppresses easy samples more; larger λ punishes hard samples more
    assert ReinforcedFocalLoss(2.0, 2.0)(easy, target) < rfl(easy, target)
    assert ReinforcedFocalLoss(3.0, 1.5)(hard, target) > rfl(hard, target)


def test_reinforced_focal_is_insensitive_to_confident_wrong_labels() -> None:
    """Fig. 4 (red circle): for p_t → 0 the loss stays ≤ λ and its gradient vanishes; CE's does not."""

    def logit_grad(loss_fn, p_t: float) -> float:
        logits = _logits_for(p_t).requires_grad_(True)
        loss_fn(logits, torch.tensor([1])).backward()
        return logits.grad[0, 1].item()

    rfl = ReinforcedFocalLoss(2.0, 1.5)
    assert rfl(_logits_for(1e-4), torch.tensor([1])).item() <= 2.0
    assert abs(logit_grad(rfl, 1e-4)) < 1e-3
    assert logit_grad(F.cross_entropy, 1e-4) == pytest.approx(-1.0, abs=1e-3)
    # the analytic gradient w.r.t. the true-class logit: −λγ p_t (1 − p_t)^γ
    p = 0.3
    assert logit_grad(rfl, p) == pytest.approx(-2.0 * 1.5 * p * (1 - p) ** 1.5, rel=1e-4)


def test_reinforced_focal_class_weights() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    target = torch.tensor([1, 0])
    per_sample = torch.tensor([2 * 0.25**1.5, 2 * 0.75**1.5])
    weighted = ReinforcedFocalLoss(2.0, 1.5, class_weights=[3.0, 1.0])(logits, target)
    assert weighted.item() == pytest.approx(
        ((1.0 * per_sample[0] + 3.0 * per_sample[1]) / 4).item()
    )
    assert inverse_frequency_weights([1, 3]) == pytest.approx([2.0, 2 / 3])
    loss = ReinforcedFocalLoss(class_weights="inverse_frequency")
    with pytest.raises(RuntimeError, match="set_class_counts"):
        loss(logits, target)
    loss.set_class_counts([1, 3])
    expected = (2 / 3 * per_sample[0] + 2.0 * per_sample[1]) / (2 / 3 + 2.0)
    assert loss(logits, target).item() == pytest.approx(expected.item())
    with pytest.raises(ConfigError, match=r"loss\.class_weights"):
        ReinforcedFocalLoss(class_weights="balanced")
    with pytest.raises(ConfigError, match="no training samples"):
        inverse_frequency_weights([0, 4])


def test_total_loss_is_eq1_with_weights() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([1])
    anchor, positive, negative = torch.zeros(1, 2), torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2)
    rfl, triplet = ReinforcedFocalLoss(2.0, 1.5), TripletLoss(1.0)
    objective = SimilarityObjective(rfl, triplet)
    terms = objective(logits, target, anchor, {"positive": positive, "negative": negative})
    assert terms.embed.item() == pytest.approx(5.0) and terms.cls.item() == pytest.approx(0.25)
    assert terms.total.item() == pytest.approx(5.25)
    weighted = SimilarityObjective(rfl, triplet, embedding_weight=0.5, classification_weight=2.0)
    terms = weighted(logits, target, anchor, {"positive": positive, "negative": negative})
    assert terms.total.item() == pytest.approx(0.5 * 5.0 + 2.0 * 0.25)
    assert objective.pairing == "triplet"
    assert SimilarityObjective(rfl, ContrastiveLoss()).pairing == "pair"
    without = SimilarityObjective(rfl, None)
    assert without.pairing is None and without(logits, target).embed is None
    with pytest.raises(ConfigError, match="pairing"):
        SimilarityObjective(rfl, torch.nn.MSELoss())
