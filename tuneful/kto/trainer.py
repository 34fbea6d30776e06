"""KTO on the shared training core: unpaired desirable / undesirable replies (Ethayarajh et al. 2024).

An item is a prompt, its labelled reply and a reply written for another prompt; one forward pass
gives the policy log-probs of both (the pair batch layouts), the reference policy is the preference trainers' (frozen,
adapters-off or precomputed). Per micro-batch, the mismatched replies estimate the reference point
z_ref (detached, as in the paper and TRL); the step loss is the weighted loss summed over every item
of the step on every process, divided once by their count. This module is the data, the loss and
the metrics; the loop is :mod:`tuneful.train.loop`, the policy and its reference :mod:`tuneful.preference.policy`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import to_dict
from ..preference.policy import PairedPolicy
from ..tokenization.prepared import main_processes_first
from ..train.loop import RunResult, Trainer, run
from .config import KTOConfig
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


class KTOTrainer(Trainer):
    """KTO: ``micro_batches`` yield lists of item indices (a reply and its mismatched reply each). The policy, its
    reference and the pair layout are :class:`tuneful.preference.policy.PairedPolicy`'s."""

    name = "kto"

    def __init__(self, cfg: KTOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.settings = cfg.kto
        self.policy = PairedPolicy(cfg, self.settings, needs_reference=True, reference_model=reference_model)
        self.parts = [self.policy]

    def prepare_data(self) -> None:
        self.data: PreparedLabeled = prepare_labeled(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                                     main_process_first=main_processes_first(self.acc))
        self.balance = self.data.balance(self.settings.desirable_weight, self.settings.undesirable_weight)
        if self.balance is None or not 1.0 <= self.balance <= 4 / 3:
            shown = "no undesirable replies" if self.balance is None else f"{self.balance:.2f}"
            self.acc.print(f"note: λ_D·n_D / (λ_U·n_U) = {shown}; the KTO paper advises 1 to 4/3 (set "
                           "kto.desirable_weight / kto.undesirable_weight to balance the labels)")

    def loss_module(self, model: Any) -> torch.nn.Module:
        return self.policy.loss_module(model)

    def item_lengths(self) -> list[int]:
        return self.policy.item_lengths(self.data.train)

    def _labels(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        labels = self.data.train_desirable if split == "train" else self.data.eval_desirable
        return torch.tensor([labels[i] for i in indices], dtype=torch.bool, device=self.acc.device)

    def _loss(self, split: str, indices: Sequence[int]) -> tuple[UnpairedLoss, torch.Tensor, int]:
        examples = self.data.train if split == "train" else self.data.eval
        sums, _, ref, tokens = self.policy.response_logps(self, split, examples, indices)
        desirable = self._labels(split, indices)
        return unpaired_loss(self.settings, sums, ref, desirable), desirable, tokens

    def step_counts(self, micro: Sequence[list[int]]) -> torch.Tensor:
        return torch.tensor([sum(len(b) for b in micro)], device=self.acc.device)

    def micro_loss(self, indices: list[int], counts: torch.Tensor):
        result, desirable, tokens = self._loss("train", indices)
        loss = result.losses.sum() / max(1, int(counts[0]))
        return loss, {"loss": loss.detach(), **self._sums(result, desirable), "tokens": torch.tensor(float(tokens))}

    @staticmethod
    def _sums(result: UnpairedLoss, desirable: torch.Tensor) -> dict[str, torch.Tensor]:
        """A micro-batch's rewards by label, its reference point z_ref, and the micro-batch itself (z_ref's count)."""
        d = desirable.float()
        return {"reward_desirable": (result.rewards * d).sum(), "desirable": d.sum(),
                "reward_undesirable": (result.rewards * (1 - d)).sum(), "undesirable": (1 - d).sum(),
                "reference_point": result.reference_point.float(), "micro_batches": torch.tensor(1.0)}

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        return {"loss": sums["loss"], **self._reward_metrics(sums), "kl": sums["reference_point"] /
                max(1.0, sums["micro_batches"]), "grad_norm": grad_norm, "replies": int(counts[0]),
                "tokens": int(sums["tokens"])}

    @staticmethod
    def _reward_metrics(sums: dict[str, float], prefix: str = "") -> dict:
        desirable = sums["reward_desirable"] / max(1.0, sums["desirable"])
        undesirable = sums["reward_undesirable"] / max(1.0, sums["undesirable"])
        return {f"{prefix}rewards_desirable": desirable, f"{prefix}rewards_undesirable": undesirable,
                f"{prefix}margin": desirable - undesirable}

    def eval_metrics(self) -> dict:
        return self.evaluate()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out replies: mean loss, rewards by label, the reference point (this process's share, reduced)."""
        self.module.eval()
        mine = list(range(len(self.data.eval)))[self.acc.process_index :: self.world]
        names = ["loss_sum", "reward_desirable", "desirable", "reward_undesirable", "undesirable", "reference_point",
                 "micro_batches"]
        total = torch.zeros(len(names), device=self.acc.device)
        size = self.cfg.train.micro_batch_size
        for start in range(0, len(mine), size):
            result, desirable, _ = self._loss("eval", mine[start : start + size])
            batch = {"loss_sum": result.losses.sum().float(), **self._sums(result, desirable)}
            total += torch.stack([batch[name].to(self.acc.device) for name in names])
        sums = dict(zip(names, self.acc.reduce(total, reduction="sum").tolist()))
        self.module.train()
        replies = sums["desirable"] + sums["undesirable"]
        return {"eval_loss": sums["loss_sum"] / max(1.0, replies), **self._reward_metrics(sums, "eval_"),
                "eval_kl": sums["reference_point"] / max(1.0, sums["micro_batches"])}

    def summary(self) -> dict:
        return {"recipe": to_dict(self.cfg), "reference": self.policy.kind, "pair_layout": self.policy.layout,
                "label_balance": self.balance, **self.data.summary()}

    def result_details(self) -> dict:
        return self.policy.details()


def run_kto(cfg: KTOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None) -> RunResult:
    """setup → train → save."""
    return run(KTOTrainer(cfg, model=model, tokenizer=tokenizer, reference_model=reference_model))
