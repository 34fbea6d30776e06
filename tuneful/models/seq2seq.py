"""Encoder-decoder models (T5, FLAN-T5, BART): recognising one from its config, loading it, and its loss over
target tokens (the decoder's logits at t predict labels[t]; no next-token shift)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.types import IGNORE_INDEX
from .loading import enable_activation_checkpointing

def is_encoder_decoder(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """Whether a model folder or hub id is an encoder-decoder model, from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return False  # not loadable here: the causal path reports the real error
    return bool(getattr(config, "is_encoder_decoder", False))


def target_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of NLL over target tokens and their count. Decoder logits at t predict labels[t] (the decoder
    input is already shifted), unlike a causal LM's next-token shift."""
    keep = labels != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), int(keep.sum())


class Seq2SeqTokenLoss(nn.Module):
    """Encoder-decoder forward with the labels' shifted decoder input; returns (sum of NLL, target tokens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        decoder_input_ids = inner.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                            use_cache=False).logits
        total, count = target_nll_sum(logits, labels)
        return total, torch.tensor(count, device=total.device)


def load_seq2seq_model(settings: Any) -> nn.Module:
    """An ``AutoModelForSeq2SeqLM``, weights in fp32 (mixed precision is applied by autocast)."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(settings.name_or_path, dtype=torch.float32,
                                                  trust_remote_code=settings.trust_remote_code)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model
