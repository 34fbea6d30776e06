"""Settings every trainer shares: the model, LoRA and the optimisation loop, each documented and
cross-checked. A trainer's config combines these with its own data and objective sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import setting
from .trackers import TRACKERS

SCHEDULES = ("cosine", "linear", "constant")
LORA_INITS = ("default", "gaussian", "pissa", "olora")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelSettings:
    name_or_path: str = setting("", "Hugging Face model id or local folder of the base model.")
    dtype: str = setting("auto", "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16.")
    trust_remote_code: bool = setting(False, "Run model code shipped with the checkpoint. Off unless you trust it.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    attn_implementation: str = setting("auto", "Attention kernel: auto (the model's own default: sdpa where it "
                                               "supports it, else eager — gpt-oss, Gemma 2), sdpa, eager, or "
                                               "flash_attention_2 (GPU).")

    def loading_kwargs(self) -> dict:
        """``from_pretrained`` keywords for the kernel: none for ``auto`` (transformers picks the model's default)."""
        return {} if self.attn_implementation == "auto" else {"attn_implementation": self.attn_implementation}

    def check(self) -> list[str]:
        problems = []
        if not self.name_or_path:
            problems.append("name_or_path: required; set model.name_or_path=<id or folder>")
        if self.dtype not in DTYPES:
            problems.append(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        return problems


def source_problems(data: Any) -> list[str]:
    """Checks every data section shares (SFT conversations, DPO pairs, prompts): source, held-out split, errors,
    and the length limit where the section has ``max_length``."""
    problems = []
    if not data.train:
        problems.append("train: required; set data.train=<file or dataset id>")
    elif isinstance(data.train, list):
        from ..data.mixture import training_sources_problems

        problems += training_sources_problems(data.train, getattr(data, "format", "auto"))
    if not 0.0 <= data.eval_fraction < 1.0:
        problems.append(f"eval_fraction: {data.eval_fraction} must be in [0, 1)")
    if data.eval and data.eval_fraction:
        problems.append("eval_fraction: set either data.eval or data.eval_fraction, not both")
    if data.on_error not in ("fail", "skip"):
        problems.append(f"on_error: {data.on_error!r} is not fail or skip")
    if hasattr(data, "max_length") and data.max_length < 8:
        problems.append(f"max_length: {data.max_length} is too small (>= 8)")
    return problems


def fsdp_problems(lora: "LoraSettings", train: "TrainSettings") -> list[str]:
    """What FSDP cannot be combined with: 4-bit weights, and PiSSA/OLoRA (their conversion reads the whole
    model on one process)."""
    problems = []
    if train.fsdp and lora.qlora:
        problems.append("train.fsdp: QLoRA's 4-bit weights are not sharded by tuneful; set lora.qlora=false or "
                        "train.fsdp=false")
    if train.fsdp and lora.init in ("pissa", "olora"):
        problems.append(f"train.fsdp: lora.init={lora.init} converts the adapter against the whole base on one "
                        "process; use lora.init=default or gaussian, or train.fsdp=false")
    return problems


def after_sft_problems(method: str, model: "ModelSettings", lora: "LoraSettings", train: Any, *,
                       reference: tuple[str, str] | None = None,
                       shared_layout: tuple[str, bool] | None = None) -> list[str]:
    """Cross-checks every trainer after SFT shares: NEFTune stays an SFT method, a reference with adapters
    switched off needs adapters, and a layout that shares the prompt needs a kernel that takes a block mask.
    ``reference``: (its setting's key, its value); ``shared_layout``: (its setting's key, whether it is on)."""
    problems = []
    if reference is not None and reference[1] == "adapters-off" and not lora.enabled:
        problems.append(f"{reference[0]}: adapters-off needs lora.enabled=true (without adapters there is nothing "
                        "to switch off); use frozen or precomputed")
    if shared_layout is not None and shared_layout[1] and model.attn_implementation.startswith("flash"):
        problems.append(f"{shared_layout[0]}: shared-prompt needs a custom attention mask, which "
                        f"model.attn_implementation={model.attn_implementation} cannot take; use the row-per-reply "
                        "layout (or auto), or attn_implementation=sdpa")
    if train.neftune_alpha:
        problems.append(f"train.neftune_alpha: NEFTune is an SFT method; with a reference policy on the same "
                        f"embeddings it would also perturb the reference. Set it to 0 for {method}")
    return problems


@dataclass
class LoraSettings:
    enabled: bool = setting(False, "Train LoRA adapters instead of all weights.")
    r: int = setting(16, "LoRA rank.")
    alpha: int = setting(32, "LoRA scaling alpha (scale = alpha / r).")
    dropout: float = setting(0.0, "Dropout on the LoRA branch.")
    target_modules: list[str] = setting(["all-linear"], "Modules to adapt: names, or all-linear.")
    qlora: bool = setting(False, "Load the base in 4-bit (needs bitsandbytes and a CUDA GPU).")
    dora: bool = setting(False, "DoRA (Liu et al. 2024, arXiv:2402.09353): each adapted weight split into a trained "
                                "magnitude and a LoRA-updated direction.")
    rslora: bool = setting(False, "rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): scale alpha / sqrt(r) instead of "
                                  "alpha / r, so high ranks keep learning.")
    init: str = setting("default", "Adapter initialisation: default (B = 0), gaussian, pissa (Meng et al. 2024, "
                                   "arXiv:2404.02948: principal singular vectors, base keeps the residual) or olora "
                                   "(Büyükakyüz 2024, arXiv:2406.01775: QR-orthonormal).")
    plus_lr_ratio: float = setting(1.0, "LoRA+ (Hayou et al. 2024, arXiv:2402.12354): learning rate of the B "
                                        "matrices = ratio x train.lr (the paper suggests 16); 1 = plain LoRA.")

    def check(self) -> list[str]:
        problems = []
        if self.enabled and self.r <= 0:
            problems.append(f"r: {self.r} must be positive")
        if self.qlora and not self.enabled:
            problems.append("qlora: needs lora.enabled=true")
        if self.init not in LORA_INITS:
            problems.append(f"init: {self.init!r} is not one of {', '.join(LORA_INITS)}")
        if self.plus_lr_ratio <= 0:
            problems.append(f"plus_lr_ratio: {self.plus_lr_ratio} must be positive")
        variants = [name for name, on in (("dora", self.dora), ("rslora", self.rslora),
                                          ("init", self.init != "default"), ("plus_lr_ratio", self.plus_lr_ratio != 1.0))
                    if on]
        if variants and not self.enabled:
            problems.append(f"{', '.join(variants)}: LoRA variants need lora.enabled=true")
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
    neftune_alpha: float = setting(0.0, "NEFTune (Jain et al. 2023, arXiv:2310.05914): uniform noise of scale "
                                        "alpha / sqrt(length x width) on the input embeddings while training (the "
                                        "paper uses 5); 0 = off. Never applied in evaluation or inference.")
    fsdp: bool = setting(False, "Shard weights, gradients and optimizer state over the processes of accelerate "
                                "launch (PyTorch FSDP2: one unit per decoder layer; gloo on CPU, NCCL on GPU). "
                                "Checkpoints and the final model are gathered to full tensors. Off = DDP, or "
                                "DeepSpeed ZeRO-1/2 when launched with recipes/accelerate/deepspeed_zero2.yaml.")
    progress: bool = setting(True, "Show a progress bar.")
    report_to: list[str] = setting(["tensorboard"], "Trackers besides metrics.jsonl, several at once: tensorboard "
                                   "(used when installed), wandb (offline unless WANDB_MODE=online), mlflow (file "
                                   "store in output_dir/mlruns unless MLFLOW_TRACKING_URI), trackio (local); empty = "
                                   "none. Each gets the settings, every metrics row, the loss plot and tuneful.json.")

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
        if self.neftune_alpha < 0:
            problems.append(f"neftune_alpha: {self.neftune_alpha} must be >= 0")
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            problems.append(f"report_to: {', '.join(unknown)} not among {', '.join(TRACKERS)}")
        return problems
