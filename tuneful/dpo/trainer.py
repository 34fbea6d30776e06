"""The preference-tuning loop (DPO and variants): plain PyTorch + transformers + peft + accelerate.

Entry point :func:`run_dpo` is setup → train → save. Each micro-batch holds whole pairs in one
forward pass: by default one row per pair, the prompt encoded once and both replies continuing it
(``data.collate_shared_prompt``), or two rows per pair where the kernel takes no custom mask. The
loss of an optimizer step is the sum of pair losses over every pair of the step on every process
divided once by their count (and ORPO's NLL by the step's chosen tokens), so accumulation and data
parallelism equal one big batch. Resume, checkpoints, metrics and the output folder are SFT's.
"""

from __future__ import annotations

import copy
import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import to_dict
from ..sft.batching import plan_epoch
from ..sft.checkpoint import save_checkpoint
from ..sft.loop import (MetricsLog, Progress, load_tokenizer, lr_scheduler, make_accelerator, make_optimizer,
                        pad_id, resume_step, step_counts)
from ..sft.model import apply_lora, load_model
from ..sft.config import ModelSettings
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


def resolve_pair_layout(cfg: DPOConfig) -> str:
    if cfg.train.pair_layout != "auto":
        return cfg.train.pair_layout
    return "two-rows" if cfg.model.attn_implementation.startswith("flash") else "shared-prompt"


def pair_cost(example: PreferenceExample, layout: str) -> int:
    """Positions a pair occupies in a batch of ``layout`` (what length-grouping should balance)."""
    if layout == "shared-prompt":
        return len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)
    return pair_length(example)


def resolve_reference(cfg: DPOConfig) -> str:
    if cfg.dpo.reference != "auto":
        return cfg.dpo.reference
    if not OBJECTIVES[cfg.dpo.loss].needs_reference:
        return "none"
    return "adapters-off" if cfg.lora.enabled and not cfg.dpo.reference_model else "precomputed"


class DPOTrainer:
    def __init__(self, cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None):
        self.cfg = cfg
        self._model_in, self._tokenizer_in, self._reference_in = model, tokenizer, reference_model
        self.out = Path(cfg.train.output_dir)
        self.objective = OBJECTIVES[cfg.dpo.loss]
        self.reference_kind = resolve_reference(cfg)
        self.layout = resolve_pair_layout(cfg)
        self.collate = COLLATORS[self.layout]

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> "DPOTrainer":
        cfg = self.cfg
        self.acc = make_accelerator(cfg.model.dtype, cfg.train.seed, cfg.train.threads)
        self.tokenizer = self._tokenizer_in or load_tokenizer(cfg.data.tokenizer, cfg.model)
        self.data: PreparedPairs = prepare_pairs(cfg.data, self.tokenizer, cfg.train.seed)
        model = self._model_in if self._model_in is not None else load_model(cfg.model, quantize_4bit=cfg.lora.qlora)

        self.reference: Any = None
        self.reference_cached, self.precompute_seconds = False, 0.0
        if self.reference_kind == "precomputed":  # from the starting weights, before LoRA and before any resume
            self.reference = self._precompute(model)
        elif self.reference_kind == "frozen":
            ref_model = self._reference_model() or copy.deepcopy(model)
            ref_model.requires_grad_(False)
            ref_module = ResponseLogps(ref_model, cfg.train.loss_chunk_size).to(self.acc.device)
            self.reference = ModelReference(ref_module, adapters_off=False, autocast=self.acc.autocast)

        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        self.model = model
        self.logps_module = ResponseLogps(model, cfg.train.loss_chunk_size)
        optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)

        self.world = self.acc.num_processes
        self.lengths = [pair_cost(e, self.layout) for e in self.data.train]
        self.steps_per_epoch, self.total_steps = step_counts(len(self.data.train), cfg.train, self.world)
        scheduler = lr_scheduler(optimizer, warmup_ratio=cfg.train.warmup_ratio, total=self.total_steps,
                                 kind=cfg.train.schedule)
        self.logps_module, self.optimizer = self.acc.prepare(self.logps_module, optimizer)
        self.scheduler = scheduler
        if self.reference_kind == "adapters-off":
            self.reference = ModelReference(self.acc.unwrap_model(self.logps_module), adapters_off=True,
                                            autocast=self.acc.autocast)
        self._plan: tuple[int, list[list[int]]] | None = None
        self.start_step = resume_step(self.acc, self.out, cfg.train.resume, self.model, self.optimizer, self.scheduler)
        return self

    def _reference_model(self) -> Any:
        if self._reference_in is not None:
            return self._reference_in
        if not self.cfg.dpo.reference_model:
            return None
        settings = ModelSettings(name_or_path=self.cfg.dpo.reference_model, dtype=self.cfg.model.dtype,
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
        size = self.cfg.dpo.precompute_batch_size or 2 * self.cfg.train.micro_batch_size

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

    def _pad_id(self) -> int:
        return pad_id(self.tokenizer)

    # --- batches ----------------------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[list[int]]:
        """This process's micro-batches (pair indices) for optimizer step ``step``: a pure function of it."""
        cfg = self.cfg.train
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, plan_epoch(self.lengths, cfg.micro_batch_size, cfg.seed, epoch, False))
        per_step = cfg.grad_accum * self.world
        chosen = self._plan[1][within * per_step : (within + 1) * per_step]
        return chosen[self.acc.process_index :: self.world]

    def _terms(self, split: str, examples: Sequence[PreferenceExample], indices: Sequence[int]) -> tuple[PairTerms, int]:
        batch = self.collate([examples[i] for i in indices], self._pad_id()).to(self.acc.device)
        ref = self.reference(split, indices, batch) if self.reference is not None else None
        with self.acc.autocast():
            sums, counts = self.logps_module(**batch.inputs())
        return pair_terms(self.objective, self.cfg.dpo, sums.float(), counts, ref), batch.tokens

    # --- loop ---------------------------------------------------------------------------------
    def train(self) -> DPOResult:
        cfg = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.out / "metrics.jsonl", self.start_step, enabled=self.acc.is_main_process)
        bar = Progress(self.total_steps, self.start_step, enabled=cfg.progress and self.acc.is_main_process, desc="dpo")
        self.logps_module.train()
        last_loss, eval_metrics, train_seconds = None, None, 0.0
        for step in range(self.start_step, self.total_steps):
            started = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            row = self._optimizer_step(self.micro_batches(step))
            seconds = time.perf_counter() - started
            train_seconds += seconds
            last_loss = row["loss"]
            row = {"step": step + 1, **row, "lr": lr, "tok_s": row["tokens"] / seconds}
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
                log.write(row)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and self.data.eval:
                eval_metrics = self.evaluate()
                log.write({"step": step + 1, **eval_metrics})
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.total_steps:
                self.acc.wait_for_everyone()
                if self.acc.is_main_process:
                    save_checkpoint(self.out / "checkpoints", step + 1, self.model, self.optimizer, self.scheduler)
            bar.update(row["loss"], row["tok_s"])
        bar.close()
        if self.data.eval and (not cfg.eval_every or self.total_steps % cfg.eval_every):
            eval_metrics = self.evaluate()
            log.write({"step": self.total_steps, **eval_metrics})
        return DPOResult(self.total_steps, last_loss, eval_metrics, self.out, self.reference_kind,
                         self.reference_cached, self.precompute_seconds, train_seconds, history=log.rows)

    def _step_counts(self, micro: list[list[int]]) -> tuple[int, int]:
        pairs = sum(len(b) for b in micro)
        chosen_tokens = sum(sum(self.data.train[i].chosen_mask) for b in micro for i in b)
        counts = self.acc.reduce(torch.tensor([pairs, chosen_tokens], device=self.acc.device), reduction="sum")
        return int(counts[0]), int(counts[1])

    def _optimizer_step(self, micro: list[list[int]]) -> dict:
        step_pairs, step_chosen_tokens = self._step_counts(micro)
        tally = torch.zeros(5, device=self.acc.device)  # loss, reward chosen, reward rejected, correct, tokens
        for k, indices in enumerate(micro):
            sync = k == len(micro) - 1
            with self.acc.no_sync(self.logps_module) if not sync else nullcontext():
                terms, tokens = self._terms("train", self.data.train, indices)
                # DDP averages gradients over processes; scaling by world size turns that into a sum.
                loss = terms.pair_loss_sum / max(1, step_pairs) + terms.chosen_nll_sum / max(1, step_chosen_tokens)
                self.acc.backward(loss * self.world)
            tally += torch.stack([loss.detach().float(), terms.rewards_chosen.sum(),
                                  terms.rewards_rejected.sum(),
                                  (terms.rewards_chosen > terms.rewards_rejected).float().sum(),
                                  torch.tensor(float(tokens), device=self.acc.device)])
        grad_norm = 0.0
        if self.cfg.train.max_grad_norm > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = self.acc.reduce(tally, reduction="sum")
        pairs = max(1, step_pairs)
        return {"loss": float(total[0]), "rewards_chosen": float(total[1]) / pairs,
                "rewards_rejected": float(total[2]) / pairs, "margin": float(total[1] - total[2]) / pairs,
                "accuracy": float(total[3]) / pairs, "grad_norm": grad_norm, "pairs": step_pairs,
                "tokens": int(total[4])}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out pairs: mean loss, reward accuracy and margin (this process's share, reduced)."""
        examples = self.data.eval
        self.logps_module.eval()
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
        self.logps_module.train()
        pairs = float(total[4].clamp(min=1))
        return {"eval_loss": float(total[0]) / pairs + float(total[1]) / max(1.0, float(tokens)),
                "eval_margin": float(total[2]) / pairs, "eval_accuracy": float(total[3]) / pairs}

    # --- output -------------------------------------------------------------------------------
    def save(self, result: DPOResult) -> Path:
        from ..sft.output import save_final

        self.acc.wait_for_everyone()
        target = self.out / "model"
        if self.acc.is_main_process:
            summary = {"recipe": to_dict(self.cfg), "reference": self.reference_kind, "pair_layout": self.layout,
                       **self.data.summary()}
            save_final(target, self.acc.unwrap_model(self.logps_module).model, self.tokenizer,
                       template_source=self.data.template.source, end_of_turn_ids=self.data.end_of_turn_ids,
                       summary=summary, history=result.history, lora=self.cfg.lora.enabled)
        self.acc.wait_for_everyone()
        result.model_dir = target
        return target


def run_dpo(cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None) -> DPOResult:
    """setup → train → save."""
    trainer = DPOTrainer(cfg, model=model, tokenizer=tokenizer, reference_model=reference_model).setup()
    try:
        result = trainer.train()
        trainer.save(result)
    finally:
        trainer.acc.end_training()
    return result
