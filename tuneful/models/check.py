"""``tuneful model check``: what tuneful will do with a model, from the model itself.

Boundary: a model folder, hub id or config in; a findings dict out (no training, no data). The trainers run the same
probes when they load a model (``Trainer.fit_model``), so what this prints is what a run does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .head import MODEL_FORWARD, probe_head, unwrap_causal_lm
from .layouts import probe_layouts
from .lora import resolve_lora_targets

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_for_check(name_or_path: str, *, trust_remote_code: bool = False) -> tuple[Any, bool]:
    """(causal LM in fp32, whether its weights were read): a folder with only a config gets random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(name_or_path)
    if folder.is_file():  # a config.json on its own
        folder = folder.parent
    if folder.is_dir() and not any((folder / name).exists() for name in WEIGHTS):
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code), False
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code), True


def chat_template_finding(name_or_path: str) -> str:
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception:
        return "no tokenizer found: pass data.tokenizer=<folder> and data.template=<built-in, e.g. chatml>"
    if getattr(tokenizer, "chat_template", None):
        return "the tokenizer's own (data.template=tokenizer)"
    return "none in the tokenizer: pass data.template=<built-in, e.g. chatml> (tuneful template list)"


def check_model(model: Any, *, name: str = "", max_length: int = 2048) -> dict:
    """The findings for a loaded causal LM (see the module's text); ``max_length`` is the row length a run uses."""
    causal = unwrap_causal_lm(model)
    config = causal.config
    head = probe_head(model)
    layouts = probe_layouts(model)
    targets, parameters = resolve_lora_targets(causal, ["all-linear"])
    leaf_targets = sorted({t.rsplit(".", 1)[-1] for t in targets}) if isinstance(targets, list) else [targets]
    problems: list[str] = []
    if layouts.packing is None:
        problems.append(f"packing refused ({layouts.packing_reason}); SFT trains padded rows (data.packing=false)")
    shared = layouts.shared_prompt_problem(max_length, aux_loss=head.aux_coefficient is not None)
    if shared:
        problems.append(f"shared-prompt pair layout refused at max_length {max_length} ({shared}); DPO, KTO, reward "
                        "models and GRPO use a row per reply (pair_layout/layout auto picks it)")
    coefficient = getattr(config, "router_aux_loss_coef", None)
    if head.aux_coefficient is None and coefficient is not None and hasattr(config, "output_router_logits"):
        problems.append(f"MoE load-balancing loss off: the config has output_router_logits=false (its own loss "
                        f"leaves it out too); to train with it, set output_router_logits=true in config.json "
                        f"(coefficient {coefficient})")
    return {
        "name": name,
        "architecture": (getattr(config, "architectures", None) or [type(causal).__name__])[0],
        "model_type": getattr(config, "model_type", ""),
        "parameters": sum(p.numel() for p in causal.parameters()),
        "head": head.mode,
        "head_detail": head.describe(),
        "logit_scale": head.scale if head.mode != MODEL_FORWARD else None,
        "logit_softcap": head.softcap if head.mode != MODEL_FORWARD else None,
        "moe_aux_loss": head.aux_coefficient,
        "lora_targets": leaf_targets,
        "lora_expert_parameters": parameters,
        "attention": str(getattr(config, "_attn_implementation", "")),
        "packing": layouts.packing,
        "shared_prompt": shared is None,
        "sliding_window": layouts.sliding_window,
        "problems": problems,
    }
