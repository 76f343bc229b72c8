"""Focal, semi-focal and reinforced focal losses keep finite gradients with 0 < gamma < 1 where p_t = 1."""

from __future__ import annotations

import pytest
import torch

from histo_lightning.losses import FocalLoss, ReinforcedFocalLoss, SemiFocalLoss
from histo_lightning.losses.focal import log_p_t_and_complement

# rows 0-1: p_t rounds to exactly 1 in float32 (a logit leads by 50 and by 200); row 2: an ordinary sample
LOGITS = [[-50.0, 50.0], [0.0, 200.0], [0.3, -0.2]]
TARGETS = [1, 1, 0]

LOSSES = {
    "focal": lambda gamma: FocalLoss(alpha=5.0, gamma=gamma),
    "semi_focal": lambda gamma: SemiFocalLoss(alpha=5.0, gamma=gamma, threshold=0.6),
    "reinforced_focal": lambda gamma: ReinforcedFocalLoss(lam=2.0, gamma=gamma),
}


def test_p_t_is_exactly_one_in_the_fixture() -> None:
    p_t = torch.tensor(LOGITS).softmax(-1)[torch.arange(3), torch.tensor(TARGETS)]
    assert p_t[0] == 1.0 and p_t[1] == 1.0
    # the plain power, (1 - p_t)^gamma, has an infinite derivative there: its backward pass gives NaN
    logits = torch.tensor(LOGITS, requires_grad=True)
    p = logits.softmax(-1)[torch.arange(3), torch.tensor(TARGETS)]
    ((1 - p).pow(0.5) * -p.log()).sum().backward()
    assert torch.isnan(logits.grad).any()


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_are_finite_where_p_t_is_one(name: str, gamma: float) -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = LOSSES[name](gamma)(logits, torch.tensor(TARGETS))
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), grad
    # a sample with p_t = 1 contributes (almost) no gradient; the ordinary one does
    assert torch.all(grad[:2].abs() < 1e-4) and grad[2].abs().sum() > 1e-2


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name: str) -> None:
    # double precision, ordinary logits and some very confident ones (1 - p_t ~ 1e-9)
    logits = torch.tensor(
        [[0.4, -1.2, 0.3], [2.0, 0.5, -0.7], [-10.0, 10.0, 0.0], [9.0, -11.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    targets = torch.tensor([0, 2, 1, 0])
    criterion = LOSSES[name](0.5).double()
    assert torch.autograd.gradcheck(lambda x: criterion(x, targets), (logits,))


def test_log_complement_is_log_of_one_minus_p_t() -> None:
    logits = torch.tensor([[0.4, -1.2, 0.3], [2.0, 0.5, -0.7]])
    targets = torch.tensor([0, 2])
    log_p_t, log_rest = log_p_t_and_complement(logits, targets)
    p_t = logits.softmax(-1)[torch.arange(2), targets]
    assert torch.allclose(log_p_t.exp(), p_t) and torch.allclose(log_rest.exp(), 1 - p_t)
