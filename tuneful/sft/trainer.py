"""The SFT loop: plain PyTorch + transformers + peft + accelerate, no Trainer subclass.

Entry point :func:`run_sft` is setup → train → save. One optimizer step takes ``grad_accum``
micro-batches on each process; the loss of the step is the sum of NLL over every trained token of
the step on every process, divided once by their total count, so accumulation and data parallelism
give the same gradient as one big batch.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from .batching import Example, collate_packed, collate_padded, plan_epoch, plan_rows
from .checkpoint import save_checkpoint
from .config import SFTConfig
from .data import PreparedData, prepare_data
from .loop import (MetricsLog, Progress, load_tokenizer, lr_scheduler, make_accelerator, make_optimizer, pad_id,
                   resume_step, step_counts)
from .model import SelectedTokenLoss, apply_lora, load_model, unwrap_causal_lm


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    eval_loss: float | None
    output_dir: Path
    model_dir: Path | None = None
    history: list[dict] = field(default_factory=list)


class SFTTrainer:
    """Holds the state of one run. ``model``/``tokenizer`` may be passed in (tests, notebooks)."""

    def __init__(self, cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg
        self._model_in, self._tokenizer_in = model, tokenizer
        self.out = Path(cfg.train.output_dir)

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> "SFTTrainer":
        cfg = self.cfg
        self.acc = make_accelerator(cfg.model.dtype, cfg.train.seed, cfg.train.threads)

        self.tokenizer = self._tokenizer_in or load_tokenizer(cfg.data.tokenizer, cfg.model)
        self.data: PreparedData = prepare_data(cfg.data, self.tokenizer, cfg.train.seed)
        if not self.data.train:
            raise ValueError(f"data.train={cfg.data.train}: no usable training examples after preflight")
        model = self._model_in if self._model_in is not None else load_model(cfg.model, quantize_4bit=cfg.lora.qlora)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        self.model = model
        self.loss_module = SelectedTokenLoss(model, cfg.train.loss_chunk_size)
        optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)

        self.world = self.acc.num_processes
        self.rows = plan_rows(self.data.train, packing=cfg.data.packing, max_length=cfg.data.max_length)
        self.row_lengths = [sum(len(self.data.train[i]) for i in row) for row in self.rows]
        self._plan: tuple[int, list[list[int]]] | None = None
        self.steps_per_epoch, self.total_steps = step_counts(len(self.rows), cfg.train, self.world)
        scheduler = lr_scheduler(optimizer, warmup_ratio=cfg.train.warmup_ratio, total=self.total_steps,
                                 kind=cfg.train.schedule)
        self.loss_module, self.optimizer = self.acc.prepare(self.loss_module, optimizer)
        self.scheduler = scheduler
        self.start_step = resume_step(self.acc, self.out, cfg.train.resume, self.model, self.optimizer, self.scheduler)
        return self

    # --- batches ----------------------------------------------------------------------------------
    def _pad_id(self) -> int:
        return pad_id(self.tokenizer)

    def _collate(self, row_ids: list[int]) -> dict[str, torch.Tensor]:
        rows = [[self.data.train[i] for i in self.rows[r]] for r in row_ids]
        if self.cfg.data.packing:
            flash = str(getattr(unwrap_causal_lm(self.model).config, "_attn_implementation", "")).startswith("flash")
            return collate_packed(rows, self._pad_id(), block_mask=not flash)
        return collate_padded([row[0] for row in rows], self._pad_id())

    def micro_batches(self, step: int) -> list[tuple[dict[str, torch.Tensor], int]]:
        """This process's (batch, real-token count) pairs for optimizer step ``step``: a pure function of it."""
        cfg = self.cfg.train
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._plan is None or self._plan[0] != epoch:  # the plan depends on the epoch only
            self._plan = (epoch, plan_epoch(self.row_lengths, cfg.micro_batch_size, cfg.seed, epoch,
                                            self.cfg.data.packing))
        plan = self._plan[1]
        per_step = cfg.grad_accum * self.world
        chosen = plan[within * per_step : (within + 1) * per_step]
        mine = chosen[self.acc.process_index :: self.world]
        return [(self._collate(b), sum(self.row_lengths[r] for r in b)) for b in mine]

    # --- loop ---------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.out / "metrics.jsonl", self.start_step, enabled=self.acc.is_main_process)
        bar = Progress(self.total_steps, self.start_step, enabled=cfg.progress and self.acc.is_main_process)
        self.loss_module.train()
        last_loss, eval_loss = None, None
        for step in range(self.start_step, self.total_steps):
            started = time.perf_counter()
            batches = self.micro_batches(step)
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
            loss, trained, tokens, grad_norm = self._optimizer_step(batches)
            seconds = time.perf_counter() - started
            last_loss = loss
            row = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "trained_tokens": trained, "tokens": tokens, "tok_s": tokens / seconds,
                   "trained_tok_s": trained / seconds}
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
                log.write(row)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and self.data.eval:
                eval_loss = self.evaluate()
                log.write({"step": step + 1, "eval_loss": eval_loss})
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.total_steps:
                self.acc.wait_for_everyone()
                if self.acc.is_main_process:
                    save_checkpoint(self.out / "checkpoints", step + 1, self.model, self.optimizer, self.scheduler)
            bar.update(loss, row["tok_s"])
        bar.close()
        if self.data.eval and (not cfg.eval_every or self.total_steps % cfg.eval_every):
            eval_loss = self.evaluate()
            log.write({"step": self.total_steps, "eval_loss": eval_loss})
        return TrainResult(self.total_steps, last_loss, eval_loss, self.out, history=log.rows)

    def _optimizer_step(self, micro: list[tuple[dict[str, torch.Tensor], int]]) -> tuple[float, int, int, float]:
        device = self.acc.device
        batches = [b for b, _ in micro]
        local_trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        local_tokens = sum(n for _, n in micro)
        counts = self.acc.reduce(torch.tensor([local_trained, local_tokens], device=device), reduction="sum")
        step_trained, step_tokens = int(counts[0]), int(counts[1])
        # DDP averages gradients over processes; scaling by world size turns that into a sum.
        scale = self.world / max(1, step_trained)
        loss_sum = torch.zeros((), device=device)
        for k, batch in enumerate(batches):
            batch = {name: t.to(device) for name, t in batch.items()}
            sync = k == len(batches) - 1
            with self.acc.no_sync(self.loss_module) if not sync else nullcontext():
                with self.acc.autocast():
                    total, _ = self.loss_module(**batch)
                self.acc.backward(total * scale)
            loss_sum += total.detach().float()
        grad_norm = 0.0
        if self.cfg.train.max_grad_norm > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_global = float(self.acc.reduce(loss_sum, reduction="sum")) / max(1, step_trained)
        return loss_global, step_trained, step_tokens, grad_norm

    @torch.no_grad()
    def evaluate(self, examples: list[Example] | None = None) -> float:
        """Token-weighted mean NLL of the held-out examples (padded batches, this process's share)."""
        examples = self.data.eval if examples is None else examples
        self.loss_module.eval()
        mine = examples[self.acc.process_index :: self.world]
        size = self.cfg.train.micro_batch_size
        total = torch.zeros(2, device=self.acc.device)
        for start in range(0, len(mine), size):
            batch = collate_padded(mine[start : start + size], self._pad_id())
            with self.acc.autocast():
                loss, count = self.loss_module(**{k: v.to(self.acc.device) for k, v in batch.items()})
            total += torch.stack([loss.float(), count.float()])
        total = self.acc.reduce(total, reduction="sum")
        self.loss_module.train()
        return float(total[0] / total[1].clamp(min=1))

    # --- output -------------------------------------------------------------------------------
    def save(self, result: TrainResult) -> Path:
        from .output import save_final, sft_summary

        self.acc.wait_for_everyone()
        target = self.out / "model"
        if self.acc.is_main_process:
            save_final(target, self.acc.unwrap_model(self.loss_module).model, self.tokenizer,
                       template_source=self.data.template.source, end_of_turn_ids=self.data.end_of_turn_ids,
                       summary=sft_summary(self.data, to_dict(self.cfg)), history=result.history,
                       lora=self.cfg.lora.enabled)
        self.acc.wait_for_everyone()  # no process finishes while the main one is still writing
        result.model_dir = target
        return target


def run_sft(cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None) -> TrainResult:
    """setup → train → save."""
    trainer = SFTTrainer(cfg, model=model, tokenizer=tokenizer).setup()
    try:
        result = trainer.train()
        trainer.save(result)
    finally:
        # Exiting with a live gloo/NCCL process group can abort a process at interpreter shutdown
        # ("terminate called without an active exception") after a successful run.
        trainer.acc.end_training()
    return result
