"""Reward-model training on the shared core: preference pairs → a scalar score per reply, Bradley–Terry loss.

Data preparation and the batch layouts are the preference trainers' (:mod:`tuneful.preference`: the same
loaders, templates, masks and preflight as DPO; a shared prompt encoded once, or two rows); the score is read at
the end of each reply. The step
loss is the per-pair loss summed over every pair of the step on every process, divided once by their
count. With LoRA the score head trains in full and the saved folder is merged, so it loads in
transformers (``AutoModelForSequenceClassification``) without peft.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import to_dict
from ..preference.prepare import PreparedPairs, prepare_pairs
from ..preference.policy import PairLayout
from ..tokenization.prepared import main_processes_first
from ..train.loop import RunResult, Trainer, run
from .config import RewardConfig
from .losses import bradley_terry
from ..preference.reward_model import RewardScores, load_reward_model, reward_inputs


class RewardTrainer(Trainer):
    """A reward model: ``micro_batches`` yield lists of pair indices."""

    name = "rm"
    lora_task_type = "SEQ_CLS"

    def __init__(self, cfg: RewardConfig, *, model: Any = None, tokenizer: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.pairs = PairLayout(cfg)
        self.parts = [self.pairs]

    def prepare_data(self) -> None:
        self.data: PreparedPairs = prepare_pairs(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                                 main_process_first=main_processes_first(self.acc))

    def load_base_model(self) -> Any:
        return load_reward_model(self.cfg.model, self.pad_token_id)

    def loss_module(self, model: Any) -> torch.nn.Module:
        return RewardScores(model)

    def item_lengths(self) -> list[int]:
        return self.pairs.costs(self.data.train)

    def _pair_loss(self, examples: Sequence[Any], indices: Sequence[int]):
        part = [examples[i] for i in indices]
        batch = self.pairs.collate(part, self.pad_token_id).to(self.acc.device)
        with self.acc.autocast():
            rewards = self.module(**reward_inputs(batch, part, self.pairs.name))
        chosen, rejected = rewards.chunk(2)
        margin = None
        if self.cfg.reward.use_margins and any(e.margin for e in part):
            margin = torch.tensor([e.margin for e in part], device=rewards.device)
        result = bradley_terry(chosen, rejected, margin=margin, center_coefficient=self.cfg.reward.center_coefficient)
        return result, rewards.detach(), batch.tokens

    def step_counts(self, micro: Sequence[list[int]]) -> torch.Tensor:
        return torch.tensor([sum(len(b) for b in micro)], device=self.acc.device)

    def micro_loss(self, indices: list[int], counts: torch.Tensor):
        result, rewards, tokens = self._pair_loss(self.data.train, indices)
        loss = result.losses.sum() / max(1, int(counts[0]))
        return loss, {"loss": loss.detach(), "margin": result.margins.sum(), "correct": (result.margins > 0).float().sum(),
                      "reward": rewards.sum(), "tokens": torch.tensor(float(tokens))}

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        pairs = max(1, int(counts[0]))
        return {"loss": sums["loss"], "margin": sums["margin"] / pairs, "accuracy": sums["correct"] / pairs,
                "mean_reward": sums["reward"] / (2 * pairs), "grad_norm": grad_norm, "pairs": int(counts[0]),
                "tokens": int(sums["tokens"])}

    @torch.no_grad()
    def eval_metrics(self) -> dict:
        """Held-out pairs: mean loss, pair accuracy (chosen scored above rejected) and margin."""
        self.module.eval()
        mine = list(range(len(self.data.eval)))[self.acc.process_index :: self.world]
        total = torch.zeros(4, device=self.acc.device)  # loss, margin, correct, pairs
        size = self.cfg.train.micro_batch_size
        for start in range(0, len(mine), size):
            result, _, _ = self._pair_loss(self.data.eval, mine[start : start + size])
            total += torch.stack([result.losses.sum(), result.margins.sum(), (result.margins > 0).float().sum(),
                                  torch.tensor(float(len(result.margins)), device=self.acc.device)])
        total = self.acc.reduce(total, reduction="sum")
        self.module.train()
        pairs = max(1.0, float(total[3]))
        return {"eval_loss": float(total[0]) / pairs, "eval_margin": float(total[1]) / pairs,
                "eval_accuracy": float(total[2]) / pairs}

    def final_model(self) -> tuple[Any, bool]:
        model = self.acc.unwrap_model(self.module).model
        if self.cfg.lora.enabled:  # merged, so the folder loads in transformers alone
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        return model, False

    def summary(self) -> dict:
        return {"recipe": to_dict(self.cfg), "task": "reward-model", "pair_layout": self.pairs.name, **self.data.summary()}

def run_reward(cfg: RewardConfig, *, model: Any = None, tokenizer: Any = None) -> RunResult:
    """setup → train → save."""
    return run(RewardTrainer(cfg, model=model, tokenizer=tokenizer))
