"""What ``tuneful data inspect`` shows: per-dataset statistics and examples with trained tokens marked."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ..data.loader import LoadReport
from ..data.types import Conversation
from .masking import TokenizedConversation
from .preflight import PreflightReport


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


def highlighted(example: TokenizedConversation) -> Any:
    """The rendering as rich Text: trained tokens bold green on dark, the rest dimmed."""
    from rich.text import Text

    text, out, pos = example.rendered.text, Text(), 0
    for (start, end), trained in zip(example.offsets, example.train_mask):
        if start > pos:  # characters no token covers (e.g. whitespace swallowed by a special token)
            out.append(text[pos:start], style="dim")
        if end > start:
            out.append(text[start:end], style="bold green on grey11" if trained else "dim")
        pos = max(pos, end)
    out.append(text[pos:], style="dim")
    return out
