"""Preference losses against values computed by hand (math module, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from tuneful.preference.losses import dpo_robust, dpo_sigmoid, hinge, ipo, orpo_odds_ratio, simpo


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# policy chosen/rejected, reference chosen/rejected: margin h = (-1 - -2) - (-1.5 - -1.5) = 1
PC, PR, RC, RR = t(-1.0), t(-2.0), t(-1.5), t(-1.5)
SOFTPLUS_MINUS = math.log(1 + math.exp(-0.1))  # -log σ(0.1)
SOFTPLUS_PLUS = math.log(1 + math.exp(0.1))  # -log σ(-0.1)


def test_dpo_sigmoid():
    assert dpo_sigmoid(PC, PR, RC, RR, beta=0.1).losses.item() == pytest.approx(SOFTPLUS_MINUS, abs=1e-12)
    smoothed = 0.8 * SOFTPLUS_MINUS + 0.2 * SOFTPLUS_PLUS
    assert dpo_sigmoid(PC, PR, RC, RR, beta=0.1, label_smoothing=0.2).losses.item() == pytest.approx(smoothed, abs=1e-12)


def test_dpo_robust():
    expected = (0.8 * SOFTPLUS_MINUS - 0.2 * SOFTPLUS_PLUS) / 0.6
    assert dpo_robust(PC, PR, RC, RR, beta=0.1, label_smoothing=0.2).losses.item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="0.5"):
        dpo_robust(PC, PR, RC, RR, label_smoothing=0.5)


def test_ipo_regresses_the_margin_to_one_over_two_beta():
    assert ipo(PC, PR, RC, RR, beta=0.1).losses.item() == pytest.approx((1 - 5) ** 2)
    assert ipo(t(4.0), t(-1.0), t(0.0), t(0.0), beta=0.1).losses.item() == pytest.approx(0.0)  # h = 5 = 1/(2β)


def test_hinge():
    assert hinge(PC, PR, RC, RR, beta=0.1).losses.item() == pytest.approx(0.9)
    assert hinge(t(10.0), t(-10.0), t(0.0), t(0.0), beta=0.1).losses.item() == 0.0  # margin beyond 1/β: no loss


def test_simpo_is_reference_free_with_a_target_margin():
    assert simpo(PC, PR, beta=2.0, gamma=0.5).losses.item() == pytest.approx(math.log(1 + math.exp(-1.5)), abs=1e-12)


def test_orpo_odds_ratio():
    # p_chosen = 0.5 (odds 1), p_rejected = 0.25 (odds 1/3): -log σ(log 3) = log(4/3)
    value = orpo_odds_ratio(t(math.log(0.5)), t(math.log(0.25))).losses.item()
    assert value == pytest.approx(math.log(4 / 3), abs=1e-12)


def test_losses_work_per_pair_on_batches():
    losses = dpo_sigmoid(t(-1.0, -3.0), t(-2.0, -1.0), t(-1.5, -2.0), t(-1.5, -2.0), beta=1.0).losses
    assert losses.shape == (2,)
    assert losses[0].item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert losses[1].item() == pytest.approx(math.log(1 + math.exp(2.0)))


def test_every_loss_returns_the_implicit_rewards_with_it():
    """β·(log π − log π_ref), or β·log π without a reference; detached (a metric, not a signal)."""
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    for result in (dpo_sigmoid(pc, pr, RC, RR, beta=0.1), dpo_robust(pc, pr, RC, RR, beta=0.1),
                   ipo(pc, pr, RC, RR, beta=0.1), hinge(pc, pr, RC, RR, beta=0.1)):
        assert (result.chosen_rewards.item(), result.rejected_rewards.item()) == pytest.approx((0.05, -0.05))
        assert not result.chosen_rewards.requires_grad and result.losses.requires_grad
    for result in (simpo(pc, pr, beta=1.0), orpo_odds_ratio(pc, pr, beta=1.0)):
        assert (result.chosen_rewards.item(), result.rejected_rewards.item()) == pytest.approx((-1.0, -2.0))
