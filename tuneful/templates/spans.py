"""Render a conversation together with the character spans of each assistant reply.

Why not search for markers or measure prompt lengths: both break silently when a template trims
content, merges tokens across the boundary, or rewrites earlier turns. Instead we render the
conversation twice with transformers' renderer:

1. ``R``  — the real rendering (byte-equal to ``apply_chat_template``);
2. ``S``  — the same conversation with every assistant content replaced by a unique sentinel.

Splitting ``S`` at the sentinels gives the template's own text between replies: ``T0, T1, ... Tn``.
The real rendering must then be exactly ``T0 + c1 + T1 + c2 + ... + Tn`` where each ``ci`` is
assistant content ``i`` as the template printed it (verbatim or stripped). We check that equality
character for character; if it fails the template rewrote something that depends on the reply
(e.g. Qwen3 moving ``<think>`` blocks) and we refuse with a message instead of guessing.

The end-of-turn: the template text right after a reply, up to and including the first stop
string (a special token such as ``<|im_end|>``, ``<|eot_id|>``, ``</s>``), with only whitespace
before it. It is trained so the model learns to stop. Finally, text the template inserts between
the inference prompt (``add_generation_prompt=True`` on the preceding turns) and the reply is
trained too, because at inference the model has to produce it (Qwen3's empty think block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Sequence

from .render import render

_SENTINEL = "\ue000tuneful-reply-{}\ue001"  # private-use code points: no template or text emits them


class TemplateRewriteError(ValueError):
    """The template changes text around a reply depending on the reply, so spans cannot be trusted."""


@dataclass(frozen=True)
class TurnSpan:
    """Character offsets of one assistant turn in the rendering.

    ``start``/``end`` bound what is trained; ``content_start``/``content_end`` bound the reply text
    as printed; ``end_of_turn`` is the stop string found after it ("" when there is none).
    ``prompt_matches_inference`` is False when the text before this reply differs from what
    ``add_generation_prompt=True`` on the preceding turns renders (a history-rewriting template).
    """

    message_index: int
    start: int
    content_start: int
    content_end: int
    end: int
    end_of_turn: str
    prompt_matches_inference: bool


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    turns: tuple[TurnSpan, ...] = field(default_factory=tuple)

    def trained_spans(self, last_turn_only: bool = False) -> list[tuple[int, int]]:
        turns = self.turns[-1:] if last_turn_only else self.turns
        return [(t.start, t.end) for t in turns]


def _content_variants(content: str) -> list[str]:
    """How templates commonly print content: verbatim, or with whitespace trimmed at one or both ends."""
    variants = [content]
    for chars in (None, "\n"):
        variants += [content.strip(chars), content.lstrip(chars), content.rstrip(chars)]
    return list(dict.fromkeys(variants))


def _end_of_turn(after: str, stop_strings: Sequence[str]) -> str:
    """Leading whitespace plus the first stop string at the start of ``after``; "" if none."""
    stripped = after.lstrip()
    gap = len(after) - len(stripped)
    matches = [s for s in stop_strings if s and stripped.startswith(s)]
    if not matches:
        return ""
    return after[: gap + len(max(matches, key=len))]


def _align(real: str, segments: list[str], replies: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """Content spans such that ``real == T0 + c1 + T1 + ... + Tn``; raise if no such split exists."""
    if not real.startswith(segments[0]):
        raise TemplateRewriteError(
            "the text before the first reply differs between the real rendering and the probe rendering"
        )
    pos = len(segments[0])
    spans = []
    for k, (message_index, content) in enumerate(replies):
        following = segments[k + 1]
        is_last = k + 1 == len(replies)
        for variant in _content_variants(content):
            candidate = variant + following
            fits = real[pos:] == candidate if is_last else real.startswith(candidate, pos)
            if fits:
                spans.append((pos, pos + len(variant)))
                pos += len(candidate)
                break
        else:
            context = real[pos : pos + 80]
            raise TemplateRewriteError(
                f"assistant message {message_index}: the template does not print this reply verbatim "
                f"(or trimmed) between its surrounding text; it rewrites the reply or the turns around it "
                f"depending on the reply (e.g. it strips or moves <think> blocks). Rendered here: {context!r}. "
                "Fix: remove such blocks from the data, or choose a template that prints replies as they are "
                "(e.g. --template chatml)."
            )
    return spans


def render_with_spans(
    messages: Sequence[Mapping[str, str]],
    template: str,
    *,
    stop_strings: Sequence[str],
    special_tokens: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> RenderedConversation:
    """Render ``messages`` and locate every assistant reply and its end-of-turn, verified exactly."""
    now = now or datetime.now()  # one clock for all renders of this conversation
    kw = dict(special_tokens=special_tokens, now=now)
    real = render(messages, template, **kw)
    replies = [(i, m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        return RenderedConversation(real, ())

    sentinels = [_SENTINEL.format(k) for k in range(len(replies))]
    probe = [dict(m) for m in messages]
    for (i, _), sentinel in zip(replies, sentinels):
        probe[i]["content"] = sentinel
    try:
        probed = render(probe, template, **kw)
    except Exception as exc:  # the template reacts to content (validation, parsing): cannot probe it
        raise TemplateRewriteError(f"the template fails when replies are replaced by probes: {exc}") from exc

    segments, rest = [], probed
    for k, sentinel in enumerate(sentinels):
        if rest.count(sentinel) != 1:
            raise TemplateRewriteError(
                f"assistant message {replies[k][0]}: the template prints this reply {rest.count(sentinel)} times "
                "instead of once, so its tokens cannot be told apart"
            )
        head, rest = rest.split(sentinel)
        segments.append(head)
    segments.append(rest)

    content_spans = _align(real, segments, replies)
    turns = []
    for k, ((message_index, _), (c_start, c_end)) in enumerate(zip(replies, content_spans)):
        eot = _end_of_turn(segments[k + 1], stop_strings)
        start, consistent = _inference_prompt_start(messages[:message_index], template, real, c_start, kw)
        turns.append(TurnSpan(message_index, start, c_start, c_end, c_end + len(eot), eot, consistent))
    return RenderedConversation(real, tuple(turns))


def _inference_prompt_start(
    history: Sequence[Mapping[str, str]], template: str, real: str, content_start: int, kw: dict
) -> tuple[int, bool]:
    """Where generation would start at inference for this reply, and whether training context matches it."""
    try:
        prompt = render(history, template, add_generation_prompt=True, **kw)
    except Exception:
        return content_start, False
    if real.startswith(prompt) and len(prompt) <= content_start:
        # Text between the inference prompt and the reply is produced by the model at inference.
        return len(prompt), True
    return content_start, False
