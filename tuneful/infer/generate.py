"""Batched local generation with the KV cache (transformers ``generate``), greedy by default.

Prompts are rendered with the model's chat template by the caller; here they are token ids (for an
encoder-decoder model, the encoder's input).
Batches are formed from prompts of similar length (left padding), and each answer is cut at the
first stop token. ``stopped`` tells whether the model ended its turn before the length limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..tokenization.masking import pad_id


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    stopped: bool  # ended with a stop token before max_new_tokens
    stop_token: int | None = None  # which stop token ended it


def left_padded(prompts: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with left padding: every prompt ends where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, stop_ids: Sequence[int],
             max_new_tokens: int = 64, batch_size: int = 16, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0, progress: str | None = None) -> list[Generation]:
    """``progress``: a label for a progress bar over batches (none when None)."""
    model.eval()
    pad = pad_id(tokenizer, stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    for start in starts:
        chunk = order[start : start + batch_size]
        ids, mask = left_padded([prompts[i] for i in chunk], pad)
        width = ids.shape[1]
        sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             eos_token_id=list(stop_ids), pad_token_id=pad, **sampling)
        for row, i in enumerate(chunk):
            # a causal LM's output continues its prompt; an encoder-decoder's starts at the decoder's start token
            new = out[row, 1:].tolist() if encoder_decoder else out[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stop_ids), None)
            kept = new if cut is None else new[:cut]
            stop = new[cut] if cut is not None else None
            results[i] = Generation(tokenizer.decode(kept, skip_special_tokens=True), kept, cut is not None, stop)
    return results  # type: ignore[return-value]
