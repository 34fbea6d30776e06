"""KTO on the shared training core: unpaired desirable / undesirable replies (Ethayarajh et al. 2024).

An item is a prompt, its labelled reply and a reply written for another prompt; one forward pass
gives the policy log-probs of both (the DPO batch layouts), the reference policy is DPO's (frozen,
adapters-off or precomputed). Per micro-batch, the mismatched replies estimate the reference point
z_ref (detached, as in the paper and TRL); the step loss is the weighted loss summed over every item
of the step on every process, divided once by their count. This module is the data, the loss and
the metrics; the loop is :mod:`tuneful.train.loop`, the reference :mod:`tuneful.dpo.reference`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import to_dict
from ..dpo.trainer import DPOResult, DPOTrainer
from .config import KTOConfig
from ..train.prepared import main_processes_first
from .data import PreparedLabeled, prepare_labeled
from .losses import UnpairedLoss, apo_zero_unpaired, kto, kto_reference_point


def unpaired_loss(settings: Any, policy_sums: torch.Tensor, reference_sums: torch.Tensor,
                  desirable: torch.Tensor) -> UnpairedLoss:
    """``policy_sums``/``reference_sums``: the replies' summed log-probs then the mismatched replies' ([2B])."""
    policy_logps, policy_mismatched = policy_sums.chunk(2)
    reference_logps, reference_mismatched = reference_sums.chunk(2)
    weights = {"beta": settings.beta, "desirable_weight": settings.desirable_weight,
               "undesirable_weight": settings.undesirable_weight}
    if settings.loss == "apo_zero_unpaired":
        return apo_zero_unpaired(policy_logps, reference_logps, desirable, **weights)
    point = kto_reference_point(policy_mismatched, reference_mismatched)
    return kto(policy_logps, reference_logps, desirable, point, **weights)


class KTOTrainer(DPOTrainer):
    """KTO: ``micro_batches`` yield lists of item indices (a reply and its mismatched reply each)."""

    name = "kto"

    def objective_settings(self) -> Any:
        return self.cfg.kto

    def needs_reference(self) -> bool:
        return True

    def prepare_data(self) -> None:
        self.data: PreparedLabeled = prepare_labeled(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                                     main_process_first=main_processes_first(self.acc))
        self.balance = self.data.balance(self.settings.desirable_weight, self.settings.undesirable_weight)
        if self.balance is None or not 1.0 <= self.balance <= 4 / 3:
            shown = "no undesirable replies" if self.balance is None else f"{self.balance:.2f}"
            self.acc.print(f"note: λ_D·n_D / (λ_U·n_U) = {shown}; the KTO paper advises 1 to 4/3 (set "
                           "kto.desirable_weight / kto.undesirable_weight to balance the labels)")

    def _labels(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        labels = self.data.train_desirable if split == "train" else self.data.eval_desirable
        return torch.tensor([labels[i] for i in indices], dtype=torch.bool, device=self.acc.device)

    def _loss(self, split: str, indices: Sequence[int]) -> tuple[UnpairedLoss, torch.Tensor, int]:
        examples = self.data.train if split == "train" else self.data.eval
        sums, _, ref, tokens = self.response_logps(split, examples, indices)
        desirable = self._labels(split, indices)
        return unpaired_loss(self.settings, sums, ref, desirable), desirable, tokens

    def step_counts(self, micro: Sequence[list[int]]) -> torch.Tensor:
        return torch.tensor([sum(len(b) for b in micro)], device=self.acc.device)

    def micro_loss(self, indices: list[int], counts: torch.Tensor):
        result, desirable, tokens = self._loss("train", indices)
        loss = result.losses.sum() / max(1, int(counts[0]))
        tally = torch.stack([loss.detach().float(), *self._reward_sums(result, desirable),
                             result.reference_point.float(), torch.tensor(1.0, device=self.acc.device),
                             torch.tensor(float(tokens), device=self.acc.device)])
        return loss * self.world, tally  # DDP averages gradients over processes: x world size makes it a sum

    @staticmethod
    def _reward_sums(result: UnpairedLoss, desirable: torch.Tensor) -> list[torch.Tensor]:
        d = desirable.float()
        return [(result.rewards * d).sum(), d.sum(), (result.rewards * (1 - d)).sum(), (1 - d).sum()]

    def step_metrics(self, tally: torch.Tensor, counts: torch.Tensor, grad_norm: float) -> dict:
        return {"loss": float(tally[0]), **self._reward_metrics(tally[1:5]),
                "kl": float(tally[5]) / max(1.0, float(tally[6])), "grad_norm": grad_norm, "replies": int(counts[0]),
                "tokens": int(tally[7])}

    @staticmethod
    def _reward_metrics(sums: torch.Tensor, prefix: str = "") -> dict:
        desirable = float(sums[0]) / max(1.0, float(sums[1]))
        undesirable = float(sums[2]) / max(1.0, float(sums[3]))
        return {f"{prefix}rewards_desirable": desirable, f"{prefix}rewards_undesirable": undesirable,
                f"{prefix}margin": desirable - undesirable}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out replies: mean loss, rewards by label, the reference point (this process's share, reduced)."""
        self.module.eval()
        mine = list(range(len(self.data.eval)))[self.acc.process_index :: self.world]
        total = torch.zeros(7, device=self.acc.device)  # loss, 4 reward sums, z_ref sum, batches
        size = self.cfg.train.micro_batch_size
        for start in range(0, len(mine), size):
            result, desirable, _ = self._loss("eval", mine[start : start + size])
            total += torch.stack([result.losses.sum().float(), *self._reward_sums(result, desirable),
                                  result.reference_point.float(), torch.tensor(1.0, device=self.acc.device)])
        total = self.acc.reduce(total, reduction="sum")
        self.module.train()
        replies = float(total[2] + total[4])
        return {"eval_loss": float(total[0]) / max(1.0, replies), **self._reward_metrics(total[1:5], "eval_"),
                "eval_kl": float(total[5]) / max(1.0, float(total[6]))}

    def summary(self) -> dict:
        return {"recipe": to_dict(self.cfg), "reference": self.reference_kind, "pair_layout": self.layout,
                "label_balance": self.balance, **self.data.summary()}


def run_kto(cfg: KTOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None) -> DPOResult:
    """setup → train → save."""
    from ..train.loop import run

    return run(KTOTrainer(cfg, model=model, tokenizer=tokenizer, reference_model=reference_model))
