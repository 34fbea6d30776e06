"""Online DPO on the shared training core (Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback", arXiv:2402.04792): each step the current policy samples a group of replies per
prompt, the reward sources rank them, and the best and the worst reply of each group form a DPO
pair — on-policy pairs, instead of a fixed offline set. Groups whose replies all score the same
give no pair and are counted. Sampling, rewards and the reference are GRPO's; the loss is DPO's
(:mod:`tuneful.preference.losses`), averaged over the step's pairs on every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ..config import setting
from ..preference.losses import dpo_sigmoid, ipo
from ..train.config import AfterSFTConfig
from ..train.loop import RunResult, run
from .config import (GRPO_REFERENCES, LAYOUTS, GRPOTrainSettings, PromptDataSettings, PromptSelectionSettings,
                     RolloutSettings, vllm_lora_problems)
from .rollout import RolloutBatch
from .trainer import GRPOTrainer

ONLINE_DPO_LOSSES = ("sigmoid", "ipo")


@dataclass
class OnlineDPOSettings(PromptSelectionSettings, RolloutSettings):
    rewards: list[str] = setting([], "Reward sources that rank the sampled replies (as grpo.rewards).")
    reward_weights: list[float] = setting([], "One weight per reward source; empty = 1 each.")
    group_size: int = setting(2, "Replies sampled per prompt; the best and the worst form the pair.")
    max_new_tokens: int = setting(128, "Cap on each reply's length.")
    temperature: float = setting(1.0, "Sampling temperature.")
    loss: str = setting("sigmoid", "sigmoid (DPO) or ipo.")
    beta: float = setting(0.1, "DPO's β: the strength of the pull towards the reference.")
    reference: str = setting("auto", "frozen (a copy of the start), adapters-off (LoRA), auto (adapters-off with "
                                     "LoRA, else frozen).")
    generation_batch_size: int = setting(64, "Sequences generated together.")
    layout: str = setting("auto", "How a group meets the model in training: shared-prompt (one row, the prompt "
                                  "encoded once), rows (a row per reply), auto (shared-prompt unless flash-attention).")

    @property
    def scale_rewards(self) -> str:
        """Read by the shared sampling; online DPO ranks rewards and uses no advantages."""
        return "none"

    @property
    def iterations(self) -> int:
        """One update per sample: the pairs are on-policy."""
        return 1

    def check(self) -> list[str]:
        problems = self.selection_problems()
        if not self.rewards:
            problems.append("rewards: required; e.g. online_dpo.rewards=python:my_rewards.py:correct")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            problems.append(f"reward_weights: {len(self.reward_weights)} weight(s) for {len(self.rewards)} reward(s)")
        if self.group_size < 2:
            problems.append(f"group_size: {self.group_size}; a pair needs two replies, so >= 2")
        if self.loss not in ONLINE_DPO_LOSSES:
            problems.append(f"loss: {self.loss!r} is not one of {', '.join(ONLINE_DPO_LOSSES)}")
        if self.beta <= 0 or self.temperature <= 0:
            problems.append("beta and temperature must be positive")
        if self.layout not in LAYOUTS:
            problems.append(f"layout: {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.reference not in GRPO_REFERENCES:
            problems.append(f"reference: {self.reference!r} is not one of {', '.join(GRPO_REFERENCES)}")
        return problems + self.rollout_problems()


@dataclass
class OnlineDPOTrainSettings(GRPOTrainSettings):
    output_dir: str = setting("runs/online-dpo", "Where checkpoints, logs and the model go.")
    lr: float = setting(5e-6, "Peak learning rate.")


@dataclass
class OnlineDPOConfig(AfterSFTConfig):
    """An online DPO run; ``check`` collects every problem at once."""

    data: PromptDataSettings = field(default_factory=PromptDataSettings)
    online_dpo: OnlineDPOSettings = field(default_factory=OnlineDPOSettings)
    train: OnlineDPOTrainSettings = field(default_factory=OnlineDPOTrainSettings)
    method: ClassVar[str] = "online DPO"
    reference_section: ClassVar[str | None] = "online_dpo"
    layout_setting: ClassVar[str] = "online_dpo.layout"

    def check(self) -> list[str]:
        return super().check() + vllm_lora_problems("online_dpo", self.online_dpo.rollouts, self.lora)


def best_and_worst(rewards: Sequence[float], group_size: int) -> list[tuple[int, int]]:
    """(chosen, rejected) completion indices per group: its best and worst reply; tied groups give none.
    Among equal best (or worst) scores the first sampled is taken."""
    pairs = []
    for start in range(0, len(rewards), group_size):
        group = list(rewards[start : start + group_size])
        best, worst = group.index(max(group)), group.index(min(group))
        if group[best] > group[worst]:
            pairs.append((start + best, start + worst))
    return pairs


class OnlineDPOTrainer(GRPOTrainer):
    """Online DPO: GRPO's sampling and reference, DPO's loss on each group's best-vs-worst pair."""

    name = "online-dpo"

    def __init__(self, cfg: OnlineDPOConfig, *, model: Any = None, tokenizer: Any = None, reward: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer, reward=reward)

    def section(self) -> Any:
        return self.cfg.online_dpo

    def _reference_kind(self) -> str:
        chosen = self.settings.reference
        return chosen if chosen != "auto" else ("adapters-off" if self.cfg.lora.enabled else "frozen")

    def step_counts(self, micro: Sequence[RolloutBatch]) -> torch.Tensor:
        group = self.settings.group_size
        pairs = sum(len(best_and_worst([c.reward for c in b.completions], group)) for b in micro)
        return torch.tensor([pairs, sum(b.tokens for b in micro)], device=self.acc.device)

    def micro_loss(self, batch: RolloutBatch, counts: torch.Tensor):
        inputs = self.inputs(batch)
        with self.acc.autocast():
            token_logps = self.module(**inputs.model_args()).float()
        reference_tokens = self._reference_logps(batch)
        n = len(batch.completions)
        sums = torch.zeros(n, device=token_logps.device).index_add(0, inputs.sequence, token_logps)
        reference = torch.zeros(n, device=token_logps.device).index_add(0, inputs.sequence, reference_tokens)
        pairs = best_and_worst([c.reward for c in batch.completions], self.settings.group_size)
        rewards = torch.tensor([c.reward for c in batch.completions], device=self.acc.device)
        zero = torch.zeros(())
        counted = {"reward": rewards.sum(), "completions": torch.tensor(float(n)),
                   "swapped": torch.tensor(float(batch.swapped)),
                   "positions": torch.tensor(float(inputs.attention_mask.sum()))}
        if not pairs:  # no preference in this micro-batch: a zero loss that still reaches every parameter
            return sums.sum() * 0.0, {"loss": zero, "reward_gap": zero, "margin": zero, "correct": zero,
                                      "pairs": zero, **counted}
        chosen, rejected = (torch.tensor(x, device=self.acc.device) for x in zip(*pairs))
        args = (sums[chosen], sums[rejected], reference[chosen], reference[rejected])
        if self.settings.loss == "ipo":  # IPO reads per-token averages
            lengths = inputs.lengths.float()
            args = (args[0] / lengths[chosen], args[1] / lengths[rejected], args[2] / lengths[chosen],
                    args[3] / lengths[rejected])
            result = ipo(*args, beta=self.settings.beta)
        else:
            result = dpo_sigmoid(*args, beta=self.settings.beta)
        loss = result.losses.sum() / max(1, int(counts[0]))
        margin = result.chosen_rewards - result.rejected_rewards
        return loss, {"loss": loss.detach(), "reward_gap": (rewards[chosen] - rewards[rejected]).sum(),
                      "margin": margin.sum(), "correct": (margin > 0).float().sum(),
                      "pairs": torch.tensor(float(len(pairs))), **counted}

    def _reference_logps(self, batch: RolloutBatch) -> torch.Tensor:
        if self.reference_kind == "frozen":
            return self._logps(batch, self.reference_module)
        return self._logps(batch, self.module, adapters_off=True)

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        pairs, completions = max(1.0, sums["pairs"]), max(1.0, sums["completions"])
        groups = int(completions) // self.settings.group_size
        return {"loss": sums["loss"], "reward_mean": sums["reward"] / completions,
                "pair_reward_gap": sums["reward_gap"] / pairs, "margin": sums["margin"] / pairs,
                "accuracy": sums["correct"] / pairs, "pairs": int(sums["pairs"]), "tied_groups":
                groups - int(sums["pairs"]), "swapped_share": sums["swapped"] / max(1, groups),
                "grad_norm": grad_norm, "tokens": int(sums["positions"])}


def run_online_dpo(cfg: OnlineDPOConfig, *, model: Any = None, tokenizer: Any = None, reward: Any = None) -> RunResult:
    """setup → train → save."""
    return run(OnlineDPOTrainer(cfg, model=model, tokenizer=tokenizer, reward=reward))
