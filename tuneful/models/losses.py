"""Loss functions, each small and standalone.

SFT uses the token-level negative log-likelihood of the trained tokens (the standard causal-LM
objective; e.g. Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", and Zhou et al. 2023, LIMA). It returns a *sum* plus the token count so that gradient
accumulation divides by the number of trained tokens in the whole optimizer step, not per
micro-batch (per-micro-batch means weight short examples more; see the gradient-accumulation bug
report of Unsloth and Hugging Face, Oct 2024).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.types import IGNORE_INDEX


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions whose next token is trained, those next tokens): position t predicts labels[t+1]."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return keep, targets[keep]


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token NLL over trained tokens, and their count, from full logits [B, T, V]."""
    keep, targets = shifted_targets(labels)
    selected = logits[:, :-1][keep]
    return F.cross_entropy(selected.float(), targets, reduction="sum"), int(targets.numel())


def selected_nll_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 0,
) -> tuple[torch.Tensor, int]:
    """The same sum computed from final hidden states, projecting only the trained positions.

    Untrained positions (prompts, padding: often most of a row) never reach the vocabulary
    projection. With ``chunk_size > 0`` the projection runs in checkpointed chunks so at most
    ``chunk_size x vocab`` logits exist at once, in forward and in backward.
    """
    keep, targets = shifted_targets(labels)
    states = hidden[:, :-1][keep]
    if chunk_size <= 0 or states.shape[0] <= chunk_size:
        return F.cross_entropy(lm_head(states).float(), targets, reduction="sum"), int(targets.numel())

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(lm_head(h).float(), y, reduction="sum")

    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, states.shape[0], chunk_size):
        end = start + chunk_size
        total = total + checkpoint(chunk_loss, states[start:end], targets[start:end], use_reentrant=False)
    return total, int(targets.numel())


def token_logps(
    states: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 0,
) -> torch.Tensor:
    """log p(targets[i] | the state at sources[i]) for each i: [len(targets)] fp32.

    ``states`` are flattened final hidden states [positions, hidden]. Only the listed states reach
    the vocabulary projection (in checkpointed chunks when ``chunk_size > 0``, so at most
    ``chunk_size x vocab`` logits exist at once); log-softmax runs in fp32.
    """
    picked_states = states.index_select(0, sources)

    def chunk_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(lm_head(h).float(), dim=-1).gather(1, y.unsqueeze(1))[:, 0]

    if chunk_size <= 0 or picked_states.shape[0] <= chunk_size:
        return chunk_logps(picked_states, targets)
    return torch.cat([checkpoint(chunk_logps, picked_states[s : s + chunk_size], targets[s : s + chunk_size],
                                 use_reentrant=False) for s in range(0, picked_states.shape[0], chunk_size)])


def gathered_logps(
    states: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    n_scores: int,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of :func:`token_logps` grouped by score: ([n_scores] fp32 sums, [n_scores] token counts).

    The log-prob of token ``targets[i]`` joins sum ``scores[i]``. Preference losses need one
    log-probability per response, and a response's tokens need not be one contiguous row (a shared
    prompt predicts the first token of both replies).
    """
    picked = token_logps(states, sources, targets, lm_head, chunk_size)
    sums = torch.zeros(n_scores, dtype=torch.float32, device=states.device).index_add(0, scores, picked)
    counts = torch.zeros(n_scores, dtype=torch.long, device=states.device).index_add(0, scores, torch.ones_like(scores))
    return sums, counts


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed next-token NLL of ``states @ weight.T`` (then ``scale`` and ``softcap``, as the model's head does),
    chunk by chunk, with the gradients of ``states`` and ``weight`` computed in the forward pass.

    The idea of fused linear cross-entropy (Liger Kernel, Hsu et al. 2024, arXiv:2410.10989), written here in
    plain PyTorch because Liger's kernels are Triton (GPU only): no chunk's logits outlive its iteration, and
    nothing is recomputed in backward — the checkpointed chunks of :func:`selected_nll_sum` run the projection
    twice. Backward only scales the stored gradients by the incoming one.
    """

    @staticmethod
    def forward(ctx, states, weight, targets, scale: float, softcap: float | None, chunk_size: int):
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        grad_states = torch.empty_like(states) if states.requires_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        for start in range(0, states.shape[0], chunk_size):
            h, y = states[start : start + chunk_size], targets[start : start + chunk_size]
            z = (h @ weight.t()).float()
            slope = None
            if scale != 1.0:
                z = z * scale
            if softcap:
                capped = torch.tanh(z / softcap)
                slope = 1.0 - capped * capped  # d(cap * tanh(z / cap)) / dz
                z = capped * softcap
            log_norm = torch.logsumexp(z, dim=-1)
            total += (log_norm - z.gather(1, y[:, None])[:, 0]).sum()
            grad = torch.softmax(z, dim=-1)
            grad[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            del z
            if slope is not None:
                grad *= slope
            if scale != 1.0:
                grad *= scale
            grad = grad.to(weight.dtype)
            if grad_states is not None:
                grad_states[start : start + chunk_size] = (grad @ weight).to(states.dtype)
            if grad_weight is not None:  # accumulated in place, in fp32
                grad_weight.addmm_(grad.t().float(), h.float())
        ctx.save_for_backward(grad_states, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_states, grad_weight = ctx.saved_tensors
        states = grad_states * grad_output.to(grad_states.dtype) if grad_states is not None else None
        weight = (grad_weight * grad_output).to(ctx.weight_dtype) if grad_weight is not None else None
        return states, weight, None, None, None, None


def fused_linear_nll_sum(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, *, scale: float = 1.0,
                         softcap: float | None = None, chunk_size: int = 1024) -> tuple[torch.Tensor, int]:
    """:func:`selected_nll_sum` for a head that is one bias-free linear layer (+ scale, soft-cap), through
    :class:`_LinearCrossEntropy`: the same sum and gradients, at most ``chunk_size x vocab`` logits at once and
    the projection run once."""
    keep, targets = shifted_targets(labels)
    states = hidden[:, :-1][keep]
    return _LinearCrossEntropy.apply(states, weight, targets, scale, softcap, chunk_size), int(targets.numel())
