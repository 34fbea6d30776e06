"""Checkpoints that are written atomically and resume exactly.

A checkpoint holds the trainable weights (safetensors), optimizer and scheduler state, the RNG
states and the step; under FSDP the weights and optimizer state are gathered to full tensors first
(one format, written by the main process). The order of planned data is a pure function of (seed,
epoch) and the step, so nothing about it needs saving; a streaming trainer saves its position in the
stream. Files are written into a temporary folder that is renamed into place, so a kill mid-write
never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "step-"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters de-duplicates tied weights, which safetensors cannot store twice
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any, keep: int = 2, *,
                    sharded: bool = False, write: bool = True, data_state: dict | None = None) -> Path | None:
    """Write the checkpoint of ``step``. A sharded (FSDP) model is first gathered to full tensors: every process
    calls this, and only the one with ``write`` writes. ``data_state``: where a trainer that streams its data
    stands in the stream (the step alone fixes the order of data that is planned per epoch)."""
    if sharded:
        from .sharding import full_model_state, full_optimizer_state

        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        weights = {n: t for n, t in full_model_state(model).items() if n in trainable}
        optimizer_state = full_optimizer_state(model, optimizer)
    else:
        weights, optimizer_state = trainable_state(model), optimizer.state_dict()
    if not write:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **({"data": data_state} if data_state else {})}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").exists())
    return found[-1] if found else None


def data_state_of(path: Path) -> dict | None:
    """The stream position saved with a checkpoint (None for data planned per epoch)."""
    return json.loads((path / "state.json").read_text()).get("data")


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, *, sharded: bool = False) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step to continue after."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{path}: checkpoint parameters not in this model (different recipe?): {missing[:3]}")
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    if sharded:
        from .sharding import load_full_state

        load_full_state(model, weights, optimizer, optimizer_state)
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())["step"]
