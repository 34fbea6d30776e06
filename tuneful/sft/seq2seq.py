"""SFT for encoder-decoder models (T5, FLAN-T5, BART): the conversation before a reply is the encoder's
input, the reply plus EOS is the decoder's target.

Boundary: conversations in, the run's prepared examples out (loaded, refused by name where a target cannot
hold them, tokenized, held out, length-limited). The examples and their batches are
:mod:`tuneful.tokenization.seq2seq`'s, the model and its loss over target tokens :mod:`tuneful.models.seq2seq`'s;
the loop, accumulation, checkpoints, resume and output folder are the shared core's
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
from typing import Any

from ..data.loader import LoadReport
from ..data.types import Conversation, Message, make_conversation
from ..templates.registry import ChatTemplate, TOKENIZER_TEMPLATE
from ..tokenization.plan import split_eval
from ..tokenization.seq2seq import Seq2SeqDataError, Seq2SeqExample, Seq2SeqTokenizer, seq2seq_template
from .config import DataSettings
from .data import _load_conversations


def _refusal(conv: Conversation) -> str | None:
    """Why a conversation cannot be a seq2seq example, or None."""
    if conv.inputs.tools or any(m.role == "tool" or m.tool_calls for m in conv.messages):
        return "tool calls and tool results"
    if any(m.reasoning_content for m in conv.messages):
        return "reasoning traces"
    return None


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


def show_example(tokenizer: Any, conversation: list[dict], template: str = TOKENIZER_TEMPLATE) -> str:
    """Each trained turn's encoder input and decoder target, token by token: what training sees."""
    encoder = Seq2SeqTokenizer(tokenizer, seq2seq_template(template, tokenizer))
    conv = make_conversation([Message(m["role"], m.get("content") or "") for m in conversation])
    out = []
    for k, e in enumerate(encoder.examples(conv)):
        out.append(f"example {k}\n  encoder: {tokenizer.convert_ids_to_tokens(e.source_ids)}\n"
                   f"  decoder target: {tokenizer.convert_ids_to_tokens(e.target_ids)}")
    return "\n".join(out)
