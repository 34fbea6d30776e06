"""Online RL losses over sampled completions, each a small standalone function.

Token-level inputs are flat tensors over every completion token of a batch ([T]); ``sequence`` maps
each token to its completion. ``group_advantages`` turns rewards into advantages; the surrogate
returns per-token losses, which the trainer aggregates with the normaliser its loss type names.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

ADVANTAGE_EPS = 1e-4  # added to the group's std before dividing (an all-equal group gets advantage 0)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "group") -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, arXiv:2402.03300, §4.1.2): each reward minus its group's
    mean, divided by the group's standard deviation (Bessel-corrected) with ``scale="group"``, or not
    divided with ``scale="none"`` (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783: scaling by the std
    favours too-easy and too-hard prompts). ``rewards`` is [prompts x group_size], groups contiguous."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred.reshape(-1)
    if scale != "group":
        raise ValueError(f"scale must be group or none, got {scale!r}")
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    return (centred / (std + ADVANTAGE_EPS)).reshape(-1)


class PolicyGradientTerms(NamedTuple):
    token_losses: torch.Tensor  # [T], differentiable
    kl: torch.Tensor  # [T] per-token KL estimate to the reference, detached (zeros without one)
    clipped: torch.Tensor  # [T] bool, the clip was active for this token


def clipped_policy_gradient(policy_logps: torch.Tensor, old_logps: torch.Tensor, token_advantages: torch.Tensor, *,
                            epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                            reference_logps: torch.Tensor | None = None, beta: float = 0.0,
                            kl_ratio_correction: bool = True) -> PolicyGradientTerms:
    """PPO's clipped surrogate per token (Schulman et al. 2017, arXiv:1707.06347) as GRPO uses it:
    -min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A), ρ = π/π_old, plus β·KL(π‖π_ref) with the k3 estimator
    exp(ref - logπ) - (ref - logπ) - 1 (unbiased, always >= 0). A larger ``epsilon_high`` than
    ``epsilon_low`` is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476). ``old_logps`` are the
    sampling policy's (detached); with one update per sample they equal the current ones and ρ = 1.
    ``kl_ratio_correction`` weights the KL term by ρ (DeepSeek-V3.2, arXiv:2512.02556): the tokens were
    drawn from π_old, and the weight makes its gradient the unbiased reverse-KL gradient (its value is 1
    on-policy, its gradient is not)."""
    ratio = torch.exp(policy_logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    token_losses = -torch.min(ratio * token_advantages, clipped_ratio * token_advantages)
    kl = torch.zeros_like(policy_logps)
    if beta and reference_logps is not None:
        delta = reference_logps - policy_logps
        kl_term = torch.exp(delta) - delta - 1
        kl = kl_term.detach()
        token_losses = token_losses + beta * (kl_term * ratio if kl_ratio_correction else kl_term)
    clipped = (ratio * token_advantages).detach() > (clipped_ratio * token_advantages).detach()
    return PolicyGradientTerms(token_losses, kl, clipped)
