"""The settings of the model a run starts from and of its LoRA adapters, each documented and checked:
what :mod:`tuneful.models.loading` reads. Every trainer's config holds both sections."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import setting

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
