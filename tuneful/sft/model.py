"""SFT's loss module: summed NLL over the trained tokens of a batch, chunked or not."""

from __future__ import annotations

import torch

from ..train.losses import selected_nll_sum
from ..train.model import DecoderWithHead


class SelectedTokenLoss(DecoderWithHead):
    """Runs the decoder, then projects only trained positions to the vocabulary. Returns (sum of NLL,
    trained-token count)."""

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        total, count = selected_nll_sum(hidden, labels, self.lm_head, self.chunk_size)
        return total, torch.tensor(count, device=total.device)
