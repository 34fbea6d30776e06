"""Checkpoints that are written atomically and resume exactly.

A checkpoint holds the trainable weights (safetensors), optimizer and scheduler state, the RNG
states and the step. The data order is a pure function of (seed, epoch) and the step, so nothing
about the data needs saving. Files are written into a temporary folder that is renamed into place,
so a kill mid-write never leaves a checkpoint that looks complete.
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


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").exists())
    return found[-1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step to continue after."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{path}: checkpoint parameters not in this model (different recipe?): {missing[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())["step"]
