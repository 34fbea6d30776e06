"""Encoder-decoder examples: a conversation's history rendered as the encoder's input (source ids), the reply plus
EOS as the decoder's target, and their padded batches. The same code renders the encoder input at training
(:mod:`tuneful.sft.seq2seq`), at inference (:mod:`tuneful.infer.chat_model`) and in evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data.types import IGNORE_INDEX, Conversation
from ..templates.registry import TOKENIZER_TEMPLATE, ChatTemplate, resolve
from ..templates.render import render
from .masking import special_tokens_of

PLAIN = "plain"
PLAIN_SEQ2SEQ_TEMPLATE = (
    "{#- tuneful: plain encoder input for encoder-decoder models. One instruction: itself (after a system "
    "message, if any). A longer history: one 'Role: text' line per turn. -#}\n"
    "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}\n"
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list -%}\n"
    "{%- if system %}{{ system | join('\\n') }}\n\n{% endif -%}\n"
    "{%- if turns | length == 1 and turns[0].role == 'user' and add_generation_prompt -%}{{ turns[0].content }}\n"
    "{%- else -%}\n"
    "{%- for m in turns %}{{ m.role | capitalize }}: {{ m.content }}\n{% endfor -%}\n"
    "{%- if add_generation_prompt %}Assistant:{% endif -%}\n"
    "{%- endif -%}"
)


class Seq2SeqDataError(ValueError):
    pass


@dataclass(frozen=True)
class Seq2SeqExample:
    source_ids: list[int]  # the encoder's input: the rendered history
    target_ids: list[int]  # the decoder's target: the reply's tokens, then EOS; every one is trained

    def __len__(self) -> int:
        return len(self.source_ids) + len(self.target_ids)


def seq2seq_template(spec: str, tokenizer: Any) -> ChatTemplate:
    """``tokenizer``: the tokenizer's own template when it has one, else plain; ``plain``; or a named template."""
    if spec == PLAIN or (spec == TOKENIZER_TEMPLATE and not getattr(tokenizer, "chat_template", None)):
        return ChatTemplate(PLAIN_SEQ2SEQ_TEMPLATE, PLAIN)
    return resolve(spec, tokenizer, "the model's tokenizer")


def encode_source(tokenizer: Any, text: str) -> list[int]:
    """The encoder's input ids, the same at training and inference: with the tokenizer's own special tokens
    (T5 appends </s> to its inputs, as FLAN-T5 was trained)."""
    return tokenizer(text, add_special_tokens=True)["input_ids"]


class Seq2SeqTokenizer:
    """Conversations → examples: one per trained assistant turn, its history rendered as the source."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, *, last_turn_only: bool = False):
        if tokenizer.eos_token_id is None:
            raise Seq2SeqDataError("the tokenizer has no EOS token, so a reply's end could never be learned; "
                                   "fix: use a tokenizer with eos_token set (T5 and BART have one)")
        self.tokenizer, self.template, self.last_turn_only = tokenizer, template, last_turn_only
        self.special = special_tokens_of(tokenizer)

    def source_text(self, history: Sequence[dict]) -> str:
        return render(history, self.template.source, add_generation_prompt=True, special_tokens=self.special)

    def encode_source(self, text: str) -> list[int]:
        return encode_source(self.tokenizer, text)

    def encode_target(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def examples(self, conv: Conversation) -> list[Seq2SeqExample]:
        messages = conv.to_dicts()
        turns = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        if self.last_turn_only:
            turns = turns[-1:]
        turns = [i for i in turns if conv.messages[i].trained]  # weight 0: context only
        return [Seq2SeqExample(self.encode_source(self.source_text(messages[:i])),
                               self.encode_target(messages[i].get("content") or "")) for i in turns]


def collate_seq2seq(examples: Sequence[Seq2SeqExample], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded encoder inputs with their mask, and labels (targets, padding ignored). The decoder
    input is the labels shifted right behind the model's start token (the model builds it from labels)."""
    n, src_width, tgt_width = len(examples), max(len(e.source_ids) for e in examples), max(len(e.target_ids)
                                                                                         for e in examples)
    input_ids = torch.full((n, src_width), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, src_width), dtype=torch.long)
    labels = torch.full((n, tgt_width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e.source_ids)] = torch.tensor(e.source_ids)
        attention_mask[row, : len(e.source_ids)] = 1
        labels[row, : len(e.target_ids)] = torch.tensor(e.target_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
