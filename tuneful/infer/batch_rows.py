"""Batch rows for continuous batching: left-padded prompts, their positions, and the KV cache layers whose rows
can be padded, merged and dropped.

Knows tensors and transformers' cache classes only; :mod:`tuneful.infer.engine` decides when rows join and leave.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with left padding: every prompt ends where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward can return the last position's logits only (a prefill needs no more)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model passes it on
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its left-padded row (padding at 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def mergeable_layers(cache: Any) -> list[Any] | None:
    """The cache's layers when each holds plain (batch, heads, length, dim) keys/values that rows can be
    padded, merged and dropped in; None otherwise."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return list(layers)


def pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``width`` zeros before ``tensor`` along ``dim`` (a shorter row's cache, made as wide as the batch's)."""
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
