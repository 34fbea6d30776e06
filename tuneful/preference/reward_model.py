"""The reward model: a transformers sequence-classification model (one label), and the module that
reads its score at the end of each reply.

The score is read at the reply's last trained token (its end-of-turn), located explicitly from the
masks, never found by searching for padding; a saved folder loads in
``AutoModelForSequenceClassification``, which reads the last non-padding token of an unpadded
prompt + reply: the same position (``tuneful rm score`` and the tests check both agree).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .pairs import PreferenceExample
from ..models.settings import ModelSettings
from ..models.head import SPLIT, HeadPlan
from ..models.loading import DecoderWithHead, enable_activation_checkpointing, unwrap_causal_lm


def load_reward_model(settings: ModelSettings, pad_token_id: int) -> nn.Module:
    """A base or SFT checkpoint with a new scalar head (transformers initialises ``score``), fp32 weights."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        settings.name_or_path, num_labels=1, trust_remote_code=settings.trust_remote_code,
        **settings.loading_kwargs(), dtype=torch.float32)
    model.config.pad_token_id = pad_token_id  # transformers reads it to find the last token at inference
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def score_head(model: nn.Module) -> nn.Module:
    inner = unwrap_causal_lm(model)
    head = getattr(inner, "score", None)
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no 'score' head; the reward model needs a transformers "
                         "*ForSequenceClassification model (Llama, Qwen, Mistral, Gemma, GPT-2, ...)")
    return head


class RewardScores(DecoderWithHead):
    """One decoder pass → one scalar per listed position (the end of each reply): [n] fp32 rewards. The score head
    reads the decoder's hidden states directly (transformers' sequence classifiers add no MoE loss): no probe."""

    def __init__(self, model: nn.Module, chunk_size: int = 0):
        super().__init__(model, chunk_size, head=HeadPlan(SPLIT))

    def forward(self, input_ids, attention_mask, position_ids, ends):  # type: ignore[override]
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, ends)
        return score_head(self.model)(picked).squeeze(-1).float()


def reply_ends(examples: Sequence[PreferenceExample], layout: str, width: int) -> torch.Tensor:
    """Flat positions (row * width + column) of the last token of each chosen reply, then each rejected one,
    in the rows the DPO collators build for ``layout``."""
    n = len(examples)
    if layout == "shared-prompt":  # row b: prompt | chosen | rejected
        chosen = [b * width + len(e.prompt_ids) + len(e.chosen_ids) - 1 for b, e in enumerate(examples)]
        rejected = [b * width + len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) - 1
                    for b, e in enumerate(examples)]
    else:  # rows 0..n-1: prompt | chosen; rows n..2n-1: prompt | rejected
        chosen = [b * width + len(e.prompt_ids) + len(e.chosen_ids) - 1 for b, e in enumerate(examples)]
        rejected = [(n + b) * width + len(e.prompt_ids) + len(e.rejected_ids) - 1 for b, e in enumerate(examples)]
    return torch.tensor(chosen + rejected, dtype=torch.long)


def reward_inputs(batch: Any, examples: Sequence[PreferenceExample], layout: str) -> dict[str, torch.Tensor]:
    """RewardScores' keyword arguments from a DPO PairBatch of ``examples``."""
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
            "ends": reply_ends(examples, layout, batch.input_ids.shape[1]).to(batch.input_ids.device)}
