"""SFT's loss module: summed NLL over the trained tokens of a batch, chunked or not."""

from __future__ import annotations

import torch
from torch import nn

from ..models.head import SPLIT, unwrap_causal_lm
from ..models.losses import fused_linear_nll_sum, selected_nll_sum
from ..models.loading import DecoderWithHead


class SelectedTokenLoss(DecoderWithHead):
    """Runs the decoder, then projects only trained positions to the vocabulary. Returns (sum of NLL,
    trained-token count)."""

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        weight = self._plain_head_weight()
        if weight is not None:  # chunked, the projection run once (fused linear cross-entropy)
            total, count = fused_linear_nll_sum(hidden, labels, weight, scale=self.head.scale,
                                                softcap=self.head.softcap, chunk_size=self.chunk_size)
        else:
            total, count = selected_nll_sum(hidden, labels, self.lm_head, self.chunk_size)
        return total, torch.tensor(count, device=total.device)

    def _plain_head_weight(self) -> torch.Tensor | None:
        """The output head's weight when chunking is asked for and the head is one bias-free ``nn.Linear`` over
        plain tensors (not a PEFT wrapper, not sharded); None: the checkpointed chunks of ``selected_nll_sum``."""
        if self.chunk_size <= 0 or self.head.mode != SPLIT:
            return None
        head = unwrap_causal_lm(self.model).get_output_embeddings()
        if type(head) is not nn.Linear or head.bias is not None or type(head.weight.data) is not torch.Tensor:
            return None
        return head.weight
