"""Rows and batches: padded batches grouped by length, or packed rows without cross-contamination.

Packing puts several examples in one row (best-fit-decreasing bins). Position ids restart at 0
for each example and attention is block-diagonal (an example never sees another), so a packed
row computes exactly what the examples would compute one by one. The first label of every example
is ignored, as it is in an unpacked row (nothing precedes it to predict it from).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch

from .masking import IGNORE_INDEX


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # from masking.labels_from_mask: token id where trained, IGNORE_INDEX elsewhere

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        """Tokens that contribute to the loss (labels are shifted: position 0 never does)."""
        return sum(1 for y in self.labels[1:] if y != IGNORE_INDEX)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity; each item goes where it fits tightest."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining space, bin index), sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    return bins


def plan_rows(lengths: Sequence[int], *, packing: bool, max_length: int) -> list[list[int]]:
    """Each row is a list of example indices (one index when not packing), from the examples' lengths."""
    if packing:
        return best_fit_decreasing(lengths, max_length)
    return [[i] for i in range(len(lengths))]


def collate_padded(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is excluded from attention and from labels by position."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def collate_packed(rows: Sequence[Sequence[Example]], pad_id: int, *, block_mask: bool = True) -> dict[str, torch.Tensor]:
    """Packed rows: restarted position ids, first label of each example ignored, block-diagonal attention.

    ``block_mask`` builds a boolean [B, 1, T, T] mask (SDPA/eager). Without it (flash-attention's
    varlen path) the restarted ``position_ids`` tell the kernel where examples begin.
    """
    width = max(sum(len(e) for e in row) for row in rows)
    batch = len(rows)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((batch, width), dtype=torch.long)
    segment = torch.full((batch, width), -1, dtype=torch.long)  # -1 = padding
    for r, row in enumerate(rows):
        at = 0
        for k, e in enumerate(row):
            n = len(e)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at : at + n] = torch.tensor(e.labels)
            labels[r, at] = IGNORE_INDEX
            positions[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = k
            at += n
    out = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if block_mask:
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = segment[:, :, None] == segment[:, None, :]
        real = (segment >= 0)[:, :, None]
        mask = causal & same & real
        # padding rows attend to themselves only, so softmax never sees an all-masked row
        mask |= torch.eye(width, dtype=torch.bool)[None]
        out["attention_mask"] = mask[:, None]
    return out
