"""The SFT loop: plain PyTorch + transformers + peft + accelerate, no Trainer subclass.

Entry point :func:`run_sft` is setup → train → save. One optimizer step takes ``grad_accum``
micro-batches on each process; the loss of the step is the sum of NLL over every trained token of
the step on every process, divided once by their total count, so accumulation and data parallelism
give the same gradient as one big batch.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from .batching import Example, collate_packed, collate_padded, plan_epoch, plan_rows
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import SFTConfig
from .data import PreparedData, prepare_data
from .model import SelectedTokenLoss, apply_lora, compute_dtype, load_model, unwrap_causal_lm


def schedule_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine/linear decay to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases and norm weights
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


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
        from accelerate import Accelerator

        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        dtype = compute_dtype(cfg.model.dtype, device)
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
        self.acc = Accelerator(cpu=not cuda, mixed_precision=precision)
        torch.manual_seed(cfg.train.seed)

        self.tokenizer = self._tokenizer_in or self._load_tokenizer()
        self.data: PreparedData = prepare_data(cfg.data, self.tokenizer, cfg.train.seed)
        if not self.data.train:
            raise ValueError(f"data.train={cfg.data.train}: no usable training examples after preflight")
        model = self._model_in if self._model_in is not None else load_model(cfg.model, quantize_4bit=cfg.lora.qlora)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        self.model = model
        self.loss_module = SelectedTokenLoss(model, cfg.train.loss_chunk_size)
        optimizer = _optimizer(model, cfg.train.lr, cfg.train.weight_decay)

        self.world = self.acc.num_processes
        self.rows = plan_rows(self.data.train, packing=cfg.data.packing, max_length=cfg.data.max_length)
        self.row_lengths = [sum(len(self.data.train[i]) for i in row) for row in self.rows]
        self._plan: tuple[int, list[list[int]]] | None = None
        batches = math.ceil(len(self.rows) / cfg.train.micro_batch_size)
        self.steps_per_epoch = max(1, batches // (cfg.train.grad_accum * self.world))
        self.total_steps = cfg.train.max_steps or max(1, int(cfg.train.epochs * self.steps_per_epoch))
        warmup = int(cfg.train.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, warmup=warmup, total=self.total_steps, kind=cfg.train.schedule))
        self.loss_module, self.optimizer = self.acc.prepare(self.loss_module, optimizer)
        self.scheduler = scheduler
        self.start_step = 0
        ckpt = latest_checkpoint(self.out / "checkpoints") if cfg.train.resume else None
        if ckpt is not None:
            self.start_step = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
            self.acc.print(f"resumed from {ckpt} at step {self.start_step}")
        return self

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self.cfg.data.tokenizer or self.cfg.model.name_or_path
        return AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=self.cfg.model.trust_remote_code)

    # --- batches ----------------------------------------------------------------------------------
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id or 0

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
        bar = _progress(self.total_steps, self.start_step, enabled=cfg.progress and self.acc.is_main_process)
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
        from .output import save_final

        self.acc.wait_for_everyone()
        target = self.out / "model"
        if self.acc.is_main_process:
            save_final(target, self.acc.unwrap_model(self.loss_module).model, self.tokenizer, self.data,
                       to_dict(self.cfg), result.history, lora=self.cfg.lora.enabled)
        self.acc.wait_for_everyone()  # no process finishes while the main one is still writing
        result.model_dir = target
        return target


class MetricsLog:
    """JSONL metrics (and TensorBoard when installed). On resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled, self.rows = path, enabled, []
        if not enabled:
            return
        if path.exists():
            self.rows = [r for r in _read_metrics(path) if r["step"] <= start_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb = _tensorboard(path.parent)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])


def _read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics log. A kill during an append can leave the last line cut short; that row
    belongs to a step after the checkpoint being resumed, so it is dropped. Any other bad line raises."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: corrupt metrics line (not the last one)") from None
    return rows


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder / "tensorboard"))
    except ImportError:
        return None


class _progress:
    """tqdm bar with loss and tok/s (ETA from tqdm); silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="sft", unit="step", dynamic_ncols=True)

    def update(self, loss: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
