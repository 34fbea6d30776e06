"""Preference losses, each a small standalone function over per-sequence log-probabilities.

Inputs are tensors of shape [batch]: the log-probability of the chosen / rejected response under
the policy (and, where used, the frozen reference), summed over response tokens — or averaged per
token where the method says so (IPO, SimPO, ORPO; noted on each function). Each returns the loss
per pair together with the implicit rewards that go with it (the trainer averages; its metrics read
the rewards from here, never computed a second time).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    """Per-pair losses and the pairs' implicit rewards β·(log π − log π_ref) (β·log π without a
    reference), detached: a reward is a metric, never a training signal of its own."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _with_rewards(losses: torch.Tensor, beta: float, policy_chosen_logps: torch.Tensor,
                  policy_rejected_logps: torch.Tensor, reference_chosen_logps: torch.Tensor | None = None,
                  reference_rejected_logps: torch.Tensor | None = None) -> PreferenceLoss:
    with torch.no_grad():
        chosen = beta * (policy_chosen_logps - (reference_chosen_logps if reference_chosen_logps is not None else 0.0))
        rejected = beta * (policy_rejected_logps
                           - (reference_rejected_logps if reference_rejected_logps is not None else 0.0))
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())


def _preference_logits(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                       reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor) -> torch.Tensor:
    """How much more the policy prefers chosen over rejected than the reference does (log-ratio)."""
    return (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)


def dpo_sigmoid(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *, beta: float = 0.1,
                label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290): -log σ(β·h), h the log-ratio margin.

    ``label_smoothing`` ε > 0 assumes preference labels flip with probability ε (conservative DPO,
    Mitchell 2023): -(1-ε) log σ(βh) - ε log σ(-βh). Summed log-probs.
    """
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    logits = beta * _preference_logits(*logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _with_rewards(losses, beta, *logps)


def dpo_robust(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *, beta: float = 0.1,
               label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409): an unbiased loss under label noise ε < 0.5,
    (-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε). Summed log-probs."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    logits = beta * _preference_logits(*logps)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)
    return _with_rewards(losses, beta, *logps)


def ipo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
        beta: float = 0.1) -> PreferenceLoss:
    """IPO (Azar et al. 2023, arXiv:2310.12036): (h - 1/(2β))², regressing the margin to a fixed target
    instead of pushing it to infinity. Per-token *average* log-probs (as TRL does)."""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return _with_rewards((_preference_logits(*logps) - 1 / (2 * beta)) ** 2, beta, *logps)


def hinge(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
          reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
          beta: float = 0.1) -> PreferenceLoss:
    """SLiC hinge (Zhao et al. 2023, arXiv:2305.10425) on the DPO margin: max(0, 1 - β·h). Summed log-probs."""
    logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return _with_rewards(torch.relu(1 - beta * _preference_logits(*logps)), beta, *logps)


def simpo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, beta: float = 2.0,
          gamma: float = 0.5) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, arXiv:2405.14734), reference-free: -log σ(β(ā_c - ā_r) - γ) with
    per-token *average* log-probs and a target margin γ (the paper's γ/β ratio times β)."""
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps) - gamma)
    return _with_rewards(losses, beta, policy_chosen_logps, policy_rejected_logps)


def orpo_odds_ratio(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *,
                    beta: float = 0.1) -> PreferenceLoss:
    """ORPO's odds-ratio term (Hong et al. 2024, arXiv:2403.07691), reference-free:
    -log σ(log odds(chosen) - log odds(rejected)), odds(y) = p / (1 - p) with p the per-token
    *average* probability. The trainer adds it, times λ, to the NLL of the chosen response; ``beta``
    scales only the reported rewards β·log π."""
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log1p(-torch.exp(policy_chosen_logps)) - torch.log1p(-torch.exp(policy_rejected_logps)))
    return _with_rewards(-F.logsigmoid(log_odds), beta, policy_chosen_logps, policy_rejected_logps)
