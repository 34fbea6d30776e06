"""Prepared SFT data: conversations → token ids + train masks in memory-mapped Arrow files, built once.

Knows conversations, a :class:`~tuneful.tokenization.masking.ConversationTokenizer` and the preflight checks; no
model, no batches. The files, fingerprint and cache folder are :mod:`tuneful.tokenization.prepared`'s.

1. The source's raw records stream into Arrow parts, so a source larger than memory never is in memory.
2. ``datasets.Dataset.map`` converts, validates, renders, tokenizes and checks them in batches — one
   tokenizer call per batch, ``num_proc`` processes — writing one row per training example and, per
   batch, one row that carries the batch's preflight tally and load report. The reports of the whole
   data are the merge of those tallies: exact counts and a few named records per finding; no example
   is kept in memory.
3. Everything is stored under a fingerprint of the source (path, size, modification time), the
   tokenizer, the template and the settings. A second run with the same inputs — or another rank
   of the same run, once the main process has prepared — opens the files, memory-mapped.

Trainers read rows lazily (:class:`PreparedRows`): peak memory does not grow with the data beyond the
Arrow pages the operating system maps in.

    prepared = prepare_conversations(settings, ctok, seed)   # .train.rows[i] -> Example, .train.tally
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.loader import LoadReport
from ..data.types import Conversation, PreferencePair
from ..tokenization.masking import ConversationTokenizer, labels_from_mask
from ..tokenization.preflight import PreflightReport, PreflightTally, check_conversation, finish_report
from ..tokenization.prepared import (OtherItems, Takes, build_splits, cached, fingerprint as fingerprint_of, list_of,
                              open_rows, source_key, tokenizer_fingerprint)
from ..tokenization.batching import Example
from .config import DataSettings


@dataclass
class PreparedRows(Sequence[Example]):
    """Training examples read lazily from Arrow (plus in-memory ones appended, e.g. replay documents)."""

    table: Any  # pyarrow Table with input_ids, train_mask, length
    rows: np.ndarray  # the table rows that are training examples, in order
    extra: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
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
        ids = list_of(self.table, "input_ids", row)
        return Example(ids, labels_from_mask(ids, list_of(self.table, "train_mask", row)))

    def with_extra(self, extra: list[Example]) -> "PreparedRows":
        return PreparedRows(self.table, self.rows, self.extra + extra)


@dataclass
class PreparedSplit:
    """One split's rows and what its preflight found."""

    rows: PreparedRows
    tally: PreflightTally


# --- fingerprint ------------------------------------------------------------------------------------

def fingerprint(settings: DataSettings, ctok: ConversationTokenizer, seed: int) -> str:
    """Everything the prepared rows depend on. Held-out selection depends on the seed; templates that print
    today's date depend on the day."""
    return fingerprint_of({
        "kind": "sft",
        "train": source_key(settings.train),
        "eval": source_key(settings.eval) if settings.eval else "",
        "eval_fraction": settings.eval_fraction,
        "seed": seed if (settings.eval_fraction or isinstance(settings.train, list)) else None,
        "format": settings.format, "on_error": settings.on_error,
        "tokenizer": tokenizer_fingerprint(ctok.tokenizer),
        "template": ctok.template.source,
        "last_turn_only": ctok.last_turn_only, "reasoning": ctok.reasoning,
        "max_length": settings.max_length, "overlong": settings.overlong,
        "clock": (ctok.now.isoformat() if ctok.now else date.today().isoformat())
        if "strftime_now" in ctok.template.source else None,
    })


# --- what SFT takes from a source --------------------------------------------------------------------

def _refusal(other: OtherItems, source: Any) -> str:
    if other.kind == PreferencePair.__name__:
        return (f"data {source} holds preference pairs ({other.count}, e.g. {other.where}); SFT needs conversations "
                "(use tuneful dpo)")
    return (f"data {source} holds unpaired preference data (KTO: {other.count} records with a 'label', "
            f"{other.undesirable} marked undesirable, e.g. {other.where}); SFT would train the undesirable replies as "
            "targets. Fix: keep only the desirable ones (records with label == true, without the label field) "
            "for SFT, or train them with a KTO trainer.")


SFT_TAKES = Takes(Conversation, _refusal)  # preference pairs or labelled (KTO) records are refused, counted


# --- stage 2: conversations → training rows + tallies -----------------------------------------------

def tokenize_batch(conversations: list[Conversation], wheres: list[str], positions: list[int], *,
                   ctok: ConversationTokenizer, max_length: int, overlong: str) -> dict:
    """One map batch: a row per training example, then one row with the batch's tally (length 0)."""
    out: dict[str, list] = {"input_ids": [], "train_mask": [], "length": [], "tally": []}
    tally = PreflightTally()
    for conv, where, position, tokenized in zip(conversations, wheres, positions, ctok.tokenize_many(conversations)):
        name = str(conv.meta.get("where") or conv.meta.get("id") or where or f"record {position}")
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


# --- the whole preparation -------------------------------------------------------------------------

def _open_split(folder: Path, names: Sequence[str]) -> PreparedSplit:
    table, rows, tallies = open_rows(folder, names)
    tally = PreflightTally()
    for part in tallies:
        tally.merge(PreflightTally.from_json(part))
    return PreparedSplit(PreparedRows(table, rows), tally)


def _build(folder: Path, settings: DataSettings, ctok: ConversationTokenizer, seed: int) -> dict:
    """Prepare into ``folder``: the conversations in parts, each part's training and held-out rows, and what
    ``meta.json`` records."""
    files, load_report = build_splits(folder, settings, seed, SFT_TAKES, tokenize_batch,
                                      {"ctok": ctok, "max_length": settings.max_length, "overlong": settings.overlong},
                                      _features(), eval_kwargs={"overlong": "drop"})
    return {"files": files, "load_report": load_report}


def _features() -> Any:
    from datasets import Features, Sequence as ArrowList, Value

    return Features({"input_ids": ArrowList(Value("int32")), "train_mask": ArrowList(Value("int8")),
                     "length": Value("int32"), "tally": Value("string")})


def prepared_summary(meta: dict) -> str:
    report = meta["load_report"]
    return f"{report['records_in']} records read, {report['written']} written, {report['skipped']} skipped"


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
    folder, meta, hit = cached(settings.cache_dir, fingerprint(settings, ctok, seed),
                               lambda building: _build(building, settings, ctok, seed), main_process_first)
    if not meta["files"]["train"]:
        raise ValueError(f"data.train={settings.train}: no conversation to train on ({prepared_summary(meta)})")
    train = _open_split(folder, meta["files"]["train"])
    held = _open_split(folder, meta["files"]["eval"]) if meta["files"]["eval"] else None
    return Prepared(train, held, LoadReport.from_json(meta["load_report"]), folder, hit)


def preflight_report(split: PreparedSplit, tokenizer: Any, ctok: ConversationTokenizer,
                     settings: DataSettings) -> PreflightReport:
    """The split's preflight report from its tally (and the checks on the tokenizer and template choice)."""
    return finish_report(PreflightReport(), split.tally, tokenizer, ctok, max_length=settings.max_length,
                         overlong=settings.overlong, allow_template_change=settings.allow_template_change)
