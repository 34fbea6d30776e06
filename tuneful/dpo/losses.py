"""Preference losses, each a small standalone function over per-sequence log-probabilities.

Inputs are tensors of shape [batch]: the log-probability of the chosen / rejected response under
the policy (and, where used, the frozen reference), summed over response tokens — or averaged per
token where the method says so (IPO, SimPO, ORPO; noted on each function). Each returns the loss
per pair; the trainer averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _preference_logits(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
    """How much more the policy prefers chosen over rejected than the reference does (log-ratio)."""
    return (pc - pr) - (rc - rr)


def dpo_sigmoid(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float = 0.1,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290): -log σ(β·h), h the log-ratio margin.

    ``label_smoothing`` ε > 0 assumes preference labels flip with probability ε (conservative DPO,
    Mitchell 2023): -(1-ε) log σ(βh) - ε log σ(-βh). Summed log-probs.
    """
    logits = beta * _preference_logits(pc, pr, rc, rr)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_robust(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float = 0.1,
               label_smoothing: float = 0.1) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409): an unbiased loss under label noise ε < 0.5,
    (-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε). Summed log-probs."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logits = beta * _preference_logits(pc, pr, rc, rr)
    return (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)


def ipo(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036): (h - 1/(2β))², regressing the margin to a fixed target
    instead of pushing it to infinity. Per-token *average* log-probs (as TRL does)."""
    return (_preference_logits(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2


def hinge(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """SLiC hinge (Zhao et al. 2023, arXiv:2305.10425) on the DPO margin: max(0, 1 - β·h). Summed log-probs."""
    return torch.relu(1 - beta * _preference_logits(pc, pr, rc, rr))


def simpo(pc: torch.Tensor, pr: torch.Tensor, *, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO (Meng et al. 2024, arXiv:2405.14734), reference-free: -log σ(β(ā_c - ā_r) - γ) with
    per-token *average* log-probs and a target margin γ (the paper's γ/β ratio times β)."""
    return -F.logsigmoid(beta * (pc - pr) - gamma)


def orpo_odds_ratio(pc: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024, arXiv:2403.07691), reference-free:
    -log σ(log odds(chosen) - log odds(rejected)), odds(y) = p / (1 - p) with p the per-token
    *average* probability. The trainer adds it, times λ, to the NLL of the chosen response."""
    log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
    return -F.logsigmoid(log_odds)


@dataclass(frozen=True)
class PreferenceMetrics:
    reward_chosen: float
    reward_rejected: float
    margin: float
    accuracy: float  # share of pairs whose chosen reward beats the rejected one


def preference_metrics(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor | None, rr: torch.Tensor | None, *,
                       beta: float) -> PreferenceMetrics:
    """Implicit rewards β·(log π - log π_ref) (β·log π when there is no reference), averaged over pairs."""
    chosen = beta * (pc - (rc if rc is not None else 0.0))
    rejected = beta * (pr - (rr if rr is not None else 0.0))
    return PreferenceMetrics(float(chosen.mean()), float(rejected.mean()), float((chosen - rejected).mean()),
                             float((chosen > rejected).float().mean()))
