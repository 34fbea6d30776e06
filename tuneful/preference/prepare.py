"""DPO data: load pairs → hold out → template/tokenizer preflight → tokenize with a shared prompt → length policy.

The SFT preflight (double BOS, end-of-turn never trained, pad == eos, template drift...) runs on the
conversations prompt + chosen, so every template check SFT makes is made here too, before training.
Prepared once into Arrow by :mod:`tuneful.tokenization.prepared` (``datasets.map`` in ``data.num_proc``
processes, cached under a fingerprint of data, tokenizer, template and settings) and read lazily.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.loader import LoadReport
from ..data.types import Conversation, LabeledConversation, PreferencePair
from ..templates.registry import ChatTemplate, run_template
from ..tokenization.masking import ConversationTokenizer
from ..tokenization.preflight import PreflightReport, PreflightTally, check_conversation, finish_report
from ..tokenization.prepared import (OtherItems, Takes, build_splits, cached, fingerprint, list_of, open_rows, source_key,
                              tokenizer_fingerprint)
from .config import PreferenceDataSettings
from .pairs import PreferenceDataError, PreferenceExample, preference_tokenizer, tokenize_pair


@dataclass
class PairRows(Sequence[PreferenceExample]):
    """Preference examples read lazily from the prepared Arrow files."""

    table: Any
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PreferenceExample:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = int(self.rows[i])
        cell = partial(list_of, self.table, row=row)
        return PreferenceExample(cell("prompt_ids"), cell("chosen_ids"), cell("chosen_mask"), cell("rejected_ids"),
                                 cell("rejected_mask"), float(self.table.column("margin")[row].as_py()))


@dataclass
class PreparedPairs:
    train: Sequence[PreferenceExample]
    eval: Sequence[PreferenceExample]
    template: ChatTemplate
    load_report: LoadReport
    preflight_report: PreflightReport
    end_of_turn_ids: list[int]
    dropped_overlong: int
    cache_folder: Path | None = None
    cache_hit: bool = False

    def summary(self) -> dict:
        return {"train_pairs": len(self.train), "eval_pairs": len(self.eval), "dropped_overlong": self.dropped_overlong,
                "template": self.template.origin, "data": self.load_report.summary(),
                "preflight_warnings": [str(f) for f in self.preflight_report.warnings]}


def pair_length(example: PreferenceExample) -> int:
    """Tokens of the longer row of the pair (prompt + the longer response)."""
    return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))


def _refusal(other: OtherItems, source: Any) -> str:
    if other.kind == LabeledConversation.__name__:
        return (f"data.train={source} holds unpaired preference data (KTO: replies with a true/false 'label', e.g. "
                f"{other.where}), not pairs; DPO needs prompt/chosen/rejected. Pair them first, or train them with a "
                "KTO trainer")
    return (f"data.train={source} holds conversations, not preference pairs (prompt/chosen/rejected, e.g. "
            f"{other.where}); train on it with tuneful sft")


DPO_TAKES = Takes(PreferencePair, _refusal)  # conversations or labelled (KTO) records are refused


def overlong_error(dropped: int, split: str, longest: int, settings: Any, unit: str = "pair") -> None:
    """``data.overlong=fail`` and something longer than ``data.max_length``: the error naming the fix."""
    raise PreferenceDataError(f"{dropped} {split} {unit}(s) exceed data.max_length={settings.max_length} (longest "
                              f"{longest} tokens). Fix: raise data.max_length or set data.overlong=drop")


# --- prepared once, cached (tuneful.tokenization.prepared) --------------------------------------------------

@dataclass
class RecordProblems:
    """Records refused while tokenizing (all counted, the first 20 named) and records over ``data.max_length``
    (counted, with the longest); tallied per map batch and merged over the split."""

    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    dropped: int = 0
    longest: int = 0

    def merge(self, part: dict) -> None:
        self.errors = (self.errors + part["errors"])[:20]
        self.error_count += part["error_count"]
        self.dropped += part["dropped"]
        self.longest = max(self.longest, part["longest"])

    def to_json(self) -> dict:
        return {"errors": self.errors[:20], "error_count": self.error_count, "dropped": self.dropped,
                "longest": self.longest}

    def raise_on_errors(self, unit: str) -> None:
        if self.error_count:
            raise PreferenceDataError(f"{self.error_count} bad {unit}(s):\n  " + "\n  ".join(self.errors))


def tokenized_within(records: Sequence[Any], names: Sequence[str], tokenize: Callable[[Any], Any],
                     length: Callable[[Any], int], max_length: int, problems: RecordProblems) -> list[tuple[Any, int]]:
    """(tokenized, length) of each record that tokenizes and fits in ``max_length``; the others counted."""
    kept = []
    for record, name in zip(records, names):
        try:
            tokenized = tokenize(record)
        except PreferenceDataError as exc:
            problems.errors.append(f"{name}: {exc}")
            problems.error_count += 1
            continue
        size = length(tokenized)
        if size > max_length:
            problems.dropped, problems.longest = problems.dropped + 1, max(problems.longest, size)
            continue
        kept.append((tokenized, size))
    return kept


def _pair_batch(pairs: list[PreferencePair], wheres: list[str], positions: list[int], *, ctok: ConversationTokenizer,
                max_length: int) -> dict:
    """One map batch: a row per usable pair, then a row with the batch's tally: the preflight of the chosen
    conversations, the bad pairs, the pairs over max_length."""
    columns = ("prompt_ids", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
    out: dict[str, list] = {**{c: [] for c in columns}, "margin": [], "length": [], "tally": []}
    names = [str(p.meta.get("where") or p.meta.get("id") or where or f"record {position}")
             for p, where, position in zip(pairs, wheres, positions)]
    chosen = [Conversation((*p.prompt, p.chosen), p.meta, p.inputs) for p in pairs]
    preflight_tally = PreflightTally()
    for conv, name, tokenized in zip(chosen, names, ctok.tokenize_many(chosen)):
        check_conversation(conv, name, tokenized, ctok, preflight_tally, max_length=None, overlong="drop")
    problems = RecordProblems()
    for example, length in tokenized_within(pairs, names, partial(tokenize_pair, ctok), pair_length, max_length,
                                            problems):
        for column in columns:
            out[column].append(getattr(example, column))
        out["margin"].append(example.margin)
        out["length"].append(length)
        out["tally"].append(None)
    for column in columns:
        out[column].append([])
    out["margin"].append(0.0)
    out["length"].append(0)
    out["tally"].append(json.dumps({"preflight": preflight_tally.to_json(), "problems": problems.to_json()}))
    return out


def _features() -> Any:
    from datasets import Features, Sequence as ArrowList, Value

    ids, mask = ArrowList(Value("int32")), ArrowList(Value("int8"))
    return Features({"prompt_ids": ids, "chosen_ids": ids, "chosen_mask": mask, "rejected_ids": ids,
                     "rejected_mask": mask, "margin": Value("float64"), "length": Value("int32"),
                     "tally": Value("string")})


def _build(folder: Path, settings: PreferenceDataSettings, ctok: ConversationTokenizer, seed: int) -> dict:
    files, load_report = build_splits(folder, settings, seed, DPO_TAKES, _pair_batch,
                                      {"ctok": ctok, "max_length": settings.max_length}, _features())
    return {"files": files, "load_report": load_report}


def _fingerprint(settings: PreferenceDataSettings, ctok: ConversationTokenizer, seed: int) -> str:
    return fingerprint({
        "kind": "pairs", "train": source_key(settings.train), "eval": source_key(settings.eval) if settings.eval else "",
        "eval_fraction": settings.eval_fraction,
        "seed": seed if (settings.eval_fraction or isinstance(settings.train, list)) else None,
        "format": settings.format, "on_error": settings.on_error, "tokenizer": tokenizer_fingerprint(ctok.tokenizer),
        "template": ctok.template.source, "max_length": settings.max_length,
        "clock": date.today().isoformat() if "strftime_now" in ctok.template.source else None,
    })


@dataclass
class _Split:
    rows: PairRows
    preflight: PreflightTally
    problems: RecordProblems


def _open(folder: Path, names: list[str]) -> _Split:
    table, rows, tallies = open_rows(folder, names)
    split = _Split(PairRows(table, rows), PreflightTally(), RecordProblems())
    for part in tallies:
        split.preflight.merge(PreflightTally.from_json(part["preflight"]))
        split.problems.merge(part["problems"])
    return split


def prepare_pairs(settings: PreferenceDataSettings, tokenizer: Any, seed: int, *,
                  main_process_first: AbstractContextManager = nullcontext()) -> PreparedPairs:
    """Load → hold out → template/tokenizer preflight → tokenize with a shared prompt → length policy, prepared
    once into Arrow and cached (the main process prepares, the others read)."""
    template = run_template(settings, tokenizer)
    ctok = preference_tokenizer(tokenizer, template)
    folder, meta, hit = cached(settings.cache_dir, _fingerprint(settings, ctok, seed),
                               lambda building: _build(building, settings, ctok, seed), main_process_first)
    if not meta["files"]["train"]:
        raise PreferenceDataError(f"data.train={settings.train}: no preference pairs to train on")
    train = _open(folder, meta["files"]["train"])
    report = finish_report(PreflightReport(), train.preflight, tokenizer, ctok, max_length=None, overlong="drop",
                           allow_template_change=settings.allow_template_change)
    report.raise_on_errors()
    held = _open(folder, meta["files"]["eval"]) if meta["files"]["eval"] else None
    splits = [(name, split.problems) for name, split in (("training", train), ("held-out", held)) if split]
    check_problems(splits, settings, "preference pair", "pair")
    if not len(train.rows):
        raise PreferenceDataError(f"every training pair is longer than data.max_length={settings.max_length}")
    return PreparedPairs(train.rows, held.rows if held is not None else [], template,
                         LoadReport.from_json(meta["load_report"]), report, report.end_of_turn_ids(tokenizer),
                         sum(p.dropped for _, p in splits), folder, hit)


def check_problems(splits: Sequence[tuple[str, RecordProblems]], settings: Any, record: str, unit: str) -> None:
    """Bad records of any split, then (with ``data.overlong=fail``) records over the limit: the error naming them."""
    for _, problems in splits:
        problems.raise_on_errors(record)
    for name, problems in splits:
        if problems.dropped and settings.overlong == "fail":
            overlong_error(problems.dropped, name, problems.longest, settings, unit)
