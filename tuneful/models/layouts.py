"""Which batch layouts keep examples apart in a model — measured on the model itself, with its window read from
its config.

Boundary: a transformers causal LM in, a :class:`LayoutSupport` out; the collators live in ``tokenization``/the
trainers and only ask this.

Two layouts put several sequences in one row:
- **packing** (SFT): examples end to end, position ids restarting at 0 for each. Preferred: no mask from tuneful
  (``position-ids``): transformers' own mask builder finds the examples from the restarted positions and keeps each
  layer's own rule (causal, sliding window per layer type). Else tuneful's block-diagonal 4-D mask
  (``block-mask``), only for models without a sliding window (a custom mask reaches every layer unchanged).
- **shared prompt** (DPO, KTO, reward models, GRPO): ``prompt | reply 1 | reply 2`` with a 4-D mask, so a reply sees
  the prompt and not the other reply. Needs the same: every layer obeys the mask, and no sliding window narrower
  than a row.
Layers with state that no attention mask reaches (Mamba, gated delta-net, short convolutions) make both read across
examples; the probes catch that, whatever the layer is called: a packed or shared row must give each example's
logits as the example alone does, on the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .head import model_device, probe_ids, unwrap_causal_lm

POSITION_IDS = "position-ids"
BLOCK_MASK = "block-mask"


@dataclass(frozen=True)
class LayoutSupport:
    packing: str | None  # POSITION_IDS, BLOCK_MASK, or None (refused: packing_reason)
    packing_reason: str
    shared_prompt: bool  # a 4-D mask keeps two replies of one prompt apart (for rows up to sliding_window)
    shared_prompt_reason: str
    sliding_window: int | None  # the narrowest attention window of the model's layers, None: full attention

    def shared_prompt_problem(self, max_length: int, *, aux_loss: bool = False) -> str | None:
        """Why one row ``prompt | reply | reply`` of up to ``max_length`` tokens would be wrong here; None: it is fine."""
        if not self.shared_prompt:
            return self.shared_prompt_reason
        if self.sliding_window is not None and max_length > self.sliding_window:
            return (f"its sliding window ({self.sliding_window} tokens) is narrower than a row (max_length "
                    f"{max_length}), and a custom mask reaches every layer unchanged")
        if aux_loss:
            return "its MoE load-balancing loss reads a 2-D padding mask, not a 4-D one"
        return None


def sliding_window(config: Any) -> int | None:
    """The attention window of the model's sliding layers (None when every layer attends to the whole row)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "use_sliding_window", True) is False:
        return None
    windows = [getattr(text, name, None) for name in ("sliding_window", "attention_window_size", "sliding_window_size")]
    windows = [w for w in windows if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    layer_types = getattr(text, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and layer_types and not any("sliding" in str(t) for t in layer_types):
        return None
    return min(windows) if windows else None


def attention_mask_for(model: nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A collator's mask in the form the model's attention kernel reads.

    Custom [B, 1, T, T] masks (packing, shared prompts) are boolean, True = attend, which is what
    SDPA takes. Eager attention *adds* its mask to the scores, so a boolean mask there would let
    every token see every other one: it gets the additive form (0 / most negative). Flash-attention
    takes no such mask at all.
    """
    if mask is None or mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    implementation = str(getattr(unwrap_causal_lm(model).config, "_attn_implementation", "sdpa"))
    if implementation.startswith("flash"):
        raise ValueError(f"attention '{implementation}' cannot take a custom attention mask (packing with block "
                         "masks, or a DPO shared prompt); use model.attn_implementation=sdpa, or the flash-friendly "
                         "layout (SFT: packing restarts position ids; DPO: train.pair_layout=two-rows)")
    if implementation == "sdpa":
        return mask
    dtype = getattr(unwrap_causal_lm(model), "dtype", torch.float32)  # transformers: the first floating dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _logits(causal: nn.Module, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The decoder's last hidden states (what every head reads, a causal LM's or a reward model's score), else the
    model's own logits."""
    try:
        decoder = causal.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = None
    if decoder is not None and decoder is not causal and not isinstance(decoder, nn.Linear):
        try:
            return decoder(input_ids=ids, use_cache=False, **kwargs).last_hidden_state.float()
        except TypeError:  # a decoder with another signature: the model's own forward below
            decoder = None
    if hasattr(causal.config, "output_router_logits"):  # the logits only: the MoE loss has its own rule (head.py)
        kwargs["output_router_logits"] = False
    return causal(input_ids=ids, use_cache=False, **kwargs).logits.float()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4))


def probe_layouts(model: nn.Module) -> LayoutSupport:
    """The :class:`LayoutSupport` of ``model``: a few no-grad forwards over 7 + 6 tokens."""
    causal = unwrap_causal_lm(model)
    window = sliding_window(causal.config)
    implementation = str(getattr(causal.config, "_attn_implementation", "sdpa"))
    first, second, third = probe_ids(causal.config, model_device(causal), (7, 6, 3))
    was_training = causal.training
    causal.eval()
    try:
        with torch.no_grad():
            alone = [_logits(causal, first), _logits(causal, second)]
            row = torch.cat([first, second], dim=1)
            positions = torch.cat([torch.arange(7), torch.arange(6)])[None].to(row.device)

            def kept_apart(logits: torch.Tensor) -> bool:
                return _same(logits[:, :7], alone[0]) and _same(logits[:, 7:], alone[1])

            packing, packing_reason = None, ""
            try:
                if kept_apart(_logits(causal, row, position_ids=positions)):
                    packing = POSITION_IDS
            except Exception as error:
                packing_reason = f"{type(error).__name__}: {str(error)[:100]}"
            block_ok = False
            if packing is None and not implementation.startswith("flash"):
                segment = torch.tensor([0] * 7 + [1] * 6, device=row.device)
                block = torch.tril(torch.ones(13, 13, dtype=torch.bool, device=row.device)) & \
                    (segment[:, None] == segment[None, :])
                try:
                    block_ok = kept_apart(_logits(causal, row, position_ids=positions,
                                                  attention_mask=attention_mask_for(causal, block[None, None])))
                except Exception as error:
                    packing_reason = f"{type(error).__name__}: {str(error)[:100]}"
                if block_ok and window is None:
                    packing = BLOCK_MASK
            if packing is None and not packing_reason:
                packing_reason = ("packed examples read the ones before them: some layers keep state that no "
                                  "attention mask reaches (recurrent or convolutional layers)"
                                  if not block_ok else "its sliding window cannot be kept with a custom mask")
            shared, shared_reason = False, ""
            if implementation.startswith("flash"):
                shared_reason = f"attention '{implementation}' takes no custom 4-D mask"
            else:
                prompt, reply_a, reply_b = first[:, :4], second[:, :3], third
                row = torch.cat([prompt, reply_a, reply_b], dim=1)
                segment = torch.tensor([0] * 4 + [1] * 3 + [2] * 3, device=row.device)
                mask = torch.tril(torch.ones(10, 10, dtype=torch.bool, device=row.device)) & \
                    ((segment[:, None] == segment[None, :]) | (segment[None, :] == 0))
                positions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 4, 5, 6], device=row.device)[None]
                try:
                    logits = _logits(causal, row, position_ids=positions,
                                     attention_mask=attention_mask_for(causal, mask[None, None]))
                    with_a = _logits(causal, torch.cat([prompt, reply_a], dim=1))
                    with_b = _logits(causal, torch.cat([prompt, reply_b], dim=1))
                    shared = _same(logits[:, :7], with_a) and _same(logits[:, 7:], with_b[:, 4:])
                    if not shared:
                        shared_reason = ("the second reply reads the first: some layers keep state that no "
                                         "attention mask reaches (recurrent or convolutional layers)")
                except Exception as error:
                    shared_reason = f"{type(error).__name__}: {str(error)[:100]}"
    finally:
        causal.train(was_training)
    return LayoutSupport(packing, packing_reason, shared, shared_reason, window)
