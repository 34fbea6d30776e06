"""KTO data: labelled conversations → (prompt, reply, mismatched reply) items, tokenized like DPO pairs.

Each record is a conversation whose final assistant reply is desirable or not. It is rendered and
masked exactly as a DPO reply (the prompt is the token prefix before the first trained token; the
reply is its trained tokens and the end-of-turn). KTO's reference point needs, for each prompt, a
reply written for *another* prompt: item i borrows the reply of the nearest earlier item (cycling)
with a different prompt whose reply fits after its prompt within ``max_length``. That assignment is
fixed at preparation, so reference log-probs can be precomputed and a resumed run sees the same
items. An item is read as a :class:`PreferenceExample` (its reply first, the mismatched reply
second), so the DPO batch layouts and reference policies serve KTO unchanged. Prepared once into Arrow
by :mod:`tuneful.tokenization.prepared` (cached under a fingerprint, read lazily), as DPO pairs are.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow.compute as pc

from ..data.loader import LoadReport
from ..data.types import Conversation, LabeledConversation, PreferencePair
from ..preference.pairs import PreferenceDataError, PreferenceExample, preference_tokenizer, reply_tokens
from ..preference.prepare import PreparedPairs, RecordProblems, check_problems, tokenized_within
from ..templates.registry import run_template
from ..tokenization.preflight import PreflightReport, PreflightTally, check_conversation, finish_report
from ..tokenization.prepared import (OtherItems, Takes, build_splits, cached, fingerprint, list_of, open_rows, source_key,
                              tokenizer_fingerprint)
from .config import LabeledDataSettings


@dataclass(frozen=True)
class LabeledReply:
    prompt_ids: list[int]
    reply_ids: list[int]
    reply_mask: list[int]
    desirable: bool


@dataclass
class LabeledRows(Sequence[PreferenceExample]):
    """KTO items read lazily from the prepared Arrow files: each row's reply, and its partner row's reply."""

    table: Any
    rows: np.ndarray
    partners: np.ndarray  # for each item, the row whose reply is its mismatched reply

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PreferenceExample:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row, other = int(self.rows[i]), int(self.partners[i])
        return PreferenceExample(list_of(self.table, "prompt_ids", row), list_of(self.table, "reply_ids", row),
                                 list_of(self.table, "reply_mask", row), list_of(self.table, "reply_ids", other),
                                 list_of(self.table, "reply_mask", other))

    @property
    def desirable(self) -> list[bool]:
        return self.table.column("desirable").to_numpy(zero_copy_only=False)[self.rows].tolist()


@dataclass
class PreparedLabeled(PreparedPairs):
    """Prepared pairs whose first reply carries a label (the second is the mismatched reply)."""

    train_desirable: list[bool] = field(default_factory=list)
    eval_desirable: list[bool] = field(default_factory=list)

    def balance(self, desirable_weight: float, undesirable_weight: float) -> float | None:
        """λ_D·n_D / (λ_U·n_U) over the training items (None without undesirable items)."""
        n_d = sum(self.train_desirable)
        n_u = len(self.train_desirable) - n_d
        return desirable_weight * n_d / (undesirable_weight * n_u) if n_u else None

    def summary(self) -> dict:
        n_d = sum(self.train_desirable)
        return {"train_replies": len(self.train), "train_desirable": n_d, "train_undesirable": len(self.train) - n_d,
                "eval_replies": len(self.eval), "dropped_overlong": self.dropped_overlong,
                "template": self.template.origin, "data": self.load_report.summary(),
                "preflight_warnings": [str(f) for f in self.preflight_report.warnings]}


def _refusal(other: OtherItems, source: Any) -> str:
    if other.kind == PreferencePair.__name__:
        return (f"data.train={source} holds preference pairs (prompt/chosen/rejected, e.g. {other.where}), not "
                "labelled replies; train them with tuneful dpo, or unpair them (chosen -> label true, rejected -> "
                "label false)")
    return (f"data.train={source} holds conversations without a true/false 'label' (e.g. {other.where}); KTO needs "
            "each reply marked desirable or undesirable (or train them with tuneful sft)")


KTO_TAKES = Takes(LabeledConversation, _refusal)  # preference pairs or plain conversations are refused


def labeled_reply(ctok: Any, record: LabeledConversation) -> LabeledReply:
    """One record's prompt and reply tokens, or a PreferenceDataError saying what is wrong with it."""
    if not record.messages or record.messages[-1].role != "assistant":
        raise PreferenceDataError("the conversation does not end with an assistant reply to label")
    encoded = ctok(Conversation(record.messages, inputs=record.inputs))
    if encoded.rendered.turns and not encoded.rendered.turns[-1].prompt_matches_inference:
        raise PreferenceDataError("the template renders the prompt differently at inference than in front "
                                  "of the reply; the model would be trained on a prompt it never sees")
    prompt, reply, mask = reply_tokens(encoded)
    return LabeledReply(prompt, reply, mask, record.label)


def tokenize_labeled(ctok: Any, records: Sequence[LabeledConversation]) -> list[LabeledReply]:
    """Every record, or one PreferenceDataError listing every bad one."""
    out, errors = [], []
    for index, record in enumerate(records):
        try:
            out.append(labeled_reply(ctok, record))
        except PreferenceDataError as exc:
            errors.append(f"{(record.meta or {}).get('where', f'record {index}')}: {exc}")
    if errors:
        raise PreferenceDataError(f"{len(errors)} bad labelled record(s):\n  " + "\n  ".join(errors[:20]))
    return out


def mismatched_partners(count: int, prompt: Callable[[int], Sequence[int]], reply_length: Callable[[int], int],
                        max_length: int, split: str) -> list[int]:
    """For each of ``count`` items, the nearest earlier item (cycling) that answers a different prompt and whose
    reply fits after this item's prompt within ``max_length``: its reply is this item's mismatched reply. Items are
    read through ``prompt(i)`` / ``reply_length(i)``, so prepared data is read a few rows at a time."""
    if count < 2:
        raise PreferenceDataError(f"{count} {split} item(s): KTO's reference point needs replies to other "
                                  "prompts, so at least 2 items")
    out = []
    for i in range(count):
        own = prompt(i)
        for back in range(1, count):
            other = (i - back) % count
            if len(own) + reply_length(other) <= max_length and prompt(other) != own:
                out.append(other)
                break
        else:
            raise PreferenceDataError(f"{split} item {i}: no reply to another prompt fits after its prompt within "
                                      f"data.max_length={max_length}; raise max_length or add varied prompts")
    return out


def with_mismatched_replies(items: Sequence[LabeledReply], max_length: int, split: str) -> list[PreferenceExample]:
    """Each item with the reply of its :func:`mismatched_partners` item."""
    partners = mismatched_partners(len(items), lambda i: items[i].prompt_ids, lambda i: len(items[i].reply_ids),
                                   max_length, split)
    return [PreferenceExample(item.prompt_ids, item.reply_ids, item.reply_mask, items[k].reply_ids,
                              items[k].reply_mask) for item, k in zip(items, partners)]


# --- prepared once, cached (tuneful.tokenization.prepared) --------------------------------------------------

def _reply_batch(records: list[LabeledConversation], wheres: list[str], positions: list[int], *, ctok: Any,
                 max_length: int) -> dict:
    """One map batch: a row per usable record, then a row with the batch's tallies: the preflight of its desirable
    conversations and of all of them, the bad records, the ones over max_length."""
    out: dict[str, list] = {"prompt_ids": [], "reply_ids": [], "reply_mask": [], "desirable": [], "length": [],
                            "tally": []}
    names = [str(r.meta.get("where") or r.meta.get("id") or where or f"record {position}")
             for r, where, position in zip(records, wheres, positions)]
    conversations = [Conversation(r.messages, r.meta, r.inputs) for r in records]
    desirable_tally, all_tally = PreflightTally(), PreflightTally()
    for record, conv, name, tokenized in zip(records, conversations, names, ctok.tokenize_many(conversations)):
        check_conversation(conv, name, tokenized, ctok, all_tally, max_length=None, overlong="drop")
        if record.label:
            check_conversation(conv, name, tokenized, ctok, desirable_tally, max_length=None, overlong="drop")
    problems = RecordProblems()
    for reply, length in tokenized_within(records, names, partial(labeled_reply, ctok),
                                          lambda r: len(r.prompt_ids) + len(r.reply_ids), max_length, problems):
        out["prompt_ids"].append(reply.prompt_ids)
        out["reply_ids"].append(reply.reply_ids)
        out["reply_mask"].append(reply.reply_mask)
        out["desirable"].append(reply.desirable)
        out["length"].append(length)
        out["tally"].append(None)
    for column in ("prompt_ids", "reply_ids", "reply_mask"):
        out[column].append([])
    out["desirable"].append(False)
    out["length"].append(0)
    out["tally"].append(json.dumps({"desirable": desirable_tally.to_json(), "all": all_tally.to_json(),
                                    "problems": problems.to_json()}))
    return out


def _features() -> Any:
    from datasets import Features, Sequence as ArrowList, Value

    ids = ArrowList(Value("int32"))
    return Features({"prompt_ids": ids, "reply_ids": ids, "reply_mask": ArrowList(Value("int8")),
                     "desirable": Value("bool"), "length": Value("int32"), "tally": Value("string")})


def _partners_of(folder: Path, files: list[str], max_length: int, split: str) -> dict:
    """Each item's mismatched partner (as a position among the split's items), or why there is none."""
    if not files:
        return {"partners": [], "error": None}
    table, rows, _ = open_rows(folder, files)
    lengths = table.column("length").to_numpy()
    prompt_lengths = pc.list_value_length(table.column("prompt_ids")).to_numpy()
    try:
        partners = mismatched_partners(len(rows), lambda i: list_of(table, "prompt_ids", int(rows[i])),
                                       lambda i: int(lengths[rows[i]] - prompt_lengths[rows[i]]), max_length, split)
    except PreferenceDataError as exc:
        return {"partners": [], "error": str(exc)}
    return {"partners": partners, "error": None}


def _build(folder: Path, settings: LabeledDataSettings, ctok: Any, seed: int) -> dict:
    names, load_report = build_splits(folder, settings, seed, KTO_TAKES, _reply_batch,
                                      {"ctok": ctok, "max_length": settings.max_length}, _features())
    partners = {"train": _partners_of(folder, names["train"], settings.max_length, "training"),
                "eval": _partners_of(folder, names["eval"], settings.max_length, "held-out")}
    for split, found in partners.items():
        np.save(folder / f"{split}-partners.npy", np.asarray(found["partners"], dtype=np.int64))
    return {"files": names, "partner_errors": {k: v["error"] for k, v in partners.items()}, "load_report": load_report}


@dataclass
class _Split:
    rows: LabeledRows
    desirable: PreflightTally
    everything: PreflightTally
    problems: RecordProblems


def _open(folder: Path, names: list[str], split: str) -> _Split:
    table, rows, tallies = open_rows(folder, names)
    partners = rows[np.load(folder / f"{split}-partners.npy")] if len(rows) else rows
    opened = _Split(LabeledRows(table, rows, partners), PreflightTally(), PreflightTally(), RecordProblems())
    for part in tallies:
        opened.desirable.merge(PreflightTally.from_json(part["desirable"]))
        opened.everything.merge(PreflightTally.from_json(part["all"]))
        opened.problems.merge(part["problems"])
    return opened


def _fingerprint(settings: LabeledDataSettings, ctok: Any, seed: int) -> str:
    return fingerprint({
        "kind": "labeled", "train": source_key(settings.train),
        "eval": source_key(settings.eval) if settings.eval else "", "eval_fraction": settings.eval_fraction,
        "seed": seed if (settings.eval_fraction or isinstance(settings.train, list)) else None,
        "format": settings.format, "on_error": settings.on_error, "tokenizer": tokenizer_fingerprint(ctok.tokenizer),
        "template": ctok.template.source, "max_length": settings.max_length,
        "clock": date.today().isoformat() if "strftime_now" in ctok.template.source else None,
    })


def prepare_labeled(settings: LabeledDataSettings, tokenizer: Any, seed: int, *,
                    main_process_first: AbstractContextManager = nullcontext()) -> PreparedLabeled:
    """Load → hold out → template checks → tokenize → length policy → mismatched replies, prepared once into
    Arrow and cached (the main process prepares, the others read)."""
    template = run_template(settings, tokenizer)
    ctok = preference_tokenizer(tokenizer, template)
    folder, meta, hit = cached(settings.cache_dir, _fingerprint(settings, ctok, seed),
                               lambda building: _build(building, settings, ctok, seed), main_process_first)
    if not meta["files"]["train"]:
        raise PreferenceDataError(f"data.train={settings.train}: no labelled replies to train on")
    train = _open(folder, meta["files"]["train"], "train")
    # the template checks SFT makes, on the desirable conversations (never train targets of their own here)
    checked = train.desirable if train.desirable.full_tokens or train.desirable.records else train.everything
    report = finish_report(PreflightReport(), checked, tokenizer, ctok, max_length=None, overlong="drop",
                           allow_template_change=settings.allow_template_change)
    report.raise_on_errors()
    held = _open(folder, meta["files"]["eval"], "eval") if meta["files"]["eval"] else None
    splits = [(name, split.problems) for name, split in (("training", train), ("held-out", held)) if split]
    check_problems(splits, settings, "labelled record", "item")
    if not len(train.rows):
        raise PreferenceDataError(f"every training item is longer than data.max_length={settings.max_length}")
    for split in ("train", "eval"):
        if meta["partner_errors"][split]:
            raise PreferenceDataError(meta["partner_errors"][split])
    return PreparedLabeled(train.rows, held.rows if held else [], template, LoadReport.from_json(meta["load_report"]),
                           report, report.end_of_turn_ids(tokenizer), sum(p.dropped for _, p in splits), folder, hit,
                           train_desirable=train.rows.desirable, eval_desirable=held.rows.desirable if held else [])
