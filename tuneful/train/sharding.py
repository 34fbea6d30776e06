"""Fully sharded data parallelism (PyTorch FSDP2, ``fully_shard``) for the training core.

Knows modules, optimizers and the process group; nothing about data or losses. Weights, gradients and
optimizer state are split over the processes of ``accelerate launch``: each decoder layer is one unit
(gathered for its forward and backward, resharded after), the rest of the model another. Checkpoints and
the final model are gathered to full tensors — a collective every process joins — and written by the
main process, so they load anywhere without FSDP.

Why tuneful applies ``fully_shard`` itself instead of accelerate's FSDP plugin: accelerate turns FSDP on
only for accelerators (on CPU it falls back to DDP), and one code path that runs on CPU with gloo is one
that the test suite can check against a single process, loss for loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard in place: every decoder layer (the classes in ``_no_split_modules``) is a unit, and ``model`` — the
    trainer's loss module, whose forward is what the loop calls — holds the rest (embeddings, final norm, the
    output head, tied or not), gathered when its forward starts."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set()
    for module in model.modules():
        layer_classes.update(getattr(module, "_no_split_modules", None) or ())
    if not layer_classes:
        raise ValueError(f"train.fsdp: {type(model).__name__} names no decoder-layer class (_no_split_modules), so "
                         "there is no unit to shard; set train.fsdp=false")
    model.to(device)
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight as a full CPU tensor (a collective: every process calls it; all receive it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict:
    """The optimizer state keyed by parameter name, unsharded (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_options())


def load_full_state(model: nn.Module, weights: dict[str, torch.Tensor], optimizer: Any, optimizer_state: dict) -> None:
    """Restore full tensors into the sharded model and optimizer (every process, from the same files)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options(strict=False))
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), optimizer_state, options=_options())


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it


def as_float(value: Any) -> float:
    """A scalar that may be a DTensor (a gradient norm over sharded parameters)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
