"""Render a conversation together with the character spans of each assistant turn.

Knows only message dicts, a template and the tokenizer's stop strings; no token ids.

Why not search for markers or measure prompt lengths: both break silently when a template trims
content, prints tool calls in its own syntax, or rewrites earlier turns. Instead every assistant
turn ``i`` is rendered the way it is produced at inference:

1. ``P_i`` — the messages before it with ``add_generation_prompt=True``: what the model is fed;
2. ``F_i`` — the messages up to and including it: ``F_i`` must start with ``P_i``, and the rest,
   up to and including the end-of-turn stop string, is what the model has to write — the reply,
   its tool calls in the template's own syntax, its reasoning where the template prints it, text
   the template inserts after the generation prompt (Qwen3's empty think block), and the
   end-of-turn token. Tool results, tool schemas, system and user text are never part of it:
   they are in ``P_i`` or after the turn.

The full rendering ``R`` (byte-equal to ``apply_chat_template``) holds every turn. Where ``R``
starts with ``F_i``'s history and continues with the turn exactly as generated, the turn is
trained in ``R``. Templates that rewrite history (Qwen3, QwQ and DeepSeek-R1 drop the reasoning
of earlier turns) show some turns differently in ``R`` than the model wrote them. Such a turn is
*not in context*: it is trained in an example of its own, ``F_i`` with only its last turn trained
(policy ``keep``), or not trained (``drop_earlier``) — never in a context the model does not see.
Its position in ``R`` is still located, for display (``tuneful template mask``).

One kind of template never renders ``P_i`` followed by the turn: Mistral's prints the system
prompt (and the tool list) in the *last* user turn, so adding the reply moves it. There the turn
begins where its own text begins, its context is the history as the template renders it with the
turn (``prompt_matches_inference`` is False, and preflight says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from os.path import commonprefix
from typing import Any, Callable, Mapping, Sequence

from .render import render


class TemplateRewriteError(ValueError):
    """A turn cannot be trained in the context the model sees at inference (or the template fails on it)."""


@dataclass(frozen=True)
class TurnSpan:
    """One assistant turn: where it stands in the full rendering, and what the model writes for it.

    ``start``/``end`` bound the turn in the full rendering (for a turn in context: exactly what is
    trained); ``end_of_turn`` is the stop string closing it, with the whitespace before it ("" when
    there is none). ``generated`` is the turn as the model writes it. ``in_context``: the full
    rendering shows the turn exactly so, after exactly the history the template renders up to this
    turn; otherwise ``own_prompt`` holds that history, for the turn's own example.
    ``prompt_matches_inference``: that history is also what ``add_generation_prompt=True`` gives
    at inference (False where the template moves text into the last user turn).
    """

    message_index: int
    start: int
    end: int
    end_of_turn: str
    prompt_matches_inference: bool
    in_context: bool
    generated: str = ""
    own_prompt: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    turns: tuple[TurnSpan, ...] = field(default_factory=tuple)


@lru_cache(maxsize=64)
def _by_length(stop_strings: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[int, frozenset[str]], ...]]:
    """The stop strings, and per length (longest first) the set of them: which stop a text ends or starts with is
    a few slices and set lookups, not a test of every stop string (templates list dozens of special tokens)."""
    stops = tuple(s for s in stop_strings if s)
    lengths = sorted({len(s) for s in stops}, reverse=True)
    return stops, tuple((n, frozenset(s for s in stops if len(s) == n)) for n in lengths)


def _generated_turn(tail: str, stop_strings: Sequence[str]) -> tuple[str, str]:
    """The turn as written, through its end-of-turn string, out of the text after the generation prompt.

    The tail ends with a run of stop strings and whitespace: the turn ends at the first stop string
    of that run (Phi-3 prints ``<|end|>`` after each reply and one more EOS at the end of the whole
    conversation; only ``<|end|>`` is the model's to write). Returns (turn, end-of-turn with the
    whitespace before it); the end-of-turn is "" when the tail ends with no stop string. Where stop
    strings overlap, the longest one that fits is taken.
    """
    stops, by_length = _by_length(tuple(stop_strings))
    core = tail.rstrip()
    while core.endswith(stops):  # one C-level test for all of them; which one, only when one does
        n = next(n for n, same in by_length if core[-n:] in same)
        core = core[:-n].rstrip()
    run = tail[len(core):]
    gap = len(run) - len(run.lstrip())
    n = next((n for n, same in by_length if run[gap:gap + n] in same), 0)
    if not n:
        return core, ""
    return tail[: len(core) + gap + n], run[: gap + n]


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _locate(full: str, own_prompt: str, generated: str, end_of_turn: str, after: int) -> tuple[int, int]:
    """Where a turn that is not in context stands in the full rendering (for display only).

    The turn as printed in history keeps the end of the turn as generated (the reply and its
    end-of-turn; the reasoning before it is what gets dropped). So: the first stop string after the
    previous turn that the generated turn's ending leads up to, back as far as the two agree (without
    leading whitespace). After its own prompt, when the full rendering starts with it; else anywhere
    after the previous turn. Failing that, an empty span.
    """
    stop = end_of_turn.strip()
    after_prompt = full.startswith(own_prompt)
    begin = len(own_prompt) if after_prompt else after
    if not stop:
        found = full.find(generated, begin)
        return (found, found + len(generated)) if found >= 0 else (after, after)
    # right after its own prompt the stop string alone identifies the turn (an empty reply); elsewhere
    # some of the reply must agree too, or another message's end could be taken for it
    enough = len(stop) if after_prompt else len(stop) + 1
    at = full.find(stop, begin)
    while at >= 0:
        end = at + len(stop)
        shared = _common_suffix(full[begin:end], generated)
        if shared >= enough:
            start = end - shared
            while start < end and full[start].isspace():
                start += 1
            return start, end
        at = full.find(stop, at + 1)
    return after, after  # rewritten beyond recognition: shown untrained (it is still trained on its own)


_PROBE = "\ue000tuneful-probe\ue001"  # private-use code points: no template or text emits them


def _turn_start(messages: Sequence[Mapping[str, Any]], i: int, prompt: str, upto: str,
                render_other: Callable[[Sequence[Mapping[str, Any]]], str]) -> int:
    """Where assistant turn ``i`` begins in ``upto`` (the conversation rendered up to and including it).

    Normally right after the generation prompt. A template whose rendering of the history changes once
    the turn is added (Mistral prints the system prompt in the *last* user turn) has no such place;
    there the turn begins where its own text does: the first character that differs from the same
    history with a probe reply.
    """
    if upto.startswith(prompt):
        return len(prompt)
    probe = [*messages[:i], {"role": "assistant", "content": _PROBE}]
    try:
        probed = render_other(probe)
    except Exception as exc:
        raise TemplateRewriteError(f"assistant message {i}: the template fails on a probe reply: {exc}") from exc
    return len(commonprefix([upto, probed]))


# (k, add_generation_prompt) -> the conversation's first k messages rendered
PrefixRender = Callable[[int, bool], str]


def render_with_spans(
    messages: Sequence[Mapping[str, Any]],
    template: str,
    *,
    stop_strings: Sequence[str],
    special_tokens: Mapping[str, str] | None = None,
    now: datetime | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> RenderedConversation:
    """Render ``messages`` and locate every assistant turn as it is generated and as it is printed."""
    # one clock for all renders of this conversation (freezing it costs a lock per render: only where it is read)
    now = (now or datetime.now()) if "strftime_now" in template else None
    kw = dict(special_tokens=special_tokens, now=now, tools=tools, template_kwargs=template_kwargs)
    return locate_by_rendering(messages, render(messages, template, **kw), template, kw, stop_strings=stop_strings)


def locate_by_rendering(messages: Sequence[Mapping[str, Any]], full: str, template: str, kw: dict, *,
                        stop_strings: Sequence[str]) -> RenderedConversation:
    """:func:`locate_turns` with every prefix rendered from ``messages`` (``kw``: :func:`render`'s keywords)."""
    return locate_turns(messages, full, lambda k, generation: render(messages[:k], template, add_generation_prompt=generation, **kw),
                        stop_strings=stop_strings, render_other=lambda other: render(other, template, **kw))


def locate_turns(
    messages: Sequence[Mapping[str, Any]],
    full: str,
    render_prefix: PrefixRender,
    *,
    stop_strings: Sequence[str],
    render_other: Callable[[Sequence[Mapping[str, Any]]], str],
) -> RenderedConversation:
    """Every assistant turn of ``messages`` in their full rendering ``full``, from the renderings of the
    conversation's prefixes (``render_prefix``; ``render_other`` renders a probe conversation where needed)."""
    turns: list[TurnSpan] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            prompt = render_prefix(i, True)
            upto = full if i == len(messages) - 1 else render_prefix(i + 1, False)
        except Exception as exc:  # the template refuses the shorter conversation (e.g. it must end with a user turn)
            raise TemplateRewriteError(f"assistant message {i}: the template cannot render the conversation up to "
                                       f"this turn, so its inference context is unknown: {exc}") from exc
        begin = _turn_start(messages, i, prompt, upto, render_other)
        own_prompt = upto[:begin]
        generated, end_of_turn = _generated_turn(upto[begin:], stop_strings)
        if full.startswith(own_prompt) and full.startswith(generated, begin):
            turns.append(TurnSpan(i, begin, begin + len(generated), end_of_turn, own_prompt == prompt, True, generated))
            continue
        after = turns[-1].end if turns else 0
        at, end = _locate(full, own_prompt, generated, end_of_turn, after)
        turns.append(TurnSpan(i, at, end, end_of_turn, own_prompt == prompt, False, generated, own_prompt))
    return RenderedConversation(full, tuple(turns))
