"""Batch rows for continuous batching: left-padded prompts, their positions, and the KV cache layers whose rows
can be padded, merged and dropped — grown in place with room to spare (:class:`GrowingLayer`).

Knows tensors and transformers' cache classes only; :mod:`tuneful.infer.engine` decides when rows join and leave.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


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


def mergeable_layers(cache: Any) -> list["GrowingLayer"] | None:
    """The cache's layers when each is a :class:`GrowingLayer` (plain (batch, heads, length, dim) keys/values that
    rows can be padded, merged and dropped in); None otherwise."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not GrowingLayer for layer in layers):
        return None
    return list(layers)


def growing_cache(config: Any) -> Any:
    """transformers' ``DynamicCache`` for ``config``, its full-attention layers :class:`GrowingLayer` (other layer
    kinds are left as they are: :func:`mergeable_layers` then refuses the cache)."""
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", None) or [None]):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def _spare(length: int) -> int:
    """The positions a buffer holding ``length`` gets: a quarter more, at least 32 (a buffer is copied whole when
    it grows, so more room costs as much as it saves on short replies)."""
    return length + max(32, length // 4)


def _spare_rows(rows: int) -> int:
    """The rows a new buffer holding ``rows`` gets: a quarter more, at least 4 (rows that join later are written
    there instead of copying every row into a new buffer)."""
    return rows + max(4, rows // 4)


class _Grown:
    """A layer attribute (``keys`` or ``values``): the first ``rows`` rows (dim 0) and ``length`` positions (dim -2)
    of a buffer that may have more of both. A tensor assigned from outside (transformers' own ``crop``,
    ``offload``, ...) becomes the buffer with no room to spare, so that it is never written into."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.buffer, self.length, self.rows = f"_{name}_buffer", f"_{name}_length", f"_{name}_rows"

    def __get__(self, layer: Any, owner: type | None = None) -> Any:
        if layer is None:
            return self
        buffer = layer.__dict__.get(self.buffer)
        if buffer is None or buffer.dim() < 2:
            return buffer
        return buffer[: layer.__dict__[self.rows], ..., : layer.__dict__[self.length], :]

    def __set__(self, layer: Any, value: torch.Tensor | None) -> None:
        held = value is not None and value.dim() >= 2
        self.hold(layer, value, value.shape[-2] if held else 0, value.shape[0] if held else 0)

    def hold(self, layer: Any, buffer: torch.Tensor | None, length: int, rows: int) -> None:
        layer.__dict__[self.buffer], layer.__dict__[self.length], layer.__dict__[self.rows] = buffer, length, rows

    def _held(self, layer: Any) -> tuple[torch.Tensor, int, int]:
        return layer.__dict__[self.buffer], layer.__dict__[self.length], layer.__dict__[self.rows]

    def append(self, layer: Any, states: torch.Tensor) -> torch.Tensor:
        """Write ``states`` (one per held row) after the held positions (into a longer buffer when they do not
        fit)."""
        buffer, length, rows = self._held(layer)
        needed = length + states.shape[-2]
        if needed > buffer.shape[-2]:
            grown = states.new_empty((buffer.shape[0], *states.shape[1:-2], _spare(needed), states.shape[-1]))
            grown[:rows, ..., :length, :] = buffer[:rows, ..., :length, :]
            buffer = grown
        buffer[:rows, ..., length:needed, :] = states
        self.hold(layer, buffer, needed, rows)
        return buffer[:rows, ..., :needed, :]

    def select(self, layer: Any, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``, in that order, repeats allowed (a new buffer with the same room for positions)."""
        buffer, length, rows = self._held(layer)
        self.hold(layer, buffer[:rows].index_select(0, indices), length, len(indices))

    def move_rows(self, layer: Any, sources: list[int], targets: list[int], rows: int) -> None:
        """Copy rows ``sources`` onto rows ``targets`` (rows that ended), then hold the first ``rows``: only the
        moved rows are copied."""
        buffer, length, _ = self._held(layer)
        if sources:
            where = torch.tensor(targets, device=buffer.device)
            buffer[where, ..., :length, :] = buffer[torch.tensor(sources, device=buffer.device), ..., :length, :]
        self.hold(layer, buffer, length, rows)

    def add_rows(self, layer: Any, block: torch.Tensor, width: int) -> None:
        """Hold ``block`` ((rows, heads, length, dim)) under the held rows, all ending at position ``width``: written
        into the buffer's spare rows when they suffice and ``width`` is the held length, else everything into a new
        buffer."""
        buffer, length, rows = self._held(layer)
        if width != length or rows + block.shape[0] > buffer.shape[0]:
            return self.right_aligned(layer, [buffer[:rows, ..., :length, :], block], width)
        end = rows + block.shape[0]
        buffer[rows:end, ..., : width - block.shape[-2], :] = 0
        buffer[rows:end, ..., width - block.shape[-2] : width, :] = block
        self.hold(layer, buffer, length, end)

    def right_aligned(self, layer: Any, blocks: list[torch.Tensor], width: int) -> None:
        """Hold ``blocks`` (each (rows, heads, length, dim)) one under the other, each block's positions ending at
        ``width`` (left-padded with zeros), in a new buffer with room to spare (positions and rows)."""
        first = blocks[0]
        total = sum(b.shape[0] for b in blocks)
        held = first.new_zeros((_spare_rows(total), *first.shape[1:-2], _spare(width), first.shape[-1]))
        row = 0
        for block in blocks:
            held[row : row + block.shape[0], ..., width - block.shape[-2] : width, :] = block
            row += block.shape[0]
        self.hold(layer, held, width, total)

    def drop_leading(self, layer: Any, count: int) -> None:
        """Forget the first ``count`` positions (no copy: the buffer is viewed from there on)."""
        buffer, length, rows = self._held(layer)
        self.hold(layer, buffer[..., count:, :], length - count, rows)


class GrowingLayer(DynamicLayer):
    """A full-attention ``DynamicLayer`` whose keys and values grow in place. ``DynamicLayer`` concatenates every
    step, a copy of the whole cache per decoded token (and the engine's merges and row drops copied it again);
    here a decoded token is one position written, a row that joins is written into a spare row, a row that leaves
    is overwritten by the last one, and a buffer is copied only when full (see :func:`_spare` and
    :func:`_spare_rows` for the room it keeps)."""

    keys = _Grown()
    values = _Grown()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return GrowingLayer.keys.append(self, key_states), GrowingLayer.values.append(self, value_states)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            GrowingLayer.keys.select(self, indices)
            GrowingLayer.values.select(self, indices)

    def keep_rows(self, sources: list[int], targets: list[int], rows: int) -> None:
        """Rows ``sources`` move onto rows ``targets``; the first ``rows`` rows are kept (the engine's row drops:
        the last rows fill the places of rows that ended)."""
        GrowingLayer.keys.move_rows(self, sources, targets, rows)
        GrowingLayer.values.move_rows(self, sources, targets, rows)

    def merge_rows(self, other: "GrowingLayer", width: int) -> None:
        """This layer's rows, then ``other``'s, all ending at position ``width``."""
        GrowingLayer.keys.add_rows(self, other.keys, width)
        GrowingLayer.values.add_rows(self, other.values, width)

    def fill_rows(self, rows: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> None:
        """An empty layer given one row per ``(keys, values)`` pair (each (heads, length, dim)), all ending at
        position ``width`` (a prefix cache's reused sequences, before the prompts that follow them)."""
        GrowingLayer.keys.right_aligned(self, [k[None] for k, _ in rows], width)
        GrowingLayer.values.right_aligned(self, [v[None] for _, v in rows], width)
        self.device, self.is_initialized = rows[0][0].device, True

    def drop_leading(self, count: int) -> None:
        """Forget the first ``count`` positions of every row (columns no row uses any more)."""
        GrowingLayer.keys.drop_leading(self, count)
        GrowingLayer.values.drop_leading(self, count)


def pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``width`` zeros before ``tensor`` along ``dim`` (a shorter row's cache, made as wide as the batch's)."""
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
