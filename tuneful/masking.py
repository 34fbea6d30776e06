"""Stage two of the data pipeline: a validated conversation -> ``input_ids`` + train mask.

Tokens and mask are built together from one rendering: the rendered text is tokenized once with
character offsets, and a token is trained when its characters overlap a trained span from
:mod:`tuneful.templates.spans`. A token that straddles a boundary (e.g. "▁The" covering the space the
template put before a reply) is trained, because the model has to emit it; a token entirely inside
template text never is. Labels are built from this mask in exactly one place: :func:`labels_from_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from .templates.registry import ChatTemplate
from .templates.spans import RenderedConversation, render_with_spans

IGNORE_INDEX = -100
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def special_tokens_of(tokenizer: Any) -> dict[str, str]:
    """The special-token strings a template sees as variables, as ``apply_chat_template`` passes them."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            out[key] = value
    return out


def stop_strings_of(tokenizer: Any) -> list[str]:
    """Strings that can end a turn: the tokenizer's special tokens (EOS and added special tokens)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token))
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        strings.add(eos)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and bos != eos:
        # BOS opens sequences; it never closes a turn (matters for templates that emit "</s><s>[INST]").
        strings.discard(bos)
    return sorted(s for s in strings if s)


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    train_mask: list[int]
    rendered: RenderedConversation
    offsets: tuple[tuple[int, int], ...] = ()  # each token's characters in rendered.text
    boundary_merges: int = 0  # trained tokens that also cover non-whitespace template text


    @property
    def trained_tokens(self) -> int:
        return sum(self.train_mask)

    @property
    def all_turns_end(self) -> bool:
        """Every assistant turn has an end-of-turn string inside its trained span."""
        return all(t.end_of_turn for t in self.rendered.turns)


def special_token_offsets(
    text: str, input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], added: Mapping[int, str]
) -> list[tuple[int, int]]:
    """Offsets with added tokens narrowed to their own text.

    Added tokens with ``rstrip``/``lstrip`` (Phi-3's ``<|assistant|>``, ``<|end|>``) report offsets that
    include the whitespace they swallow, which may be the first characters of a reply; that must not
    make the role marker look like part of the reply.
    """
    narrowed = []
    for token_id, (start, end) in zip(input_ids, offsets):
        content = added.get(token_id)
        if content and end - start > len(content):
            found = text.find(content, start, end)
            if found >= 0:
                start, end = found, found + len(content)
        narrowed.append((start, end))
    return narrowed


def mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap a span. Zero-width tokens take the mask of their position."""
    mask = []
    for start, end in offsets:
        if end > start:
            trained = any(start < b and end > a for a, b in spans)
        else:  # e.g. a prefix-space piece with no characters: inside a span iff strictly within it
            trained = any(a < start < b for a, b in spans)
        mask.append(int(trained))
    return mask


def count_boundary_merges(
    text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> int:
    """Tokens that straddle a trained span's edge and carry non-whitespace template text with them.

    BPE can merge the end of the prompt with the start of a reply (e.g. "]" + "<think>" -> "]<").
    Such a token is trained because the model must emit it, but at inference the prompt is tokenized
    without the reply, so the model sees a different split there. Counted for preflight to report.
    """
    merges = 0
    for start, end in offsets:
        for a, b in spans:
            outside = (text[start:a] if start < a < end else "") + (text[b:end] if start < b < end else "")
            if outside.strip():
                merges += 1
    return merges


def labels_from_mask(input_ids: Sequence[int], train_mask: Sequence[int]) -> list[int]:
    """Causal-LM labels: the token id where trained, IGNORE_INDEX elsewhere (the model shifts them)."""
    if len(input_ids) != len(train_mask):
        raise ValueError(f"input_ids ({len(input_ids)}) and train_mask ({len(train_mask)}) differ in length")
    return [t if m else IGNORE_INDEX for t, m in zip(input_ids, train_mask)]


class ConversationTokenizer:
    """Tokenize conversations with one template and tokenizer; the same object serves training and checks."""

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate,
        *,
        last_turn_only: bool = False,
        now: datetime | None = None,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "tuneful needs a fast (Rust) tokenizer for character offsets; load it with "
                "AutoTokenizer.from_pretrained(..., use_fast=True) or convert it with tokenizers"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.last_turn_only = last_turn_only
        self.now = now
        self.special_tokens = special_tokens_of(tokenizer)
        self.stop_strings = stop_strings_of(tokenizer)
        self.added_tokens = {i: str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}

    def render(self, messages: Sequence[Mapping[str, str]]) -> RenderedConversation:
        return render_with_spans(
            messages,
            self.template.source,
            stop_strings=self.stop_strings,
            special_tokens=self.special_tokens,
            now=self.now,
        )

    def __call__(self, messages: Sequence[Mapping[str, str]]) -> TokenizedConversation:
        rendered = self.render(messages)
        # The template places BOS itself; adding special tokens here would double it.
        encoding = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        offsets = special_token_offsets(rendered.text, ids, encoding["offset_mapping"], self.added_tokens)
        mask = mask_from_offsets(offsets, rendered.trained_spans(self.last_turn_only))
        merges = count_boundary_merges(rendered.text, offsets, rendered.trained_spans(self.last_turn_only))
        return TokenizedConversation(ids, mask, rendered, tuple(offsets), merges)
