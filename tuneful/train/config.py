"""Settings every trainer shares: the model, LoRA and the optimisation loop, each documented and
cross-checked. A trainer's config combines these with its own data and objective sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import setting
from ..models.settings import LoraSettings, ModelSettings
from .trackers import TRACKERS

SCHEDULES = ("cosine", "linear", "constant")


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


@dataclass
class AfterSFTConfig:
    """The base of every config of a trainer after SFT (DPO, KTO, reward models, GRPO, online DPO): the model and
    LoRA sections, and the cross-checks these trainers share — NEFTune stays an SFT method, a reference with adapters
    switched off needs adapters, a layout that shares the prompt needs a kernel that takes a block mask. A subclass
    adds its data, objective and train sections and names, below, the sections these checks read."""

    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    method: ClassVar[str] = "this trainer"  # how the messages name the trainer
    reference_section: ClassVar[str | None] = None  # the section whose ``reference`` picks the reference policy
    layout_setting: ClassVar[str] = "train.pair_layout"  # the setting that may choose the shared-prompt layout

    def check(self) -> list[str]:
        """Cross-section checks (each section checks itself first); a subclass adds its own to these."""
        problems = []
        if self.reference_section is not None:
            objective = getattr(self, self.reference_section)
            if objective.reference == "adapters-off" and not self.lora.enabled:
                problems.append(f"{self.reference_section}.reference: adapters-off needs lora.enabled=true (without "
                                "adapters there is nothing to switch off); use frozen or precomputed")
            if objective.reference == "adapters-off" and getattr(objective, "reference_model", ""):
                problems.append(f"{self.reference_section}.reference_model: with reference=adapters-off the reference "
                                "is the policy's own base; remove reference_model or use reference=frozen/precomputed")
        section, name = self.layout_setting.split(".")
        kernel = self.model.attn_implementation
        if getattr(getattr(self, section), name) == "shared-prompt" and kernel.startswith("flash"):
            problems.append(f"{self.layout_setting}: shared-prompt needs a custom attention mask, which "
                            f"model.attn_implementation={kernel} cannot take; use the row-per-reply layout (or auto), "
                            "or attn_implementation=sdpa")
        if getattr(self, "train").neftune_alpha:
            problems.append(f"train.neftune_alpha: NEFTune is an SFT method; with a reference policy on the same "
                            f"embeddings it would also perturb the reference. Set it to 0 for {self.method}")
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
    resume: bool = setting(True, "Resume from the latest checkpoint in output_dir when there is one (refused when it "
                                 "was written with other settings, naming them).")
    resume_force: bool = setting(False, "Resume even from a checkpoint written with other settings (they are printed).")
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
