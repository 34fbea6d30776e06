"""Which items a run holds out, and the order of one epoch's micro-batches: pure functions of the
seed (and the epoch), so a resumed run sees the same batches as an uninterrupted one and nothing
about the data needs checkpointing."""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence


def plan_epoch(row_lengths: Sequence[int], micro_batch_size: int, seed: int, epoch: int,
               packing: bool) -> list[list[int]]:
    """Micro-batches (lists of row indices) for one epoch; a pure function of (seed, epoch).

    Unpacked rows are grouped by length inside shuffled windows so padding stays small.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(row_lengths)))
    rng.shuffle(order)
    if not packing:
        window = micro_batch_size * 64
        grouped = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start : start + window], key=lambda r: row_lengths[r])
        order = grouped
    batches = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    rng.shuffle(batches)
    return batches


def hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded random ``fraction`` of the items (at least one) is held out."""
    if fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(fraction * len(items))))
    held = set(order[:n_eval])
    return [c for i, c in enumerate(items) if i not in held], [c for i, c in enumerate(items) if i in held]


def split_eval(items: list, settings: Any, seed: int, load_eval: Callable[[str], list]) -> tuple[list, list]:
    """(train, held out) for a data section: ``data.eval`` loaded with ``load_eval`` when it is set, else a
    seeded ``data.eval_fraction`` of ``items``."""
    if settings.eval:
        return items, load_eval(settings.eval)
    return hold_out(items, settings.eval_fraction, seed)
