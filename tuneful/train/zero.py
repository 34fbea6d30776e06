"""DeepSpeed ZeRO (stages 1 and 2) through accelerate, for the training core.

Knows the accelerator, the DeepSpeed engine and the optimizer's partitions; nothing about data or
losses. ``accelerate launch`` with a DeepSpeed config (``recipes/accelerate/deepspeed_zero2.yaml``)
turns it on; the recipe stays the one source of the batch, accumulation and clipping settings, which
are written into DeepSpeed's config here before ``accelerate.prepare`` builds the engine.

The loop keeps its own rules under DeepSpeed: it marks the accumulation boundary itself (the last
micro-batch of its step), backpropagates losses already normalised by the step's global counts (so
DeepSpeed's own division by the accumulation steps is turned off), and every process runs as many
micro-batches as the busiest (ZeRO-2 reduces gradients during each backward). ``engine.step()``
clips to ``train.max_grad_norm``, steps and zeroes the gradients.

Stage 3 is refused: it partitions the weights themselves, which every forward would gather and the
final model would need gathered; ``train.fsdp=true`` is tuneful's tested way to shard weights.
Checkpoints keep tuneful's layout (full trainable weights, written once) with one optimizer
partition per process, so a run resumes exactly on the same number of processes.
"""

from __future__ import annotations

import os
from typing import Any


def deepspeed_launch() -> bool:
    """Whether this process was started by ``accelerate launch`` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def uses_deepspeed(acc: Any) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def configure_zero(acc: Any, train: Any, world: int) -> int:
    """Write the recipe's batch, accumulation and clipping into the DeepSpeed config accelerate holds; returns
    the ZeRO stage. Refuses what this path does not run, naming the setting."""
    config = acc.state.deepspeed_plugin.deepspeed_config
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    if stage not in (1, 2):
        raise ValueError(f"DeepSpeed zero_stage={stage}: tuneful runs ZeRO stages 1 and 2 (optimizer state and "
                         "gradients partitioned); to shard the weights too, launch without DeepSpeed and set "
                         "train.fsdp=true, and for plain data parallelism launch without DeepSpeed "
                         "(recipes/accelerate/multi_gpu.yaml)")
    if train.fsdp:
        raise ValueError("train.fsdp=true under a DeepSpeed launch: pick one — train.fsdp=false with the DeepSpeed "
                         "config, or launch with recipes/accelerate/multi_gpu.yaml for FSDP")
    config.update(train_micro_batch_size_per_gpu=train.micro_batch_size,
                  gradient_accumulation_steps=train.grad_accum,
                  train_batch_size=train.micro_batch_size * train.grad_accum * world,
                  gradient_clipping=float(train.max_grad_norm), steps_per_print=10**9)
    return stage


def zero_step(engine: Any, max_grad_norm: float) -> float:
    """DeepSpeed's optimizer step at the boundary the loop marked: clip (from its config), step, zero the
    gradients. Returns the gradient norm before clipping (0.0 when clipping is off, as without DeepSpeed)."""
    engine.step()
    if max_grad_norm <= 0:
        return 0.0
    norm = engine.get_global_grad_norm()
    return float(norm.item() if hasattr(norm, "item") else norm)


def partition_state_globals() -> list:
    """The classes a ZeRO optimizer's ``state_dict`` pickles besides tensors and containers: allowed by name when
    a checkpoint is read back with ``torch.load(weights_only=True)``."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_partitions(optimizer: Any, states: list[dict]) -> None:
    """Restore every process's partition (the list is in rank order), fp32 master weights included."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper → DeepSpeed's ZeRO optimizer
    inner.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)
