"""Pieces every training loop shares (SFT, DPO): accelerator, optimizer, schedule, metrics log, progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .model import compute_dtype


def make_accelerator(dtype_setting: str, seed: int, threads: int = 0) -> Any:
    """An Accelerator with mixed precision matching ``model.dtype`` (fp32 on CPU by default); seeds torch
    and, when ``threads`` > 0, sets torch's CPU thread count."""
    from accelerate import Accelerator

    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    dtype = compute_dtype(dtype_setting, torch.device("cuda" if cuda else "cpu"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    acc = Accelerator(cpu=not cuda, mixed_precision=precision)
    torch.manual_seed(seed)
    return acc


def load_tokenizer(tokenizer_setting: str, model_setting: Any) -> Any:
    """The run's tokenizer: ``data.tokenizer`` when set, else the model's (fast, remote code only if allowed)."""
    from transformers import AutoTokenizer

    source = tokenizer_setting or model_setting.name_or_path
    return AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=model_setting.trust_remote_code)


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id or 0


def resume_step(acc: Any, out: Path, resume: bool, model: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore the latest checkpoint under ``out/checkpoints`` (when resuming); the step to continue from."""
    from .checkpoint import latest_checkpoint, load_checkpoint

    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    if ckpt is None:
        return 0
    step = load_checkpoint(ckpt, model, optimizer, scheduler)
    acc.print(f"resumed from {ckpt} at step {step}")
    return step


def step_counts(items: int, train: Any, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``items`` micro-batch items (rows or pairs) per epoch."""
    batches = math.ceil(items / train.micro_batch_size)
    per_epoch = max(1, batches // (train.grad_accum * world))
    return per_epoch, train.max_steps or max(1, int(train.epochs * per_epoch))


def lr_scheduler(optimizer: torch.optim.Optimizer, *, warmup_ratio: float, total: int, kind: str) -> Any:
    warmup = int(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule_factor(s, warmup=warmup, total=total, kind=kind))


def schedule_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine/linear decay to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases and norm weights
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


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


class Progress:
    """tqdm bar with loss and tok/s (ETA from tqdm); silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool, desc: str = "sft"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, loss: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
