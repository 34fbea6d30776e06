"""Batched local generation over a list of prompts, greedy by default: the serving engine, run in the caller's thread.

Prompts are rendered with the model's chat template by the caller; here they are token ids (for an
encoder-decoder model, the encoder's input). They go through :class:`tuneful.infer.engine.GenerationEngine`
— the same continuous batching, KV cache handling and per-row sampling ``tuneful serve`` uses — in order of
length (neighbours in a batch need little padding), at most ``batch_size`` decoded together; a row that ends
leaves the batch and the next prompt takes its place. Each answer is cut at the first stop token; ``stopped``
tells whether the model ended its turn before the length limit.

Sampling draws from the whole distribution at ``temperature`` (no top-k), each prompt with its own generator
seeded from ``seed`` and its position, so a prompt's sample does not depend on which prompts share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..tokenization.masking import pad_id
from .batch_rows import left_padded
from .engine import Decoding, GenerationEngine, GenerationRequest, Sampling
from .prefix_cache import PrefixCache

__all__ = ["Generation", "generate", "left_padded"]


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    stopped: bool  # ended with a stop token before max_new_tokens
    stop_token: int | None = None  # which stop token ended it


def row_seed(seed: int, index: int) -> int:
    """The sampling seed of the ``index``-th prompt of a call seeded ``seed``."""
    return (seed * 1_000_003 + index) % 2**63


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, stop_ids: Sequence[int],
             max_new_tokens: int = 64, batch_size: int = 16, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0, progress: str | None = None,
             prefix_cache: PrefixCache | None = None, server: Any = None) -> list[Generation]:
    """``progress``: a label for a progress bar over prompts (none when None). ``prefix_cache``: keys and values of
    earlier calls' finished sequences to start from, and where this call's are kept (an episode's turns share one).
    ``server``: a :class:`~tuneful.infer.vllm_server.VLLMServer` that samples instead of ``model`` (the same rows,
    seeds and stop ids; the server keeps its own prefix cache). Leaves ``model`` in eval mode."""
    if server is not None:
        return server.generate(prompts, tokenizer=tokenizer, stop_ids=stop_ids, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature, seed=seed)
    model.eval()
    stops = list(stop_ids)
    engine = GenerationEngine(Decoding(model, stops, pad_id(tokenizer, stops)), max_batch=batch_size,
                              prefix_cache=prefix_cache)
    sampling = Sampling(temperature, 1.0) if do_sample else Sampling()
    requests = [GenerationRequest(list(p), max_new_tokens, sampling, row_seed(seed, i) if do_sample else None,
                                  stream=False) for i, p in enumerate(prompts)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=progress, unit="prompt", leave=False)
    engine.run([requests[i] for i in order], on_finished=None if bar is None else lambda n: bar.update(n - bar.n))
    if bar is not None:
        bar.close()
    results = []
    for request in requests:
        ids = list(request.tokens())
        stopped = request.finish_reason == "stop"
        results.append(Generation(tokenizer.decode(ids, skip_special_tokens=True), ids, stopped,
                                  request.stop_token if stopped else None))
    return results
