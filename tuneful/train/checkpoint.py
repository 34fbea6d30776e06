"""Checkpoints that are written atomically and resume exactly.

A checkpoint holds the trainable weights (safetensors), optimizer and scheduler state, the RNG
states and the step; under FSDP the weights and optimizer state are gathered to full tensors first
(one format, written by the main process); under DeepSpeed ZeRO each process writes its partition of
the optimizer state (``optimizer-rank-NNNNN.pt``) next to the full weights, and the run resumes on as
many processes. The order of planned data is a pure function of (seed, epoch) and the step, so nothing
about it needs saving; a streaming trainer saves its position in the stream. Files are written into a
temporary folder that is renamed into place, so a kill mid-write never leaves a checkpoint that looks
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .sharding import full_model_state, full_optimizer_state, load_full_state
from .zero import load_partitions, partition_state_globals

PREFIX = "step-"
PARTITION = "optimizer-rank-"


@dataclass
class OptimizerPartitions:
    """An optimizer whose state is split over the processes (DeepSpeed ZeRO): every process writes and reads its
    own part; ``barrier`` keeps them in step around the main process's folder work."""

    rank: int
    processes: int
    barrier: Callable[[], None]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters de-duplicates tied weights, which safetensors cannot store twice
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any, keep: int = 2, *,
                    sharded: bool = False, write: bool = True, data_state: dict | None = None,
                    partitions: OptimizerPartitions | None = None, recipe: dict | None = None) -> Path | None:
    """Write the checkpoint of ``step``. A sharded (FSDP) model is first gathered to full tensors, and a partitioned
    optimizer (ZeRO) writes one file per process: in both cases every process calls this, and only the one with
    ``write`` writes the rest. ``data_state``: where a trainer that streams its data stands in the stream (the
    step alone fixes the order of data that is planned per epoch). ``recipe``: the run's settings, which a resume
    is checked against (:func:`recipe_changes`)."""
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    if partitions is not None:
        if write:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        partitions.barrier()
        torch.save(optimizer.state_dict(), tmp / f"{PARTITION}{partitions.rank:05d}.pt")
        partitions.barrier()
    if sharded:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        weights = {n: t for n, t in full_model_state(model).items() if n in trainable}
        optimizer_state = full_optimizer_state(model, optimizer)
    elif write:
        weights = trainable_state(model)
        optimizer_state = optimizer.state_dict() if partitions is None else None
    if not write:
        return None
    if partitions is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(optimizer_state, tmp / "optimizer.pt")
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **({"data": data_state} if data_state else {}),
                                                **({"recipe": recipe} if recipe is not None else {})}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").exists())
    return found[-1] if found else None


# settings a resumed run may change: where and how it reports, and how long it runs (a run may be extended)
RESUMABLE_CHANGES = {"train.output_dir", "train.resume", "train.resume_force", "train.max_steps", "train.epochs",
                     "train.progress", "train.report_to", "train.log_every", "train.save_every", "train.eval_every",
                     "train.threads", "data.num_proc", "data.cache_dir"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_changes(path: Path, recipe: dict) -> list[str]:
    """The settings of ``recipe`` that differ from those the checkpoint at ``path`` was written with (``key: saved →
    now``), except those a resumed run may change; none for a checkpoint that recorded no recipe."""
    saved = json.loads((path / "state.json").read_text()).get("recipe")
    if saved is None:
        return []
    before, now = _flat(saved), _flat(recipe)
    return [f"{key}: {before.get(key)!r} → {now.get(key)!r}" for key in sorted(set(before) | set(now))
            if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key)]


def data_state_of(path: Path) -> dict | None:
    """The stream position saved with a checkpoint (None for data planned per epoch)."""
    return json.loads((path / "state.json").read_text()).get("data")


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, *, sharded: bool = False,
                    partitions: OptimizerPartitions | None = None) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step to continue after."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{path}: checkpoint parameters not in this model (different recipe?): {missing[:3]}")
    saved_partitions = sorted(path.glob(f"{PARTITION}*.pt"))
    _check_partitions(path, len(saved_partitions), partitions)
    if sharded:
        load_full_state(model, weights, optimizer, torch.load(path / "optimizer.pt", weights_only=True))
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        if partitions is not None:
            with torch.serialization.safe_globals(partition_state_globals()):
                load_partitions(optimizer, [torch.load(f, weights_only=True) for f in saved_partitions])
        else:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())["step"]


def _check_partitions(path: Path, saved: int, partitions: OptimizerPartitions | None) -> None:
    """A checkpoint resumes only the way its optimizer state was kept: whole, or split over as many processes."""
    if partitions is None and saved:
        raise RuntimeError(f"{path}: written by a DeepSpeed ZeRO run ({saved} optimizer partitions); resume it with "
                           "the same DeepSpeed launch, or start afresh (train.resume=false)")
    if partitions is not None and not saved:
        raise RuntimeError(f"{path}: written without DeepSpeed ZeRO (one optimizer.pt); resume it without "
                           "DeepSpeed, or start afresh (train.resume=false)")
    if partitions is not None and saved != partitions.processes:
        raise RuntimeError(f"{path}: its optimizer state is split over {saved} processes (DeepSpeed ZeRO); resume "
                           f"with as many (accelerate launch --num_processes {saved})")
