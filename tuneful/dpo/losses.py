"""From per-sequence log-probs to a training loss: which loss, with which normalisation.

Each objective names its loss function (``losses.py``), whether it needs a reference policy, and
whether it reads per-token *average* log-probs (IPO, SimPO, ORPO) or sums (DPO, hinge). The step
loss is normalised once per optimizer step: pair terms by the number of pairs in the step, ORPO's
NLL term by the number of chosen-response tokens in the step — never per micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..preference.losses import PreferenceLoss, dpo_robust, dpo_sigmoid, hinge, ipo, orpo_odds_ratio, simpo


@dataclass(frozen=True)
class Objective:
    needs_reference: bool
    averaged: bool  # the loss reads per-token average log-probs
    pair_loss: Callable[..., PreferenceLoss]  # (pc, pr, rc, rr, settings) -> losses and rewards per pair
    chosen_nll_weight: float = 0.0  # ORPO adds the chosen responses' NLL (weight 1; the OR term gets λ)


OBJECTIVES: dict[str, Objective] = {
    "sigmoid": Objective(True, False, lambda pc, pr, rc, rr, s: dpo_sigmoid(
        pc, pr, rc, rr, beta=s.beta, label_smoothing=s.label_smoothing)),
    "robust": Objective(True, False, lambda pc, pr, rc, rr, s: dpo_robust(
        pc, pr, rc, rr, beta=s.beta, label_smoothing=s.label_smoothing)),
    "ipo": Objective(True, True, lambda pc, pr, rc, rr, s: ipo(pc, pr, rc, rr, beta=s.beta)),
    "hinge": Objective(True, False, lambda pc, pr, rc, rr, s: hinge(pc, pr, rc, rr, beta=s.beta)),
    "simpo": Objective(False, True, lambda pc, pr, rc, rr, s: simpo(pc, pr, beta=s.beta, gamma=s.simpo_gamma)),
    "orpo": Objective(False, True, lambda pc, pr, rc, rr, s: _scaled(orpo_odds_ratio(pc, pr, beta=s.beta),
                                                                     s.orpo_lambda), chosen_nll_weight=1.0),
}


def _scaled(result: PreferenceLoss, weight: float) -> PreferenceLoss:
    return result._replace(losses=weight * result.losses)


@dataclass
class PairTerms:
    """One micro-batch's contribution, as sums (the step divides once)."""

    pair_loss_sum: torch.Tensor  # differentiable
    chosen_nll_sum: torch.Tensor  # differentiable (zero unless the objective uses it)
    rewards_chosen: torch.Tensor  # detached, per pair
    rewards_rejected: torch.Tensor


def pair_terms(objective: Objective, settings: Any, sums: torch.Tensor, counts: torch.Tensor,
               ref_sums: torch.Tensor | None) -> PairTerms:
    """``sums``/``counts``/``ref_sums`` hold chosen rows then rejected rows ([2B]), as PairBatch.scores lays
    them out; ``settings`` is the run's ``ObjectiveSettings`` (beta, label_smoothing, ...)."""
    counts = counts.to(sums.dtype).clamp(min=1)
    logps = sums / counts if objective.averaged else sums
    ref = None
    if ref_sums is not None:
        ref = ref_sums / counts if objective.averaged else ref_sums
    pc, pr = logps.chunk(2)
    rc, rr = ref.chunk(2) if ref is not None else (None, None)
    result = objective.pair_loss(pc, pr, rc, rr, settings)
    chosen_nll = -sums.chunk(2)[0].sum() * objective.chosen_nll_weight
    return PairTerms(result.losses.sum(), chosen_nll, result.chosen_rewards, result.rejected_rewards)
