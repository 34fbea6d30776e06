"""The preference-tuning loop (DPO and variants): plain PyTorch + transformers + peft + accelerate.

Entry point :func:`run_dpo` is setup → train → save. Each micro-batch holds whole pairs in one
forward pass: by default one row per pair, the prompt encoded once and both replies continuing it
(``tuneful.preference.pairs.collate_shared_prompt``), or two rows per pair where the kernel takes no custom mask. The
loss of an optimizer step is the sum of pair losses over every pair of the step on every process
divided once by their count (and ORPO's NLL by the step's chosen tokens), so accumulation and data
parallelism equal one big batch. The loop, resume, checkpoints, metrics and the output folder are
the shared core's (:mod:`tuneful.train.loop`), the reference :mod:`tuneful.preference.policy`'s; this module
is the data, the loss and the metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import to_dict
from ..preference.pairs import PreferenceExample
from ..preference.policy import PairedPolicy
from ..preference.prepare import PreparedPairs, prepare_pairs
from ..tokenization.prepared import main_processes_first
from ..train.loop import RunResult, Trainer, run
from .config import DPOConfig
from .losses import OBJECTIVES, PairTerms, pair_terms


class DPOTrainer(Trainer):
    """Preference tuning: ``micro_batches`` yield lists of pair indices. The policy, its reference and the pair
    layout are :class:`tuneful.preference.policy.PairedPolicy`'s; ``self.settings`` is the objective section."""

    name = "dpo"

    def __init__(self, cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.settings = cfg.dpo
        self.policy = PairedPolicy(cfg, self.settings, needs_reference=self.objective.needs_reference,
                                   reference_model=reference_model)
        self.parts = [self.policy]

    @property
    def objective(self) -> Any:
        return OBJECTIVES[self.settings.loss]

    # --- data and reference ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.data: PreparedPairs = prepare_pairs(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                                 main_process_first=main_processes_first(self.acc))

    def loss_module(self, model: Any) -> torch.nn.Module:
        return self.policy.loss_module(model)

    # --- batches, loss and metrics ----------------------------------------------------------------
    def item_lengths(self) -> list[int]:
        return self.policy.item_lengths(self.data.train)

    def _terms(self, split: str, examples: Sequence[PreferenceExample], indices: Sequence[int]) -> tuple[PairTerms, int]:
        sums, counts, ref, tokens = self.policy.response_logps(self, split, examples, indices)
        return pair_terms(self.objective, self.settings, sums, counts, ref), tokens

    def step_counts(self, micro: Sequence[list[int]]) -> torch.Tensor:
        pairs = sum(len(b) for b in micro)
        chosen_tokens = sum(sum(self.data.train[i].chosen_mask) for b in micro for i in b)
        return torch.tensor([pairs, chosen_tokens], device=self.acc.device)

    def micro_loss(self, indices: list[int], counts: torch.Tensor):
        step_pairs, step_chosen_tokens = int(counts[0]), int(counts[1])
        terms, tokens = self._terms("train", self.data.train, indices)
        loss = terms.pair_loss_sum / max(1, step_pairs) + terms.chosen_nll_sum / max(1, step_chosen_tokens)
        return loss, {"loss": loss.detach(), "rewards_chosen": terms.rewards_chosen.sum(),
                      "rewards_rejected": terms.rewards_rejected.sum(),
                      "correct": (terms.rewards_chosen > terms.rewards_rejected).float().sum(),
                      "tokens": torch.tensor(float(tokens))}

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        step_pairs = int(counts[0])
        pairs = max(1, step_pairs)
        return {"loss": sums["loss"], "rewards_chosen": sums["rewards_chosen"] / pairs,
                "rewards_rejected": sums["rewards_rejected"] / pairs,
                "margin": (sums["rewards_chosen"] - sums["rewards_rejected"]) / pairs,
                "accuracy": sums["correct"] / pairs, "grad_norm": grad_norm, "pairs": step_pairs,
                "tokens": int(sums["tokens"])}

    def eval_metrics(self) -> dict:
        return self.evaluate()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out pairs: mean loss, reward accuracy and margin (this process's share, reduced)."""
        examples = self.data.eval
        self.module.eval()
        mine = list(range(len(examples)))[self.acc.process_index :: self.world]
        chosen_tokens = sum(sum(examples[i].chosen_mask) for i in mine)
        total = torch.zeros(5, device=self.acc.device)  # pair loss, chosen nll, margin, correct, pairs
        size = self.cfg.train.micro_batch_size
        for start in range(0, len(mine), size):
            terms, _ = self._terms("eval", examples, mine[start : start + size])
            margin = terms.rewards_chosen - terms.rewards_rejected
            total += torch.stack([terms.pair_loss_sum.float(), terms.chosen_nll_sum.float(), margin.sum(),
                                  (margin > 0).float().sum(), torch.tensor(float(len(margin)), device=margin.device)])
        tokens = self.acc.reduce(torch.tensor(float(chosen_tokens), device=self.acc.device), reduction="sum")
        total = self.acc.reduce(total, reduction="sum")
        self.module.train()
        pairs = float(total[4].clamp(min=1))
        return {"eval_loss": float(total[0]) / pairs + float(total[1]) / max(1.0, float(tokens)),
                "eval_margin": float(total[2]) / pairs, "eval_accuracy": float(total[3]) / pairs}

    # --- output ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {"recipe": to_dict(self.cfg), "reference": self.policy.kind, "pair_layout": self.policy.layout,
                **self.data.summary()}

    def result_details(self) -> dict:
        return self.policy.details()


def run_dpo(cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None) -> RunResult:
    """setup → train → save."""
    return run(DPOTrainer(cfg, model=model, tokenizer=tokenizer, reference_model=reference_model))
