"""Prepared SFT data: conversations → token ids + train masks in memory-mapped Arrow files, built once.

Knows conversations, a :class:`~tuneful.tokenization.masking.ConversationTokenizer` and the preflight checks; no
model, no batches.

1. The source streams through the loader (one validated conversation at a time) into an Arrow table
   of conversations, so a source larger than memory never is in memory.
2. ``datasets.Dataset.map`` renders, tokenizes and checks them in batches — one tokenizer call per
   batch, ``num_proc`` processes — writing one row per training example and, per batch, one row
   that carries the batch's preflight tally. The report of the whole data is the merge of those
   tallies: exact counts and a few named records per finding; no example is kept in memory.
3. Everything is stored under a fingerprint of the source (path, size, modification time), the
   tokenizer, the template and the settings. A second run with the same inputs — or another rank
   of the same run, once the main process has prepared — opens the files, memory-mapped.

Trainers read rows lazily (:class:`PreparedRows`): peak memory does not grow with the data beyond the
Arrow pages the operating system maps in.

    rows, report, load_report = prepare_conversations(settings, tokenizer, ctok, seed)   # one call
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..data.loader import LoadReport, iter_items
from ..data.mixture import load_training
from ..data.sources import read_records
from ..data.types import Conversation, LabeledConversation, PreferencePair
from ..tokenization.masking import ConversationTokenizer, labels_from_mask, special_tokens_of
from ..tokenization.preflight import PreflightReport, PreflightTally, check_conversation, finish_report
from ..train.plan import hold_out
from .batching import Example
from .config import DataSettings

PREPARED_VERSION = 1  # bump when the rows or the tally change meaning: old caches are then never read
BATCH = 256  # conversations per map batch: one tokenizer call and one tally row each
AUTO_PROCESSES_FROM = 20_000  # below this many conversations, starting worker processes costs more than it saves
CONVERSATIONS_PER_PART = 100_000  # conversations per Arrow file of the source while it is being prepared


def default_cache_dir() -> Path:
    """``$TUNEFUL_CACHE_DIR``, else ``~/.cache/tuneful``; prepared data lives in its ``prepared/`` folder."""
    return Path(os.environ.get("TUNEFUL_CACHE_DIR") or Path.home() / ".cache" / "tuneful")


@dataclass
class PreparedRows(Sequence[Example]):
    """Training examples read lazily from Arrow (plus in-memory ones appended, e.g. replay documents)."""

    table: Any  # pyarrow Table with input_ids, train_mask, length
    rows: np.ndarray  # the table rows that are training examples, in order
    extra: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = self.table.column("input_ids")
        self._mask = self.table.column("train_mask")
        self.lengths = np.concatenate([self.table.column("length").to_numpy()[self.rows].astype(np.int64),
                                       np.array([len(e) for e in self.extra], dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i >= len(self.rows):
            return self.extra[i - len(self.rows)]
        row = int(self.rows[i])
        ids = self._ids[row].values.to_numpy().tolist()
        return Example(ids, labels_from_mask(ids, self._mask[row].values.to_numpy().tolist()))

    def with_extra(self, extra: list[Example]) -> "PreparedRows":
        return PreparedRows(self.table, self.rows, self.extra + extra)


@dataclass
class PreparedSplit:
    """One split's rows and what its preflight found."""

    rows: PreparedRows
    tally: PreflightTally


# --- fingerprint ------------------------------------------------------------------------------------

def _source_key(source: Any) -> Any:
    """What identifies a source's content without reading it: local files by path, size and modification time
    (every file of a folder); anything else (a dataset id) by its name."""
    if isinstance(source, list):
        return [{k: _source_key(v) if k == "path" else v for k, v in sorted(s.items())} for s in source]
    path = Path(str(source))
    if path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.rglob("*")) if p.is_file()]
    return str(source)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's vocabulary, merges, normaliser and added tokens (its serialised form) and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((body + json.dumps(special_tokens_of(tokenizer), sort_keys=True)).encode()).hexdigest()


def fingerprint(settings: DataSettings, ctok: ConversationTokenizer, seed: int) -> str:
    """Everything the prepared rows depend on. Held-out selection depends on the seed; templates that print
    today's date depend on the day."""
    parts = {
        "version": PREPARED_VERSION,
        "train": _source_key(settings.train),
        "eval": _source_key(settings.eval) if settings.eval else "",
        "eval_fraction": settings.eval_fraction,
        "seed": seed if (settings.eval_fraction or isinstance(settings.train, list)) else None,
        "format": settings.format, "on_error": settings.on_error,
        "tokenizer": tokenizer_fingerprint(ctok.tokenizer),
        "template": ctok.template.source,
        "last_turn_only": ctok.last_turn_only, "reasoning": ctok.reasoning,
        "max_length": settings.max_length, "overlong": settings.overlong,
        "clock": (ctok.now.isoformat() if ctok.now else date.today().isoformat())
        if "strftime_now" in ctok.template.source else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --- stage 1: source → conversations table ---------------------------------------------------------

def sft_conversations(items: Iterable[tuple[str, Any]], source: Any) -> Iterator[tuple[str, Conversation]]:
    """The conversations of a stream of loaded items; preference pairs or labelled (KTO) records stop it with
    an error that counts them over the whole source and says what to do instead."""
    items = iter(items)
    for where, item in items:
        if isinstance(item, (PreferencePair, LabeledConversation)):
            rest = [item] + [x for _, x in items if isinstance(x, type(item))]
            if isinstance(item, PreferencePair):
                raise ValueError(f"data {source} holds preference pairs ({len(rest)}, e.g. {where}); SFT needs "
                                 "conversations (use tuneful dpo)")
            undesirable = sum(not x.label for x in rest)
            raise ValueError(
                f"data {source} holds unpaired preference data (KTO: {len(rest)} records with a 'label', "
                f"{undesirable} marked undesirable, e.g. {where}); SFT would train the undesirable replies as "
                "targets. Fix: keep only the desirable ones (records with label == true, without the label field) "
                "for SFT, or train them with a KTO trainer.")
        yield where, item


def _stream_source(source: Any, settings: DataSettings, seed: int) -> tuple[LoadReport, Iterator[tuple[str, Any]]]:
    """The load report (complete once the items are consumed) and (where, item) of a training source: one
    file or dataset streams; a mixture is drawn in memory (it samples across sources), then streams out."""
    if isinstance(source, list):
        result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
        return result.report, iter(zip(result.where, result.items))
    report = LoadReport()
    return report, iter_items(read_records(source), report, format=settings.format, on_error=settings.on_error)


def _write_parts(items: Iterable[tuple[str, Conversation]], folder: Path, prefix: str) -> list[tuple[Path, int]]:
    """The conversations as Arrow files of up to ``CONVERSATIONS_PER_PART`` rows each: (file, rows). Parts are
    tokenized and deleted one by one, so the pages of the source mapped into memory stay bounded."""
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    features = Features({"record": Value("string"), "where": Value("string")})
    parts: list[tuple[Path, int]] = []
    writer = None
    for where, conv in items:
        if writer is None or parts[-1][1] == CONVERSATIONS_PER_PART:
            if writer is not None:
                writer.finalize()
                writer.close()
            parts.append((folder / f"{prefix}-{len(parts):05d}.arrow", 0))
            writer = ArrowWriter(path=str(parts[-1][0]), features=features, writer_batch_size=10_000)
        writer.write({"record": json.dumps(conv.to_json(), ensure_ascii=False), "where": where})
        parts[-1] = (parts[-1][0], parts[-1][1] + 1)
    if writer is not None:
        writer.finalize()
        writer.close()
    return parts


# --- stage 2: conversations → training rows + tallies -----------------------------------------------

def _tokenize_batch(batch: dict, indices: list[int], *, ctok: ConversationTokenizer, max_length: int,
                    overlong: str, first_index: int) -> dict:
    """One map batch: a row per training example, then one row with the batch's tally (length 0)."""
    out: dict[str, list] = {"input_ids": [], "train_mask": [], "length": [], "tally": []}
    conversations = [Conversation.from_json(json.loads(r)) for r in batch["record"]]
    tally = PreflightTally()
    for conv, where, index, tokenized in zip(conversations, batch["where"], indices,
                                             ctok.tokenize_many(conversations)):
        name = str(conv.meta.get("where") or conv.meta.get("id") or where or f"record {first_index + index}")
        kept = check_conversation(conv, name, tokenized, ctok, tally, max_length=max_length, overlong=overlong)
        for example in kept.examples if kept is not None else ():
            out["input_ids"].append(example.input_ids)
            out["train_mask"].append(example.train_mask)
            out["length"].append(len(example.input_ids))
            out["tally"].append(None)
    out["input_ids"].append([])
    out["train_mask"].append([])
    out["length"].append(0)
    out["tally"].append(json.dumps(tally.to_json()))
    return out


def _tokenize(conversations: Any, ctok: ConversationTokenizer, *, max_length: int, overlong: str, processes: int,
              cache_file: Path, first_index: int) -> list[str]:
    """Map one part of a conversations table to training rows; the Arrow files written. ``first_index``: the
    split's index of the part's first conversation (records without a location are named by it)."""
    from datasets import Features, Sequence as ArrowList, Value

    features = Features({"input_ids": ArrowList(Value("int32")), "train_mask": ArrowList(Value("int8")),
                         "length": Value("int32"), "tally": Value("string")})
    processes = max(1, min(processes, len(conversations) // BATCH or 1))
    mapped = conversations.map(
        _tokenize_batch, batched=True, batch_size=BATCH, with_indices=True, remove_columns=conversations.column_names,
        fn_kwargs={"ctok": ctok, "max_length": max_length, "overlong": overlong, "first_index": first_index},
        features=features, num_proc=processes if processes > 1 else None, cache_file_name=str(cache_file),
        new_fingerprint=cache_file.stem, desc="tuneful: render, tokenize, mask, check")
    return [f["filename"] for f in mapped.cache_files]


# --- the whole preparation -------------------------------------------------------------------------

def _open_split(files: Sequence[str]) -> PreparedSplit:
    import pyarrow as pa
    from datasets import Dataset, concatenate_datasets

    dataset = concatenate_datasets([Dataset.from_file(f) for f in files])
    table: pa.Table = dataset.data.table
    lengths = table.column("length").to_numpy()
    tally = PreflightTally()
    tallies = table.column("tally")
    for row in np.flatnonzero(lengths == 0):
        tally.merge(PreflightTally.from_json(json.loads(tallies[int(row)].as_py())))
    return PreparedSplit(PreparedRows(table, np.flatnonzero(lengths > 0)), tally)


def _build(folder: Path, settings: DataSettings, ctok: ConversationTokenizer, seed: int) -> dict:
    """Prepare into ``folder``: the conversations in parts, then each part's training and held-out rows (the part
    deleted once done), and what ``meta.json`` records."""
    from datasets import Dataset

    report, items = _stream_source(settings.train, settings, seed)
    train_parts = _write_parts(sft_conversations(items, settings.train), folder, "conversations-train")
    total = sum(n for _, n in train_parts)
    eval_parts: list[tuple[Path, int]] = []
    held = np.zeros(total, dtype=bool)
    if settings.eval:
        eval_parts = _write_parts(sft_conversations(iter_items(read_records(settings.eval), LoadReport(),
                                                               format=settings.format, on_error=settings.on_error),
                                                    settings.eval), folder, "conversations-eval")
    else:
        held[hold_out(list(range(total)), settings.eval_fraction, seed)[1]] = True
    processes = settings.num_proc or (min(os.cpu_count() or 1, 8) if total >= AUTO_PROCESSES_FROM else 1)
    files: dict[str, list[str]] = {"train": [], "eval": []}
    first = {"train": 0, "eval": 0}

    def tokenize(split: str, table: Any, k: int) -> None:
        if len(table):
            files[split] += _tokenize(table, ctok, max_length=settings.max_length,
                                      overlong=settings.overlong if split == "train" else "drop", processes=processes,
                                      cache_file=folder / f"{split}-{k:05d}.arrow", first_index=first[split])
            first[split] += len(table)

    offset = 0
    for k, (path, rows) in enumerate(train_parts):
        table = Dataset.from_file(str(path))
        part_held = held[offset : offset + rows]
        offset += rows
        if part_held.any():
            tokenize("train", table.select(np.flatnonzero(~part_held)), k)
            tokenize("eval", table.select(np.flatnonzero(part_held)), k)
        else:
            tokenize("train", table, k)
        del table
        path.unlink()
    for k, (path, _) in enumerate(eval_parts):
        tokenize("eval", Dataset.from_file(str(path)), k)
        path.unlink()
    return {"files": {k: [Path(f).name for f in v] for k, v in files.items()},
            "load_report": {**report.summary(), "skipped_list": report.skipped, "format": report.format}}


def prepared_summary(meta: dict) -> str:
    report = meta["load_report"]
    return f"{report['records_in']} records read, {report['written']} written, {report['skipped']} skipped"


def _load_report(data: dict) -> LoadReport:
    from collections import Counter

    return LoadReport(data["records_in"], data["written"], Counter(data["skipped_by_reason"]),
                      [tuple(x) for x in data["skipped_list"]], Counter(data["ignored_fields"]),
                      Counter(data["notes"]), data["format"])


@dataclass
class Prepared:
    train: PreparedSplit
    eval: PreparedSplit | None
    load_report: LoadReport
    folder: Path
    cache_hit: bool


def prepare_conversations(settings: DataSettings, ctok: ConversationTokenizer, seed: int, *,
                          main_process_first: AbstractContextManager = nullcontext()) -> Prepared:
    """The training and held-out rows for ``settings``, from the cache when they were prepared before.

    ``main_process_first``: under several processes (accelerate's ``main_process_first()``), the main one
    prepares while the others wait, then they open its files.
    """
    root = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    folder = root / "prepared" / fingerprint(settings, ctok, seed)
    with main_process_first:
        hit = (folder / "meta.json").exists()
        if not hit:
            building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            try:
                meta = _build(building, settings, ctok, seed)
                (building / "meta.json").write_text(json.dumps(meta))
                if folder.exists():  # another run finished the same preparation meanwhile
                    shutil.rmtree(building)
                else:
                    building.rename(folder)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
    meta = json.loads((folder / "meta.json").read_text())
    if not meta["files"]["train"]:
        raise ValueError(f"data.train={settings.train}: no conversation to train on ({prepared_summary(meta)})")
    train = _open_split([str(folder / f) for f in meta["files"]["train"]])
    held = _open_split([str(folder / f) for f in meta["files"]["eval"]]) if meta["files"]["eval"] else None
    return Prepared(train, held, _load_report(meta["load_report"]), folder, hit)


def preflight_report(split: PreparedSplit, tokenizer: Any, ctok: ConversationTokenizer, settings: DataSettings, *,
                     overlong: str | None = None, allow_template_change: bool | None = None) -> PreflightReport:
    """The split's preflight report from its tally (and the checks on the tokenizer and template choice)."""
    return finish_report(PreflightReport(), split.tally, tokenizer, ctok, max_length=settings.max_length,
                         overlong=overlong or settings.overlong,
                         allow_template_change=settings.allow_template_change if allow_template_change is None
                         else allow_template_change)
