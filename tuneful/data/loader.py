"""Stage one of the data pipeline: read → detect/convert → validate, with a skip report.

Nothing is dropped silently: with ``on_error="skip"`` every skipped record is counted by reason and
kept (location + message) in the report; with ``on_error="fail"`` the first bad record raises with
its location.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from itertools import chain
from typing import Iterable, Iterator, Sequence

from .fields import track, unused_fields
from .formats import FORMATS, Format, Item, detect_format
from .messages import Conversion, ConvertOptions
from .sources import RawRecord, read_records
from .types import Conversation, LabeledConversation, PreferencePair, RecordError, make_conversation


ON_ERROR = ("fail", "skip")


@dataclass
class LoadReport:
    """What a load did: records read, items written, every skip with its reason, every field left unused."""

    records_in: int = 0
    written: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, message)
    ignored_fields: Counter = field(default_factory=Counter)  # "messages[].loss_weight" -> occurrences
    notes: Counter = field(default_factory=Counter)  # named counts: think blocks, parsed calls, pruned messages
    format: str | None = None

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped_by_reason.values())

    def summary(self) -> dict:
        return {
            "records_in": self.records_in,
            "written": self.written,
            "skipped": self.skipped_count,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "ignored_fields": dict(sorted(self.ignored_fields.items())),
            "notes": dict(sorted(self.notes.items())),
        }

    def to_json(self) -> dict:
        """The summary plus every skip and the format: what :meth:`from_json` reads back."""
        return {**self.summary(), "skipped_list": self.skipped, "format": self.format}

    @classmethod
    def from_json(cls, data: dict) -> "LoadReport":
        return cls(data["records_in"], data["written"], Counter(data["skipped_by_reason"]),
                   [tuple(x) for x in data["skipped_list"]], Counter(data["ignored_fields"]), Counter(data["notes"]),
                   data["format"])

    def merge(self, other: "LoadReport") -> None:
        """Add the counts of another report (a later slice of the same source, or another source of a mixture);
        skips keep their order. The format stays this report's."""
        self.records_in += other.records_in
        self.written += other.written
        self.skipped_by_reason.update(other.skipped_by_reason)
        self.skipped += other.skipped
        self.ignored_fields.update(other.ignored_fields)
        self.notes.update(other.notes)


@dataclass
class LoadResult:
    items: list[Item]
    report: LoadReport
    where: list[str] = field(default_factory=list)  # the record each item came from (file:line, row, tree)

    def where_of(self, item: Item) -> str:
        return self.where[next(i for i, x in enumerate(self.items) if x is item)]

    @property
    def conversations(self) -> list[Conversation]:
        return [x for x in self.items if isinstance(x, Conversation)]

    @property
    def preferences(self) -> list[PreferencePair]:
        return [x for x in self.items if isinstance(x, PreferencePair)]

    @property
    def labeled(self) -> list[LabeledConversation]:
        return [x for x in self.items if isinstance(x, LabeledConversation)]


def _resolve_format(name: str) -> Format | None:
    if name == "auto":
        return None
    if name not in FORMATS:
        raise ValueError(f"--format {name!r} is not known; choose auto or one of: {', '.join(FORMATS)}")
    return FORMATS[name]


class SkipPolicy:
    """Apply ``on_error``: raise the first error located, or count and keep it."""

    def __init__(self, report: LoadReport, on_error: str):
        self.report, self.on_error = report, on_error

    def __call__(self, where: str, exc: RecordError) -> None:
        located = exc if exc.where else exc.at(where)
        if self.on_error == "fail":
            raise located from None
        self.report.skipped_by_reason[exc.rule] += 1
        self.report.skipped.append((where, str(located)))


def convert_records(
    records: Iterable[RawRecord],
    *,
    format: str = "auto",
    on_error: str = "fail",
    options: ConvertOptions = ConvertOptions(),
) -> LoadResult:
    """Convert raw records to validated items. Auto-detection fixes the format on the first record."""
    report = LoadReport()
    items: list[Item] = []
    where: list[str] = []
    for location, item in iter_items(records, report, format=format, on_error=on_error, options=options):
        items.append(item)
        where.append(location)
    return LoadResult(items, report, where)


def iter_items(
    records: Iterable[RawRecord],
    report: LoadReport,
    *,
    format: str = "auto",
    on_error: str = "fail",
    options: ConvertOptions = ConvertOptions(),
) -> Iterator[tuple[str, Item]]:
    """(where, item) for each validated item as its record is read, counting into ``report`` (complete once the
    iterator is exhausted): a source larger than memory streams through. A format that converts whole sources
    (OASST trees) yields once every record is read."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    fmt = _resolve_format(format)
    skip = SkipPolicy(report, on_error)
    conversion = Conversion(options)
    whole: list[tuple[str, dict]] = []  # records of a format that converts the whole source at once
    for raw in records:
        report.records_in += 1
        try:
            if raw.error is not None:
                raise raw.error
            if fmt is None:
                fmt = detect_format(raw.value, raw.where)
            elif not isinstance(raw.value, dict) or not fmt.matches(raw.value):
                keys = sorted(raw.value) if isinstance(raw.value, dict) else type(raw.value).__name__
                raise RecordError("format_mismatch", f"record with fields {keys} is not {fmt.name} ({fmt.description})")
            if fmt.convert_all is not None:
                whole.append((raw.where, raw.value))
                continue
            converted, unused = fmt.convert_tracked(raw.value, conversion)
        except RecordError as exc:
            skip(raw.where, exc)
            continue
        report.ignored_fields.update(unused)
        report.written += len(converted)
        for item in converted:
            yield raw.where, item
    if whole:
        for location, item in _convert_whole(fmt, whole, conversion, report, skip):
            report.written += 1
            yield location, item
    report.notes.update(conversion.notes)
    report.format = fmt.name if fmt else None


def peek_format(records: Iterable[RawRecord], format: str = "auto") -> tuple[Format | None, int, Iterator[RawRecord]]:
    """(the format of a stream, the position of the record that fixed it, the stream still whole). ``format`` named:
    that one, at 0; auto: the first record some format matches, as :func:`iter_items` detects it; None (and the
    stream's length) when no record is recognised."""
    fmt = _resolve_format(format)
    records = iter(records)
    if fmt is not None:
        return fmt, 0, records
    seen: list[RawRecord] = []
    for raw in records:
        seen.append(raw)
        if raw.error is None:
            try:
                return detect_format(raw.value, raw.where), len(seen) - 1, chain(seen, records)
            except RecordError:
                pass
    return None, len(seen), iter(seen)


def items_of_slice(records: Sequence[tuple[int, RawRecord]], report: LoadReport, *, format: str | None,
                   detected_at: int, on_error: str) -> list[tuple[int, str, Item]]:
    """(position, where, item) of a slice of a stream (positions ascending) whose format :func:`peek_format` found
    at position ``detected_at``: what :func:`iter_items` yields for these records when it reads the whole stream
    (records before ``detected_at`` are ones no format recognises: detected one by one, they are refused the
    same way), counted into ``report``. Formats that convert whole sources cannot be sliced."""
    position = 0
    out: list[tuple[int, str, Item]] = []

    def feed(part: list[tuple[int, RawRecord]]) -> Iterator[RawRecord]:
        nonlocal position
        for position, raw in part:
            yield raw

    before = [r for r in records if r[0] < detected_at]
    after = [r for r in records if r[0] >= detected_at]
    for part, name in ((before, "auto"), (after, format)):
        if part:
            out += [(position, where, item) for where, item in
                    iter_items(feed(part), report, format=name or "auto", on_error=on_error)]
    return out


def _convert_whole(fmt: Format, records: list[tuple[str, dict]], conversion: Conversion, report: LoadReport,
                   skip: SkipPolicy) -> list[tuple[str, Item]]:
    registries, tracked = [], []  # one registry of tracked sub-objects per record
    for where, value in records:
        record, registry = track(value)
        tracked.append((where, record))
        registries.append(registry)
    converted, skipped = fmt.convert_all(tracked, conversion)
    for where, exc in skipped:
        skip(where, exc)
    for registry in registries:
        report.ignored_fields.update(unused_fields(registry))
    out: list[tuple[str, Item]] = []
    for messages, meta in converted:
        location = f"tree {meta.get('message_tree_id')} (leaf {meta.get('leaf_id')})"
        try:
            out.append((location, make_conversation(messages, meta,
                                                    allow_empty_assistant=conversion.options.allow_empty_assistant)))
        except RecordError as exc:
            skip(location, exc)
    return out


def load(
    source: str | Path,
    *,
    format: str = "auto",
    on_error: str = "fail",
    split: str = "train",
    subset: str | None = None,
    options: ConvertOptions = ConvertOptions(),
) -> LoadResult:
    """Load a local file, dataset folder or Hugging Face dataset id into validated items."""
    return convert_records(read_records(source, split=split, subset=subset), format=format, on_error=on_error, options=options)


def write_jsonl(items: Iterable[Item], path: str | Path) -> None:
    """Canonical JSONL: ``{"messages": [...]}`` or ``{"prompt", "chosen", "rejected"}`` per line. Written to a
    temporary file renamed into place at the end: an error or a kill midway leaves the old file (or none), never
    half of a new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
