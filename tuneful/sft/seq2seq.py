"""SFT for encoder-decoder models (T5, FLAN-T5, BART): the conversation before a reply is the encoder's
input, the reply plus EOS is the decoder's target.

Boundary: conversations in; (source ids, target ids) examples, their batches and the loss over target
tokens out. The loop, accumulation, checkpoints, resume and output folder are the shared core's
(:mod:`tuneful.train.loop`), exactly as for causal models, and the loss is token-normalised across
accumulation and processes the same way (summed NLL / the step's target tokens).

The source is rendered by a chat template with ``add_generation_prompt``: the model's own when its
tokenizer has one (``data.template=tokenizer``), else ``plain`` (:data:`PLAIN_SEQ2SEQ_TEMPLATE`: a
single instruction as itself, FLAN-T5's format; a longer history as ``User:`` / ``Assistant:`` lines),
or any template ``data.template`` names. The template is saved with the model, so chat, serve and
eval render the encoder input by the same code.

Packing is off: a packed encoder row would need block-diagonal encoder self-attention *and* a
matching cross-attention mask from each decoder segment to its own source, which the transformers
T5/BART implementations do not take; rows are padded and grouped by length instead.

Each assistant turn is an example in the context it has at inference (the history before it). Tool
calls, tool results and reasoning are refused by name: a seq2seq target here is the reply's text.

One view: :func:`show_example` prints a conversation's encoder input and decoder target as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import LoadReport
from ..data.types import Conversation
from ..tokenization.masking import IGNORE_INDEX, special_tokens_of
from ..templates.registry import TOKENIZER_TEMPLATE, ChatTemplate, resolve
from ..templates.render import render
from ..train.plan import split_eval
from .config import DataSettings

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


def is_encoder_decoder(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """Whether a model folder or hub id is an encoder-decoder model, from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return False  # not loadable here: the causal path reports the real error
    return bool(getattr(config, "is_encoder_decoder", False))


def seq2seq_template(spec: str, tokenizer: Any) -> ChatTemplate:
    """``tokenizer``: the tokenizer's own template when it has one, else plain; ``plain``; or a named template."""
    if spec == PLAIN or (spec == TOKENIZER_TEMPLATE and not getattr(tokenizer, "chat_template", None)):
        return ChatTemplate(PLAIN_SEQ2SEQ_TEMPLATE, PLAIN)
    return resolve(spec, tokenizer, "the model's tokenizer")


def _refusal(conv: Conversation) -> str | None:
    """Why a conversation cannot be a seq2seq example, or None."""
    if conv.inputs.tools or any(m.role == "tool" or m.tool_calls for m in conv.messages):
        return "tool calls and tool results"
    if any(m.reasoning_content for m in conv.messages):
        return "reasoning traces"
    return None


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


@dataclass
class PreparedSeq2Seq:
    train: list[Seq2SeqExample]
    eval: list[Seq2SeqExample]
    template: ChatTemplate
    load_report: LoadReport
    end_of_turn_ids: list[int]
    dropped_overlong: int = 0
    truncated: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self, recipe: dict) -> dict:
        return {"recipe": recipe, "template": self.template.origin, "architecture": "encoder-decoder",
                "train_examples": len(self.train), "eval_examples": len(self.eval),
                "dropped_overlong": self.dropped_overlong, "truncated": self.truncated,
                "preflight_warnings": self.warnings, "data": self.load_report.summary()}


def _length_policy(examples: list[Seq2SeqExample], settings: DataSettings, split: str) -> tuple[list, int, int]:
    """``data.overlong`` on source and target separately (each has its own ``max_length``); truncate keeps
    the end of the source (the latest turn) and the start of the target, with its EOS."""
    kept, dropped, truncated = [], 0, 0
    limit = settings.max_length
    for e in examples:
        if len(e.source_ids) <= limit and len(e.target_ids) <= limit:
            kept.append(e)
        elif settings.overlong == "fail" and split == "train":
            raise Seq2SeqDataError(f"a {split} example has a source of {len(e.source_ids)} and a target of "
                                   f"{len(e.target_ids)} tokens, over data.max_length={limit}. Fix: raise "
                                   "data.max_length, or set data.overlong=drop or truncate")
        elif settings.overlong == "truncate" and split == "train":
            kept.append(Seq2SeqExample(e.source_ids[-limit:], e.target_ids[: limit - 1] + e.target_ids[-1:]))
            truncated += 1
        else:
            dropped += 1
    return kept, dropped, truncated


def prepare_seq2seq(settings: DataSettings, tokenizer: Any, seed: int) -> PreparedSeq2Seq:
    """Load → validate (refuse what a seq2seq target cannot hold, by name) → tokenize → length policy."""
    from .data import _load_conversations

    template = seq2seq_template(settings.template, tokenizer)
    encoder = Seq2SeqTokenizer(tokenizer, template, last_turn_only=settings.last_turn_only)
    convs, load_report = _load_conversations(settings.train, settings, seed)
    train_convs, eval_convs = split_eval(convs, settings, seed, lambda src: _load_conversations(src, settings)[0])
    refused = [(i, why) for i, c in enumerate(train_convs) if (why := _refusal(c))]
    if refused:
        kinds = sorted({why for _, why in refused})
        raise Seq2SeqDataError(f"{len(refused)} training conversation(s) hold {' and '.join(kinds)} (e.g. "
                               f"conversation {refused[0][0]}), which SFT of an encoder-decoder model does not "
                               "train (its target is the reply's text). Fix: remove them, or train a causal LM")
    train = [e for c in train_convs for e in encoder.examples(c)]
    held = [e for c in eval_convs if not _refusal(c) for e in encoder.examples(c)]
    train, dropped, truncated = _length_policy(train, settings, "train")
    held, _, _ = _length_policy(held, settings, "eval")
    warnings = []
    if settings.packing:
        warnings.append("data.packing is off for encoder-decoder models: packed rows would need block-diagonal "
                        "encoder and cross-attention masks, which transformers' T5/BART do not take")
    if dropped:
        warnings.append(f"{dropped} training example(s) over data.max_length={settings.max_length} dropped")
    return PreparedSeq2Seq(train, held, template, load_report, [tokenizer.eos_token_id], dropped, truncated, warnings)


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

    from ..train.model import enable_activation_checkpointing

    model = AutoModelForSeq2SeqLM.from_pretrained(settings.name_or_path, dtype=torch.float32,
                                                  trust_remote_code=settings.trust_remote_code)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def show_example(tokenizer: Any, conversation: list[dict], template: str = TOKENIZER_TEMPLATE) -> str:
    """Each trained turn's encoder input and decoder target, token by token: what training sees."""
    from ..data.types import Message, make_conversation

    encoder = Seq2SeqTokenizer(tokenizer, seq2seq_template(template, tokenizer))
    conv = make_conversation([Message(m["role"], m.get("content") or "") for m in conversation])
    out = []
    for k, e in enumerate(encoder.examples(conv)):
        out.append(f"example {k}\n  encoder: {tokenizer.convert_ids_to_tokens(e.source_ids)}\n"
                   f"  decoder target: {tokenizer.convert_ids_to_tokens(e.target_ids)}")
    return "\n".join(out)
