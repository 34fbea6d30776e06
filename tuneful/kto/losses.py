"""Unpaired preference losses (KTO and its relatives), each a small standalone function.

Inputs are per-reply log-probabilities summed over the reply's tokens, under the policy and the
frozen reference, and a boolean ``desirable`` per reply (the data's thumbs-up / thumbs-down label).
Each returns the weighted loss per reply together with the implicit rewards β·(log π − log π_ref)
and the reference point it used (detached: a baseline, never a training signal of its own).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class UnpairedLoss(NamedTuple):
    losses: torch.Tensor  # per reply, already weighted by desirable_weight / undesirable_weight
    rewards: torch.Tensor  # β·(log π − log π_ref) per reply, detached
    reference_point: torch.Tensor  # the scalar z_ref the losses were measured against, detached


def kto_reference_point(policy_mismatched_logps: torch.Tensor, reference_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z_ref (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 7-8): an estimate of KL(π ‖ π_ref) from
    replies paired with *other* prompts (y' ~ a mismatched reply for x), the batch mean of
    log π(y'|x) − log π_ref(y'|x), clamped at zero and detached."""
    with torch.no_grad():
        if policy_mismatched_logps.numel() == 0:
            return policy_mismatched_logps.new_zeros(())
        return (policy_mismatched_logps - reference_mismatched_logps).mean().clamp(min=0)


def _weights(desirable: torch.Tensor, desirable_weight: float, undesirable_weight: float,
             like: torch.Tensor) -> torch.Tensor:
    return torch.where(desirable, torch.full_like(like, desirable_weight), torch.full_like(like, undesirable_weight))


def kto(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor,
        reference_point: torch.Tensor, *, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> UnpairedLoss:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 7): with r = log π(y|x) − log π_ref(y|x),
    a desirable reply costs λ_D·(1 − σ(β(r − z_ref))), an undesirable one λ_U·(1 − σ(β(z_ref − r))).
    The value is measured against the reference point, so a reply is only rewarded for beating the
    policy's typical drift from the reference."""
    logratios = policy_logps - reference_logps
    value = torch.where(desirable, logratios - reference_point, reference_point - logratios)
    losses = _weights(desirable, desirable_weight, undesirable_weight, logratios) * (1 - torch.sigmoid(beta * value))
    return UnpairedLoss(losses, (beta * logratios).detach(), reference_point.detach())


def apo_zero_unpaired(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor, *,
                      beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> UnpairedLoss:
    """APO-zero, unpaired (D'Oosterlinck et al. 2024, arXiv:2408.06266): no reference point; desirable
    replies are pushed up, 1 − σ(βr), undesirable ones down, σ(βr). For replies known to be better than
    what the model writes now."""
    logratios = policy_logps - reference_logps
    sig = torch.sigmoid(beta * logratios)
    losses = _weights(desirable, desirable_weight, undesirable_weight, logratios) * torch.where(desirable, 1 - sig, sig)
    return UnpairedLoss(losses, (beta * logratios).detach(), logratios.new_zeros(()))
