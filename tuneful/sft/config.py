"""The SFT recipe: model, data, LoRA and training settings, each documented and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import setting

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelSettings:
    name_or_path: str = setting("", "Hugging Face model id or local folder of the base model.")
    dtype: str = setting("auto", "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16.")
    trust_remote_code: bool = setting(False, "Run model code shipped with the checkpoint. Off unless you trust it.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    attn_implementation: str = setting("sdpa", "Attention kernel: sdpa, eager, or flash_attention_2 (GPU).")

    def check(self) -> list[str]:
        problems = []
        if not self.name_or_path:
            problems.append("name_or_path: required; set model.name_or_path=<id or folder>")
        if self.dtype not in DTYPES:
            problems.append(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        return problems


def source_problems(data: Any) -> list[str]:
    """Checks every data section shares (SFT conversations, DPO pairs): source, held-out split, errors, length."""
    problems = []
    if not data.train:
        problems.append("train: required; set data.train=<file or dataset id>")
    if not 0.0 <= data.eval_fraction < 1.0:
        problems.append(f"eval_fraction: {data.eval_fraction} must be in [0, 1)")
    if data.eval and data.eval_fraction:
        problems.append("eval_fraction: set either data.eval or data.eval_fraction, not both")
    if data.on_error not in ("fail", "skip"):
        problems.append(f"on_error: {data.on_error!r} is not fail or skip")
    if data.max_length < 8:
        problems.append(f"max_length: {data.max_length} is too small (>= 8)")
    return problems


@dataclass
class DataSettings:
    train: str = setting("", "Training data: file, dataset folder or Hugging Face id (any supported format).")
    eval: str = setting("", "Held-out data for eval loss; empty = split eval_fraction off the training data.")
    eval_fraction: float = setting(0.0, "Share of training conversations held out when data.eval is empty.")
    format: str = setting("auto", "Data format (auto-detected by default).")
    on_error: str = setting("fail", "fail on a bad record, or skip it (skips are counted and reported).")
    template: str = setting("tokenizer", "Chat template: 'tokenizer' (its own), a built-in name, or a .jinja file.")
    allow_template_change: bool = setting(False, "Confirm a template that differs from the tokenizer's own.")
    tokenizer: str = setting("", "Tokenizer folder/id; empty = the model's.")
    max_length: int = setting(1024, "Longest sequence in tokens.")
    overlong: str = setting("drop", "Examples over max_length: drop, truncate, or fail.")
    last_turn_only: bool = setting(False, "Train only the final assistant turn of each conversation.")
    reasoning: str = setting("keep", "Turns a template prints differently once a later turn follows (Qwen3, "
                                     "DeepSeek-R1 drop earlier reasoning): keep = train each in an example of its "
                                     "own, in its inference context (more tokens); drop_earlier = do not train them.")
    packing: bool = setting(True, "Pack examples into max_length rows (block-diagonal attention, no cross-talk).")
    replay: str = setting("", "Plain-text documents (JSONL with a 'text' field) trained on every token beside the "
                              "conversations, so SFT does not erase what pretraining taught.")
    replay_ratio: float = setting(0.0, "Replay documents per training conversation (0 = none).")

    def check(self) -> list[str]:
        problems = source_problems(self)
        if self.overlong not in ("drop", "truncate", "fail"):
            problems.append(f"overlong: {self.overlong!r} is not drop, truncate or fail")
        if self.reasoning not in ("keep", "drop_earlier"):
            problems.append(f"reasoning: {self.reasoning!r} is not keep or drop_earlier")
        if self.replay_ratio < 0 or (self.replay_ratio > 0 and not self.replay):
            problems.append("replay_ratio: needs data.replay=<documents.jsonl> and a value >= 0")
        return problems


@dataclass
class LoraSettings:
    enabled: bool = setting(False, "Train LoRA adapters instead of all weights.")
    r: int = setting(16, "LoRA rank.")
    alpha: int = setting(32, "LoRA scaling alpha (scale = alpha / r).")
    dropout: float = setting(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] = setting(["all-linear"], "Modules to adapt: names, or all-linear.")
    qlora: bool = setting(False, "Load the base in 4-bit (needs bitsandbytes and a CUDA GPU).")

    def check(self) -> list[str]:
        problems = []
        if self.enabled and self.r <= 0:
            problems.append(f"r: {self.r} must be positive")
        if self.qlora and not self.enabled:
            problems.append("qlora: needs lora.enabled=true")
        return problems


@dataclass
class TrainSettings:
    output_dir: str = setting("runs/sft", "Where checkpoints, logs and the final model go.")
    epochs: float = setting(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = setting(0, "Optimizer steps to run; 0 = derived from epochs.")
    micro_batch_size: int = setting(8, "Rows per forward pass (per process).")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    lr: float = setting(2e-4, "Peak learning rate.")
    weight_decay: float = setting(0.0, "AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = setting(0.03, "Share of steps with linear warm-up.")
    schedule: str = setting("cosine", "Learning-rate schedule after warm-up: cosine, linear or constant.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm; 0 = off.")
    seed: int = setting(0, "Seed for initialisation, data order and dropout.")
    eval_every: int = setting(0, "Held-out loss every N steps; 0 = only at the end (if there is eval data).")
    save_every: int = setting(0, "Checkpoint every N steps; 0 = only the final model.")
    log_every: int = setting(1, "Log metrics every N steps.")
    loss_chunk_size: int = setting(0, "Tokens per chunk for chunked cross-entropy; 0 = full logits at once.")
    resume: bool = setting(True, "Resume from the latest checkpoint in output_dir when there is one.")
    threads: int = setting(0, "CPU threads for torch; 0 = torch's default.")
    progress: bool = setting(True, "Show a progress bar.")

    def check(self) -> list[str]:
        problems = []
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            problems.append("micro_batch_size and grad_accum must be >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            problems.append("epochs: must be > 0 when max_steps is 0")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if self.lr <= 0:
            problems.append(f"lr: {self.lr} must be positive")
        if self.loss_chunk_size < 0:
            problems.append("loss_chunk_size: must be >= 0")
        return problems


@dataclass
class SFTConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
