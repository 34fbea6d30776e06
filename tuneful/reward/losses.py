"""The reward model's loss, a small standalone function over per-reply scalar rewards."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RewardLoss(NamedTuple):
    losses: torch.Tensor  # per pair
    margins: torch.Tensor  # r(chosen) - r(rejected), detached


def bradley_terry(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *,
                  margin: torch.Tensor | None = None, center_coefficient: float = 0.0) -> RewardLoss:
    """Bradley–Terry pairwise loss as used for RLHF reward models (Ouyang et al. 2022, arXiv:2203.02155):
    -log σ(r_c − r_r − m), with an optional per-pair margin m (Llama 2, Touvron et al. 2023: larger for
    clearer preferences), plus ``center_coefficient``·(r_c + r_r)² which keeps rewards centred on zero
    (Eisenstein et al. 2023, arXiv:2312.09244) since the loss only sees differences."""
    difference = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(difference - margin if margin is not None else difference)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return RewardLoss(losses, difference.detach())
