"""The reference policy π_ref of DPO-style losses, three ways.

- ``frozen``: a second copy of the starting model, in eval mode without gradients.
- ``adapters-off``: with LoRA, the policy itself with its adapters switched off for the reference
  forward: the base weights *are* the reference, so no second copy is held in memory.
- ``precomputed``: one pass over every pair before training; the log-probs are cached on disk
  (safetensors) under a key made of the reference weights and the tokenized pairs, and reused by
  every epoch and by a resumed run. No reference model exists during training at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.losses import gathered_logps
from ..models.loading import DecoderWithHead
from .pairs import COLLATORS, PairBatch, PreferenceExample


class ResponseLogps(DecoderWithHead):
    """One decoder pass over a PairBatch's inputs → (response log-prob sums, token counts), chosen then rejected [2B]."""

    def forward(self, input_ids, attention_mask, position_ids, sources, targets, scores, pairs):  # type: ignore[override]
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        return gathered_logps(hidden.reshape(-1, hidden.shape[-1]), sources, targets, scores, 2 * pairs,
                              self.lm_head, self.chunk_size)


def model_fingerprint(model: nn.Module, samples_per_tensor: int = 65536) -> str:
    """A hash of the weights (names, shapes, dtypes and an evenly strided sample of every tensor).

    Fine-tuning moves essentially every weight, so a sample distinguishes two checkpoints of one
    architecture while hashing a 7B model in seconds rather than reading all of it.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples_per_tensor)].float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def pairs_fingerprint(examples: Sequence[PreferenceExample]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.prompt_ids, e.chosen_ids, e.chosen_mask, e.rejected_ids, e.rejected_mask]).encode())
    return digest.hexdigest()


def reference_logps(module: ResponseLogps, examples: Sequence[PreferenceExample], *, batch_size: int, pad_id: int,
                    device: torch.device, layout: str = "shared-prompt",
                    autocast: Callable[[], Any] = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of every pair under ``module``: (chosen [N], rejected [N]), on the CPU."""
    reference = ModelReference(module, adapters_off=False, autocast=autocast)
    chosen, rejected = [], []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        batch = COLLATORS[layout](part, pad_id).to(device)
        c, r = reference("", range(len(part)), batch).cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    empty = torch.zeros(0)
    return (torch.cat(chosen) if chosen else empty), (torch.cat(rejected) if rejected else empty)


def _adapters_disabled(module: ResponseLogps) -> Any:
    if not hasattr(module.model, "disable_adapter"):
        raise ValueError("reference=adapters-off needs a PEFT (LoRA) model; set lora.enabled=true")
    return module.model.disable_adapter()


def cached_reference(folder: Path, key: str, compute: Callable[[], dict[str, torch.Tensor]], *,
                     barrier: Callable[[], None], is_main: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """The cached tensors for ``key``, computed (by the main process) and written atomically when missing.

    Returns (tensors, whether they came from the cache). Two barriers around the check keep every
    process in step whether or not the file already exists.
    """
    path = folder / f"reference-{key[:24]}.safetensors"
    barrier()
    hit = path.exists()
    if not hit and is_main:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in compute().items()}, str(tmp))
        os.replace(tmp, path)
    barrier()
    return load_file(str(path)), hit


class ModelReference:
    """Reference log-probs computed on the fly by a model (a frozen copy, or the policy with adapters off)."""

    def __init__(self, module: ResponseLogps, *, adapters_off: bool, autocast: Callable[[], Any]):
        self.module, self.adapters_off, self.autocast = module, adapters_off, autocast

    @torch.no_grad()
    def __call__(self, split: str, indices: Sequence[int], batch: PairBatch) -> torch.Tensor:
        was_training = self.module.training
        self.module.eval()  # no dropout in the reference
        with _adapters_disabled(self.module) if self.adapters_off else nullcontext(), self.autocast():
            sums, _ = self.module(**batch.inputs())
        self.module.train(was_training)
        return sums.float()


class PrecomputedReference:
    """Reference log-probs looked up by pair index in tensors computed before training."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __call__(self, split: str, indices: Sequence[int], batch: PairBatch) -> torch.Tensor:
        at = torch.tensor(list(indices), dtype=torch.long)
        both = torch.cat([self.tensors[f"{split}.chosen"][at], self.tensors[f"{split}.rejected"][at]])
        return both.to(batch.input_ids.device)
