"""How a causal LM turns its decoder's hidden states into logits and its loss — measured on the model itself.

Boundary: a transformers causal LM and tensors in, a :class:`HeadPlan` out; nothing about data or trainers.

tuneful runs the decoder and projects only the positions a loss needs (``models/loading.py``). That is exact only if
the model's own forward does nothing else between the decoder and the loss. Rather than list the attributes
architectures use for it (``logits_scaling`` divides in Granite and multiplies in HyperCLOVA X, ``logit_scale``,
``lm_head_multiplier``, ``final_logit_softcapping`` ...), :func:`probe_head` runs the model's own forward once on a
few tokens with its vocabulary projection replaced by known numbers and reads what came out:

- the head's input must be the decoder's last hidden state (else: the model's own forward, ``model_forward``);
- the logits must be ``cap * tanh(scale * z / cap)`` of the projection ``z`` (``cap`` may be absent, ``scale`` 1):
  a scale and a soft-cap in either order fit this form; anything else is ``model_forward`` too;
- the MoE load-balancing loss: on when the config asks for router logits (``output_router_logits``), and then
  taken from the model's own forward (``aux_loss``), so it is computed by the model's own code, never a copy.

``model_forward`` costs memory (every position reaches the vocabulary), never correctness.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SPLIT = "split"
MODEL_FORWARD = "model_forward"
REFUSED = "refused"  # neither way gives the model's own loss: trainers refuse the model by name


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (adapters stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass(frozen=True)
class HeadPlan:
    """What the loss modules do after the decoder. ``mode``: ``split`` (decoder, then the projection at the positions
    a loss reads, then ``scale`` and ``softcap``) or ``model_forward`` (the model's own forward, all positions)."""

    mode: str
    scale: float = 1.0
    softcap: float | None = None
    aux_coefficient: float | None = None  # router_aux_loss_coef when the model adds its MoE load-balancing loss
    reason: str = ""  # why model_forward
    keeps_logits: bool = False  # the forward takes logits_to_keep (an aux-loss pass projects one position only)

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def describe(self) -> str:
        if self.mode == REFUSED:
            return f"refused: {self.reason}"
        if self.mode == MODEL_FORWARD:
            return f"the model's own forward ({self.reason})"
        parts = [f"x {self.scale:g}"] if self.scale != 1.0 else []
        parts += [f"soft-cap {self.softcap:g}"] if self.softcap else []
        return "split: decoder, projection at trained positions" + (f", then {', '.join(parts)}" if parts else "")


def aux_coefficient(config: Any) -> float | None:
    """The MoE load-balancing coefficient when the config asks the forward for router logits (its own loss adds
    ``coefficient x aux``); None otherwise."""
    if not getattr(config, "output_router_logits", False):
        return None
    coefficient = getattr(config, "router_aux_loss_coef", None)
    return float(coefficient) if coefficient is not None else None


def probe_ids(config: Any, device: torch.device, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """Deterministic token ids for probes: one [1, n] tensor per length, ids away from 0 (often special)."""
    vocab = int(getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size", 0)
                or getattr(config, "vocab_size", 0) or 32)
    generator = torch.Generator().manual_seed(1234)
    low = min(3, vocab - 1)
    return [torch.randint(low, vocab, (1, n), generator=generator).to(device) for n in lengths]


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is not None:
        return hidden
    return output[0] if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) else None


def _fit_transform(z: torch.Tensor, logits: torch.Tensor) -> tuple[float, float | None] | None:
    """(scale, softcap) with logits == cap * tanh(scale * z / cap), or None when no such pair fits."""
    z, logits = z.double().reshape(-1), logits.double().reshape(-1)
    small = z.abs() < 4e-3
    scale = float((logits[small] * z[small]).sum() / (z[small] ** 2).sum())
    if not torch.allclose(logits[small], scale * z[small], rtol=1e-4, atol=1e-9) or scale == 0.0:
        return None
    scale = float(torch.tensor(scale, dtype=torch.float32))  # the model multiplies in its own precision
    if torch.allclose(logits, scale * z, rtol=1e-4, atol=1e-4):
        return scale, None
    at = int(z.abs().argmax())
    target, linear = abs(float(logits[at])), abs(scale * float(z[at]))
    if not 0 < target < linear:
        return None
    low, high = target, target * 1e6  # cap * tanh(linear / cap) rises with cap towards linear
    for _ in range(200):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if middle * math.tanh(linear / middle) < target else (low, middle)
    cap = math.sqrt(low * high)
    cap = float(f"{cap:.5g}")  # caps are round numbers (30, 50); a fit agrees with one to ~1e-6
    if torch.allclose(logits, cap * torch.tanh(scale * z / cap), rtol=1e-4, atol=1e-4):
        return scale, cap
    return None


def probe_head(model: nn.Module) -> HeadPlan:
    """The :class:`HeadPlan` of ``model``, measured by one no-grad forward over 8 tokens (see the module's text)."""
    causal = unwrap_causal_lm(model)
    config = causal.config
    coefficient = aux_coefficient(config)
    keeps = "logits_to_keep" in inspect.signature(causal.forward).parameters
    try:
        decoder, head = causal.get_decoder(), causal.get_output_embeddings()
    except (AttributeError, NotImplementedError) as error:
        return HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, reason=f"no decoder/head split ({error})")
    if decoder is None or head is None or decoder is causal:
        return HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, reason="no separate decoder and output head")
    seen: dict[str, Any] = {}

    def on_decoder(module: nn.Module, args: Any, output: Any) -> None:
        seen.setdefault("hidden", _first_tensor(output))

    def on_head(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        seen["head_input"] = args[0] if args else None
        z = torch.linspace(-40.0, 40.0, output.numel(), dtype=torch.float64)
        z[1::2] *= 1e-4  # half the entries tiny (where any soft-cap is linear), half up to +-40 (where it bends)
        z = z.reshape(output.shape)[..., torch.randperm(output.shape[-1], generator=torch.Generator().manual_seed(0))]
        seen["z"] = z.to(output.dtype).to(output.device)
        return seen["z"]

    (ids,) = probe_ids(config, model_device(causal), (8,))
    handles = [decoder.register_forward_hook(on_decoder), head.register_forward_hook(on_head)]
    was_training = causal.training
    causal.eval()
    try:
        with torch.no_grad():
            extra = {"output_router_logits": True} if coefficient is not None else {}
            output = causal(input_ids=ids, use_cache=False, **extra)
    except Exception as error:  # a forward that cannot run on a probe: never guess, use the model's own
        return HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, keeps_logits=keeps,
                        reason=f"the probe forward failed: {type(error).__name__}: {str(error)[:120]}")
    finally:
        for handle in handles:
            handle.remove()
        causal.train(was_training)
    hidden, head_input, logits = seen.get("hidden"), seen.get("head_input"), getattr(output, "logits", None)
    if coefficient is not None and getattr(output, "aux_loss", None) is None:
        coefficient = None  # the config names a coefficient but this forward adds no auxiliary loss
    if hidden is None or head_input is None or logits is None:
        return HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, keeps_logits=keeps,
                        reason="the forward does not pass through the decoder and the output head once each")
    if head_input.shape != hidden.shape or not torch.equal(head_input, hidden):
        return verified(causal, HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, keeps_logits=keeps,
                        reason="the output head reads something other than the decoder's last hidden state"), ids)
    if logits.shape != seen["z"].shape:
        return verified(causal, HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, keeps_logits=keeps,
                        reason="the logits are not one projection of the hidden states"), ids)
    fitted = _fit_transform(seen["z"].float(), logits.float())
    if fitted is None:
        return verified(causal, HeadPlan(MODEL_FORWARD, aux_coefficient=coefficient, keeps_logits=keeps,
                        reason="the logits are transformed after the projection in a way tuneful does not "
                               "reproduce"), ids)
    scale, cap = fitted
    return verified(causal, HeadPlan(SPLIT, scale=1.0 if abs(scale - 1.0) < 1e-6 else scale, softcap=cap,
                                     aux_coefficient=coefficient, keeps_logits=keeps), ids)


def verified(causal: nn.Module, plan: HeadPlan, ids: torch.Tensor) -> HeadPlan:
    """The last check, end to end on the probe tokens: tuneful's loss (next-token NLL of the split's logits, or of
    the model's own logits, + coefficient x its ``aux_loss``) against the model's own ``loss``. A split that
    disagrees falls back to the model's forward; a model whose own loss is something else (no shift, positions
    numbered its own way, another MoE term) is refused."""
    was_training = causal.training
    causal.eval()
    try:
        with torch.no_grad():
            extra = {"output_router_logits": True} if plan.aux_coefficient is not None else {}
            output = causal(input_ids=ids, labels=ids, use_cache=False, **extra)
            numbered = causal(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=ids.device)[None],
                              use_cache=False, **extra).logits
            logits = output.logits
            if plan.mode == SPLIT:
                hidden = _first_tensor(causal.get_decoder()(input_ids=ids, use_cache=False))
                logits = plan.transform(causal.get_output_embeddings()(hidden))
            mine = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            if plan.aux_coefficient is not None:
                mine = mine + plan.aux_coefficient * output.aux_loss.float()
    except Exception as error:
        return HeadPlan(REFUSED, reason=f"its loss could not be checked: {type(error).__name__}: {str(error)[:100]}")
    finally:
        causal.train(was_training)
    own = output.loss
    exact = output.logits.dtype == torch.float32  # bf16 / 4-bit weights: the same sums, rounded coarser
    rtol, atol = (1e-5, 1e-6) if exact else (1e-2, 1e-3)
    if own is not None and torch.allclose(mine, own.float(), rtol=rtol, atol=atol):
        if not torch.allclose(numbered.float(), output.logits.float(), rtol=10 * rtol, atol=10 * atol):
            return HeadPlan(REFUSED, reason="it numbers positions its own way (tuneful passes 0..n-1 position ids)")
        return plan
    if plan.mode == SPLIT:
        return verified(causal, HeadPlan(MODEL_FORWARD, aux_coefficient=plan.aux_coefficient,
                                         keeps_logits=plan.keeps_logits,
                                         reason="the split's loss differs from the model's own on a probe"), ids)
    return HeadPlan(REFUSED, reason="its own loss is not next-token cross-entropy over its logits"
                    + (" plus coefficient x aux_loss" if plan.aux_coefficient is not None else ""))
