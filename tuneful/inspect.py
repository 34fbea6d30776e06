"""What ``tuneful data inspect`` shows: per-dataset statistics and examples with trained tokens marked."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from .data.loader import LoadReport
from .data.types import Conversation
from .masking import TokenizedConversation
from .preflight import PreflightReport


@dataclass(frozen=True)
class DatasetStats:
    records: int
    conversations: int
    assistant_turns: int
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
            ("tokens min / median / p95 / max",
             f"{self.tokens_min} / {self.tokens_median:g} / {self.tokens_p95} / {self.tokens_max}"),
            ("trained fraction of tokens", f"{self.trained_fraction:.1%}"),
            ("truncated (overlong)", str(self.truncated)),
            ("dropped (overlong)", str(self.dropped_overlong)),
            ("skipped by reason", skipped),
        ]


def dataset_stats(load_report: LoadReport, conversations: list[Conversation], report: PreflightReport) -> DatasetStats:
    lengths = sorted(len(e.input_ids) for e in report.examples) or [0]
    total = sum(lengths)
    trained = sum(e.trained_tokens for e in report.examples)
    skipped = dict(load_report.skipped_by_reason)
    if report.failed_records:
        skipped["template_error"] = report.failed_records
    return DatasetStats(
        records=load_report.records_in,
        conversations=len(conversations),
        assistant_turns=sum(1 for c in conversations for m in c.messages if m.role == "assistant"),
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
