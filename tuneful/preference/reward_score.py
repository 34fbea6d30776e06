"""Scoring conversations with a trained reward model (``tuneful rm score``; a reward source for GRPO).

A conversation is rendered with the template saved in the model folder and masked as in training;
its score is read at the last trained token of the final assistant reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.types import NO_TEMPLATE_INPUTS, Conversation, Message, PreferencePair, TemplateInputs
from .pairs import preference_tokenizer, reply_tokens
from ..tokenization.masking import load_tokenizer, pad_id
from ..templates.registry import resolve
from .reward_model import RewardScores


class RewardScorer:
    """A reward-model folder, ready to score; ``score`` takes conversations ending with an assistant reply."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", batch_size: int = 16, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        self.folder = str(folder)
        self.tokenizer = load_tokenizer(self.folder, trust_remote_code=trust_remote_code)
        self.ctok = preference_tokenizer(self.tokenizer, resolve(None, self.tokenizer, self.folder))
        model = AutoModelForSequenceClassification.from_pretrained(self.folder, dtype=torch.float32,
                                                                   trust_remote_code=trust_remote_code)
        self.module = RewardScores(model.to(device).eval())
        self.device, self.batch_size = torch.device(device), batch_size

    def token_ids(self, conversation: Conversation) -> list[int]:
        """Prompt + reply, ending at the reply's last trained token (where the score is read)."""
        if not conversation.messages or conversation.messages[-1].role != "assistant":
            raise ValueError("a scored conversation must end with an assistant reply")
        prompt, reply, _ = reply_tokens(self.ctok(conversation))
        return prompt + reply

    @torch.no_grad()
    def score(self, conversations: Sequence[Conversation]) -> list[float]:
        rows = [self.token_ids(c) for c in conversations]
        out: list[float] = []
        pad = pad_id(self.tokenizer)
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            width = max(len(r) for r in part)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for k, row in enumerate(part):
                ids[k, : len(row)], mask[k, : len(row)] = torch.tensor(row), 1
            ends = torch.tensor([k * width + len(row) - 1 for k, row in enumerate(part)])
            positions = torch.arange(width).expand(len(part), width)
            out += self.module(ids.to(self.device), mask.to(self.device), positions.to(self.device),
                               ends.to(self.device)).tolist()
        return out

    def score_replies(self, prompts: Sequence[Sequence[Message]], replies: Sequence[str],
                      inputs: Sequence[TemplateInputs] | None = None) -> list[float]:
        """Scores of text ``replies`` to ``prompts`` (what an online method samples); ``inputs``: each
        prompt's tools / template arguments."""
        extras = inputs or [NO_TEMPLATE_INPUTS] * len(prompts)
        return self.score([Conversation((*p, Message("assistant", r)), inputs=x)
                           for p, r, x in zip(prompts, replies, extras)])

    def score_pairs(self, pairs: Sequence[PreferencePair]) -> tuple[list[float], list[float]]:
        chosen = self.score([Conversation((*p.prompt, p.chosen), inputs=p.inputs) for p in pairs])
        rejected = self.score([Conversation((*p.prompt, p.rejected), inputs=p.inputs) for p in pairs])
        return chosen, rejected
