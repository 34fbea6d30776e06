"""The preference-tuning loop (DPO and variants): plain PyTorch + transformers + peft + accelerate.

Entry point :func:`run_dpo` is setup → train → save. Each micro-batch holds whole pairs in one
forward pass: by default one row per pair, the prompt encoded once and both replies continuing it
(``data.collate_shared_prompt``), or two rows per pair where the kernel takes no custom mask. The
loss of an optimizer step is the sum of pair losses over every pair of the step on every process
divided once by their count (and ORPO's NLL by the step's chosen tokens), so accumulation and data
parallelism equal one big batch. The loop, resume, checkpoints, metrics and the output folder are
the shared core's (:mod:`tuneful.train.loop`); this module is the data, the reference and the loss.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import to_dict
from ..train.config import ModelSettings
from ..train.prepared import main_processes_first
from ..train.loop import Trainer, run
from ..models.head import probe_head
from ..models.layouts import LayoutSupport, probe_layouts
from ..train.model import load_model
from .config import DPOConfig
from .data import COLLATORS, PreferenceExample
from .objective import OBJECTIVES, PairTerms, pair_terms
from .prepare import PreparedPairs, pair_length, prepare_pairs
from .reference import (ModelReference, PrecomputedReference, ResponseLogps, cached_reference, model_fingerprint,
                        pairs_fingerprint, reference_logps)


@dataclass
class DPOResult:
    steps: int
    final_loss: float | None
    eval_metrics: dict | None
    output_dir: Path
    reference: str
    reference_cached: bool = False
    precompute_seconds: float = 0.0
    train_seconds: float = 0.0
    model_dir: Path | None = None
    history: list[dict] = field(default_factory=list)


def resolve_pair_layout(cfg: DPOConfig, support: LayoutSupport | None = None, *, aux_loss: bool = False) -> str:
    """``train.pair_layout``, with ``auto`` resolved for the model: shared-prompt where one row keeps the two replies
    apart in it (:mod:`tuneful.models.layouts`), else two-rows. An explicit shared-prompt the model cannot keep is
    refused by name."""
    problem = support.shared_prompt_problem(cfg.data.max_length, aux_loss=aux_loss) if support is not None else None
    if cfg.train.pair_layout == "shared-prompt" and problem:
        raise ValueError(f"train.pair_layout=shared-prompt: wrong for this model: {problem}. Fix: "
                         "train.pair_layout=two-rows (or auto, which picks it)")
    if cfg.train.pair_layout != "auto":
        return cfg.train.pair_layout
    if cfg.model.attn_implementation.startswith("flash") or problem:
        return "two-rows"
    return "shared-prompt"


def pair_cost(example: PreferenceExample, layout: str) -> int:
    """Positions a pair occupies in a batch of ``layout`` (what length-grouping should balance)."""
    if layout == "shared-prompt":
        return len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)
    return pair_length(example)


def resolve_reference(settings: Any, *, needs_reference: bool, lora: bool) -> str:
    """The reference policy a run uses: ``settings`` is the objective section (reference, reference_model)."""
    if settings.reference != "auto":
        return settings.reference
    if not needs_reference:
        return "none"
    return "adapters-off" if lora and not settings.reference_model else "precomputed"


class DPOTrainer(Trainer):
    """Preference tuning: ``micro_batches`` yield lists of pair indices.

    The reference policy and the pair batches are shared with trainers whose items have the same shape
    (KTO: a reply and a mismatched reply after one prompt); ``self.settings`` is the objective section.
    """

    name = "dpo"

    def __init__(self, cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self._reference_in = reference_model
        self.settings = self.objective_settings()
        self.reference_kind = resolve_reference(self.settings, needs_reference=self.needs_reference(),
                                                lora=cfg.lora.enabled)
        self.layout = resolve_pair_layout(cfg)
        self.collate = COLLATORS[self.layout]
        self.reference: Any = None
        self.reference_cached, self.precompute_seconds = False, 0.0

    def objective_settings(self) -> Any:
        """The config section with the loss and reference settings."""
        return self.cfg.dpo

    @property
    def objective(self) -> Any:
        return OBJECTIVES[self.settings.loss]

    def needs_reference(self) -> bool:
        return self.objective.needs_reference

    # --- data and reference ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.data: PreparedPairs = prepare_pairs(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                                 main_process_first=main_processes_first(self.acc))

    def fit_model(self, model: Any) -> None:
        self.head = probe_head(model)
        self.layout = resolve_pair_layout(self.cfg, probe_layouts(model), aux_loss=self.head.aux_coefficient is not None)
        self.collate = COLLATORS[self.layout]

    def before_lora(self, model: Any) -> None:
        if self.reference_kind == "precomputed":  # from the starting weights, before LoRA and before any resume
            self.reference = self._precompute(model)
        elif self.reference_kind == "frozen":
            ref_model = self._reference_model() or copy.deepcopy(model)
            ref_model.requires_grad_(False)
            ref_module = ResponseLogps(ref_model, self.cfg.train.loss_chunk_size).to(self.acc.device)
            self.reference = ModelReference(ref_module, adapters_off=False, autocast=self.acc.autocast)

    def loss_module(self, model: Any) -> torch.nn.Module:
        return ResponseLogps(model, self.cfg.train.loss_chunk_size, head=self.head)

    def after_prepare(self) -> None:
        if self.reference_kind == "adapters-off":
            self.reference = ModelReference(self.acc.unwrap_model(self.module), adapters_off=True,
                                            autocast=self.acc.autocast)

    def _reference_model(self) -> Any:
        if self._reference_in is not None:
            return self._reference_in
        if not self.settings.reference_model:
            return None
        settings = ModelSettings(name_or_path=self.settings.reference_model, dtype=self.cfg.model.dtype,
                                 trust_remote_code=self.cfg.model.trust_remote_code,
                                 attn_implementation=self.cfg.model.attn_implementation)
        return load_model(settings)

    def _precompute(self, policy: Any) -> PrecomputedReference:
        """Reference log-probs of every train and eval pair: read from the cache, or one pass and written to it."""
        started = time.perf_counter()
        ref_model = self._reference_model() or policy
        module = ResponseLogps(ref_model, self.cfg.train.loss_chunk_size).to(self.acc.device)
        splits = {"train": self.data.train, "eval": self.data.eval}
        identity = model_fingerprint(ref_model) + "".join(pairs_fingerprint(v) for v in splits.values())
        key = hashlib.sha256(identity.encode()).hexdigest()
        size = self.settings.precompute_batch_size or 2 * self.cfg.train.micro_batch_size

        def compute() -> dict[str, torch.Tensor]:
            out = {}
            for split, examples in splits.items():
                out[f"{split}.chosen"], out[f"{split}.rejected"] = reference_logps(
                    module, examples, batch_size=size, pad_id=self._pad_id(), device=self.acc.device,
                    layout=self.layout, autocast=self.acc.autocast)
            return out

        tensors, self.reference_cached = cached_reference(self.out / "reference_logps", key, compute,
                                                          barrier=self.acc.wait_for_everyone,
                                                          is_main=self.acc.is_main_process)
        self.precompute_seconds = time.perf_counter() - started
        return PrecomputedReference(tensors)

    # --- batches, loss and metrics ----------------------------------------------------------------
    def item_lengths(self) -> list[int]:
        return [pair_cost(e, self.layout) for e in self.data.train]

    def micro_batch(self, items: list[int]) -> list[int]:
        return items

    def response_logps(self, split: str, examples: Sequence[PreferenceExample],
                       indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Policy log-prob sums and token counts of both replies of ``indices`` (first replies, then second
        replies: [2B]), the reference's sums (None without a reference), and the tokens the batch stands for."""
        batch = self.collate([examples[i] for i in indices], self._pad_id()).to(self.acc.device)
        ref = self.reference(split, indices, batch) if self.reference is not None else None
        with self.acc.autocast():
            sums, counts = self.module(**batch.inputs())
        return sums.float(), counts, ref, batch.tokens

    def _terms(self, split: str, examples: Sequence[PreferenceExample], indices: Sequence[int]) -> tuple[PairTerms, int]:
        sums, counts, ref, tokens = self.response_logps(split, examples, indices)
        return pair_terms(self.objective, self.settings, sums, counts, ref), tokens

    def step_counts(self, micro: Sequence[list[int]]) -> torch.Tensor:
        pairs = sum(len(b) for b in micro)
        chosen_tokens = sum(sum(self.data.train[i].chosen_mask) for b in micro for i in b)
        return torch.tensor([pairs, chosen_tokens], device=self.acc.device)

    def micro_loss(self, indices: list[int], counts: torch.Tensor):
        step_pairs, step_chosen_tokens = int(counts[0]), int(counts[1])
        terms, tokens = self._terms("train", self.data.train, indices)
        loss = terms.pair_loss_sum / max(1, step_pairs) + terms.chosen_nll_sum / max(1, step_chosen_tokens)
        tally = torch.stack([loss.detach().float(), terms.rewards_chosen.sum(), terms.rewards_rejected.sum(),
                             (terms.rewards_chosen > terms.rewards_rejected).float().sum(),
                             torch.tensor(float(tokens), device=self.acc.device)])
        # DDP averages gradients over processes; scaling by world size turns that into a sum.
        return loss * self.world, tally

    def step_metrics(self, tally: torch.Tensor, counts: torch.Tensor, grad_norm: float) -> dict:
        step_pairs = int(counts[0])
        pairs = max(1, step_pairs)
        return {"loss": float(tally[0]), "rewards_chosen": float(tally[1]) / pairs,
                "rewards_rejected": float(tally[2]) / pairs, "margin": float(tally[1] - tally[2]) / pairs,
                "accuracy": float(tally[3]) / pairs, "grad_norm": grad_norm, "pairs": step_pairs,
                "tokens": int(tally[4])}

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
        return {"recipe": to_dict(self.cfg), "reference": self.reference_kind, "pair_layout": self.layout,
                **self.data.summary()}

    def result(self, steps, last_loss, eval_metrics, history, train_seconds) -> DPOResult:
        return DPOResult(steps, last_loss, eval_metrics, self.out, self.reference_kind, self.reference_cached,
                         self.precompute_seconds, train_seconds, history=history)


def run_dpo(cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None) -> DPOResult:
    """setup → train → save."""
    return run(DPOTrainer(cfg, model=model, tokenizer=tokenizer, reference_model=reference_model))
