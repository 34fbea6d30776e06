"""What ``tuneful data inspect`` (and the UI's Data page) shows: per-dataset statistics, the preflight
findings, and examples token by token with what each token is (trained text, tool call, reasoning,
tool result, or untrained context).

This module only *looks*: the train mask comes from :mod:`tuneful.tokenization.masking`; the kinds of
trained text here are found by locating each message's own text inside the rendering, for display.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ..data.loader import LoadReport, LoadResult, load
from ..data.types import Conversation
from ..samples import starter_path
from ..templates.registry import ChatTemplate, resolve
from .masking import ConversationTokenizer, TokenizedConversation, load_tokenizer
from .preflight import PreflightReport, preflight


# What a token of a rendered conversation is, as :func:`token_kinds` labels it (None: untrained context).
TRAINED, TOOL_CALL, REASONING, TOOL_RESULT = "trained", "trained: tool call", "trained: reasoning", "tool result (not trained)"
KIND_COLOURS = {TRAINED: "#2e7d32", TOOL_CALL: "#1565c0", REASONING: "#8e24aa", TOOL_RESULT: "#ef6c00"}


@dataclass(frozen=True)
class DatasetStats:
    records: int
    conversations: int
    assistant_turns: int
    tool_calls: int
    tool_results: int
    reasoning_traces: int
    training_examples: int
    tokens_min: int
    tokens_median: float
    tokens_p95: int
    tokens_max: int
    trained_fraction: float
    truncated: int
    dropped_overlong: int
    skipped_by_reason: dict[str, int]

    def rows(self) -> list[tuple[str, str]]:
        skipped = ", ".join(f"{k}: {v}" for k, v in self.skipped_by_reason.items()) or "none"
        return [
            ("records read", str(self.records)),
            ("conversations", str(self.conversations)),
            ("assistant turns", str(self.assistant_turns)),
            ("tool calls / tool results / reasoning traces",
             f"{self.tool_calls} / {self.tool_results} / {self.reasoning_traces}"),
            ("training examples (turns trained on their own included)", str(self.training_examples)),
            ("tokens min / median / p95 / max",
             f"{self.tokens_min} / {self.tokens_median:g} / {self.tokens_p95} / {self.tokens_max}"),
            ("trained fraction of tokens", f"{self.trained_fraction:.1%}"),
            ("truncated (overlong)", str(self.truncated)),
            ("dropped (overlong)", str(self.dropped_overlong)),
            ("skipped by reason", skipped),
        ]


def dataset_stats(load_report: LoadReport, conversations: list[Conversation], report: PreflightReport) -> DatasetStats:
    training = report.training_examples
    lengths = sorted(len(e.input_ids) for e in training) or [0]
    total = sum(lengths)
    trained = sum(sum(e.train_mask) for e in training)
    messages = [m for c in conversations for m in c.messages]
    skipped = dict(load_report.skipped_by_reason)
    if report.failed_records:
        skipped["template_error"] = report.failed_records
    return DatasetStats(
        records=load_report.records_in,
        conversations=len(conversations),
        assistant_turns=sum(1 for m in messages if m.role == "assistant"),
        tool_calls=sum(len(m.tool_calls) for m in messages),
        tool_results=sum(1 for m in messages if m.role == "tool"),
        reasoning_traces=sum(1 for m in messages if m.reasoning_content),
        training_examples=len(training),
        tokens_min=lengths[0],
        tokens_median=statistics.median(lengths),
        tokens_p95=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
        tokens_max=lengths[-1],
        trained_fraction=trained / total if total else 0.0,
        truncated=report.truncated,
        dropped_overlong=report.dropped_overlong,
        skipped_by_reason=skipped,
    )


def _char_kinds(conversation: Conversation, example: TokenizedConversation) -> list[str | None]:
    """The kind of every character of the rendering (trained kinds only where a trained token covers it)."""
    text = example.rendered.text
    kinds: list[str | None] = [None] * len(text)
    for (start, end), trained in zip(example.offsets, example.train_mask):
        if trained:
            kinds[start:end] = [TRAINED] * (end - start)
    for turn in example.rendered.turns:
        message = conversation.messages[turn.message_index]
        body_end = turn.end - len(turn.end_of_turn)
        written_until = turn.start
        for part, kind in ((message.reasoning_content, REASONING), (message.content, None)):
            at = text.find(part, turn.start, body_end) if part else -1
            if at < 0:
                continue
            written_until = max(written_until, at + len(part))
            if kind:
                kinds[at:at + len(part)] = [kind if k else None for k in kinds[at:at + len(part)]]
        if message.tool_calls:  # after the reply's own text: the calls, as this template prints them
            kinds[written_until:body_end] = [TOOL_CALL if k else None for k in kinds[written_until:body_end]]
    cursor = 0
    for message in conversation.messages:
        if message.role == "tool" and message.content:
            at = text.find(message.content, cursor)
            if at >= 0:
                kinds[at:at + len(message.content)] = [k or TOOL_RESULT for k in kinds[at:at + len(message.content)]]
                cursor = at + len(message.content)
    return kinds


def token_kinds(conversation: Conversation, example: TokenizedConversation) -> list[tuple[str, str | None]]:
    """The rendering token by token: (the token's text, its kind), kinds as named at the top of the module;
    text that no token covers comes as its own untrained piece."""
    text, kinds = example.rendered.text, _char_kinds(conversation, example)
    pieces: list[tuple[str, str | None]] = []
    pos = 0
    for start, end in example.offsets:
        start, end = int(start), int(end)
        if start > pos:
            pieces.append((text[pos:start], None))
        if end > start:
            pieces.append((text[start:end], kinds[start]))
        pos = max(pos, end)
    if pos < len(text):
        pieces.append((text[pos:], None))
    return pieces


_RICH_STYLES = {TRAINED: "bold green on grey11", TOOL_CALL: "bold cyan on grey11", REASONING: "bold magenta on grey11",
                TOOL_RESULT: "yellow", None: "dim"}


def highlighted(conversation: Conversation, example: TokenizedConversation) -> Any:
    """The rendering as rich Text: trained tokens bold (green text, cyan tool calls, magenta reasoning), tool
    results yellow, the rest dimmed."""
    from rich.text import Text

    out = Text()
    for piece, kind in token_kinds(conversation, example):
        out.append(piece, style=_RICH_STYLES[kind])
    return out


@dataclass
class DataInspection:
    """One look at a data source through a tokenizer and template: what the CLI and the UI show."""

    source: str
    loaded: LoadResult
    template: ChatTemplate
    report: PreflightReport
    stats: DatasetStats
    shown: list[tuple[Conversation, TokenizedConversation]]  # the first conversations, tokenized as trained

    @property
    def lengths(self) -> list[int]:
        """Tokens per training example."""
        return [len(e.input_ids) for e in self.report.training_examples]


def inspect_data(source: str | None = None, *, tokenizer: str | None = None, template: str | None = None, shown: int = 3,
                 first: int = 0, max_length: int | None = None, overlong: str = "drop", format: str = "auto",
                 on_error: str = "skip", last_turn_only: bool = False) -> DataInspection:
    """Load ``source`` (default: the starter sample), tokenize and check every conversation, and keep ``shown`` of
    them from index ``first`` for display. Raises ValueError / FileNotFoundError / RecordError with the cause."""

    source = source or str(starter_path())
    loaded = load(source, format=format, on_error=on_error)
    if loaded.report.records_in == 0:
        raise ValueError(f"{source}: empty input, no records in it")
    conversations = loaded.conversations
    if not conversations:
        raise ValueError(f"{source}: no conversations to inspect ({len(loaded.preferences)} preference pairs; "
                         f"skipped: {loaded.report.summary()['skipped_by_reason']})")
    tok = load_tokenizer(tokenizer)
    chat_template = resolve(template, tok, tokenizer or "starter tokenizer")
    ctok = ConversationTokenizer(tok, chat_template, last_turn_only=last_turn_only)
    report = preflight(tok, ctok, conversations, max_length=max_length, overlong=overlong)
    picked = conversations[first:first + shown]
    return DataInspection(source, loaded, chat_template, report, dataset_stats(loaded.report, conversations, report),
                          list(zip(picked, ctok.tokenize_many(picked))))
