"""SFT data: load → validate → tokenize with masks → preflight (all checks before training), prepared once
and cached as Arrow (:mod:`tuneful.sft.prepared`)."""

from __future__ import annotations

import json
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.loader import LoadReport
from ..data.mixture import load_training
from ..data.types import Conversation
from ..tokenization.masking import ConversationTokenizer
from ..tokenization.preflight import PreflightReport
from ..templates.registry import ChatTemplate, run_template
from ..tokenization.batching import Example
from .config import DataSettings
from .prepared import SFT_TAKES, preflight_report, prepare_conversations


def _load_conversations(source: str | list, settings: DataSettings,
                        seed: int = 0) -> tuple[list[Conversation], LoadReport]:
    """The conversations of a source in memory (for callers that need them all at once, e.g. seq2seq)."""
    result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
    return [c for _, c in SFT_TAKES.take(zip(result.where, result.items), source)], result.report


@dataclass
class PreparedData:
    train: Sequence[Example]  # PreparedRows: read lazily from the prepared Arrow files
    eval: Sequence[Example]
    template: ChatTemplate
    conversation_tokenizer: ConversationTokenizer
    load_report: LoadReport
    preflight_report: PreflightReport
    end_of_turn_ids: list[int]
    cache_folder: Path | None = None
    cache_hit: bool = False


def prepare_data(settings: DataSettings, tokenizer: Any, seed: int, *,
                 main_process_first: AbstractContextManager = nullcontext()) -> PreparedData:
    """Everything the loop needs, or a PreflightError naming every problem at once.

    Prepared once and cached (:mod:`tuneful.sft.prepared`); under several processes pass accelerate's
    ``main_process_first()`` so the main one prepares and the others read its files.
    """
    template = run_template(settings, tokenizer)
    ctok = ConversationTokenizer(tokenizer, template, last_turn_only=settings.last_turn_only,
                                 reasoning=settings.reasoning)
    prepared = prepare_conversations(settings, ctok, seed, main_process_first=main_process_first)
    report = preflight_report(prepared.train, tokenizer, ctok, settings)
    report.raise_on_errors()
    held = prepared.eval.rows if prepared.eval is not None else []
    train = prepared.train.rows.with_extra(replay_examples(settings, tokenizer, prepared.train.tally.kept, seed))
    return PreparedData(train, held, template, ctok, prepared.load_report, report, report.end_of_turn_ids(tokenizer),
                        prepared.folder, prepared.cache_hit)


def replay_examples(settings: DataSettings, tokenizer: Any, n_conversations: int, seed: int) -> list[Example]:
    """Documents trained on every token (plus EOS), ``replay_ratio`` per conversation, cut to max_length."""
    if not settings.replay or settings.replay_ratio <= 0:
        return []
    texts = []
    for lineno, line in enumerate(Path(settings.replay).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record.get("text"), str):
                raise ValueError(f"{settings.replay}:{lineno}: replay records need a 'text' string")
            texts.append(record["text"])
    wanted = min(len(texts), round(settings.replay_ratio * n_conversations))
    chosen = random.Random(seed + 3).sample(texts, wanted)
    out = []
    for ids in tokenizer(chosen, add_special_tokens=False)["input_ids"]:
        ids = (ids + [tokenizer.eos_token_id])[: settings.max_length]
        out.append(Example(ids, list(ids)))
    return out


def sft_summary(data: Any, recipe: dict) -> dict:
    """What an SFT run records about its data in the output folder's ``tuneful.json``."""
    return {
        "recipe": recipe,
        "template": data.template.origin,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "preflight_warnings": [str(f) for f in data.preflight_report.warnings],
        "data": data.load_report.summary(),
    }
