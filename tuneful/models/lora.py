"""Which modules LoRA adapts in a model, resolved from the model itself.

Boundary: a transformers model and the requested ``lora.target_modules`` in, peft's arguments out.

``all-linear`` is peft's own expansion (every linear layer but the output head), less linear subclasses with a
forward of their own (routers) and the layers peft refuses for that architecture (a Mamba mixer's ``out_proj`` and ``conv1d`` in Falcon-H1 and its kin) — asking peft itself,
layer by layer, so the rule follows peft. MoE experts stored as one 3-D weight per projection (transformers 5's fused
experts) are no linear layers; they are adapted through peft's ``target_parameters``, so the experts train as well
as attention.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def expert_parameters(model: nn.Module) -> list[str]:
    """Names (relative to their module, e.g. ``experts.gate_up_proj``) of 3-D expert weights: [experts, in, out]."""
    found = set()
    for name, parameter in model.named_parameters():
        if parameter.ndim == 3 and "expert" in name.lower():
            module, _, leaf = name.rpartition(".")
            found.add(f"{module.rsplit('.', 1)[-1]}.{leaf}" if module else leaf)
    return sorted(found)


def resolve_lora_targets(model: nn.Module, requested: list[str], task_type: str = "CAUSAL_LM") -> tuple[Any, list[str]]:
    """(target_modules, target_parameters) for peft's LoraConfig."""
    if requested != ["all-linear"]:
        return requested, []
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _check_lora_target_modules_mamba, _maybe_include_all_linear_layers
    except ImportError:  # another peft: its own expansion, unchecked
        return "all-linear", expert_parameters(model)
    config = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type=task_type), model)
    modules = dict(model.named_modules())
    kept = []
    for name in sorted(config.target_modules):
        module = modules.get(name)
        if isinstance(module, nn.Linear) and type(module).forward is not nn.Linear.forward:
            continue  # a linear layer with a forward of its own (Llama 4's router returns a tuple): not a projection
        try:
            _check_lora_target_modules_mamba(config, model, name.rsplit(".", 1)[-1])
        except ValueError:
            continue
        kept.append(name)
    return (kept or "all-linear"), expert_parameters(model)
