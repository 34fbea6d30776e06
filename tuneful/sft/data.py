"""SFT data: load → validate → tokenize with masks → preflight (all checks before training)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.loader import LoadReport
from ..data.mixture import load_training
from ..data.types import Conversation
from ..masking import ConversationTokenizer, labels_from_mask
from ..preflight import PreflightReport, preflight
from ..templates.registry import ChatTemplate, run_template
from ..train.plan import split_eval
from .batching import Example
from .config import DataSettings


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    template: ChatTemplate
    conversation_tokenizer: ConversationTokenizer
    load_report: LoadReport
    preflight_report: PreflightReport
    end_of_turn_ids: list[int]


def _load_conversations(source: str | list, settings: DataSettings,
                        seed: int = 0) -> tuple[list[Conversation], LoadReport]:
    result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
    if result.preferences:
        raise ValueError(f"data {source} holds preference pairs; SFT needs conversations (use tuneful dpo)")
    if result.labeled:
        where = result.where_of(result.labeled[0])
        undesirable = sum(not item.label for item in result.labeled)
        raise ValueError(
            f"data {source} holds unpaired preference data (KTO: {len(result.labeled)} records with a 'label', "
            f"{undesirable} marked undesirable, e.g. {where}); SFT would train the undesirable replies as targets. "
            "Fix: keep only the desirable ones (records with label == true, without the label field) for SFT, "
            "or train them with a KTO trainer."
        )
    return result.conversations, result.report


def prepare_data(settings: DataSettings, tokenizer: Any, seed: int) -> PreparedData:
    """Everything the loop needs, or a PreflightError naming every problem at once."""
    template = run_template(settings, tokenizer)
    ctok = ConversationTokenizer(tokenizer, template, last_turn_only=settings.last_turn_only,
                                 reasoning=settings.reasoning)
    convs, load_report = _load_conversations(settings.train, settings, seed)
    train_convs, eval_convs = split_eval(convs, settings, seed, lambda src: _load_conversations(src, settings)[0])
    report = preflight(tokenizer, ctok, train_convs, max_length=settings.max_length, overlong=settings.overlong,
                       allow_template_change=settings.allow_template_change)
    report.raise_on_errors()
    eval_report = preflight(tokenizer, ctok, eval_convs, max_length=settings.max_length, overlong="drop",
                            allow_template_change=True)

    def to_examples(rep: PreflightReport) -> list[Example]:
        return [Example(e.input_ids, labels_from_mask(e.input_ids, e.train_mask)) for e in rep.training_examples]

    train = to_examples(report) + replay_examples(settings, tokenizer, len(report.examples), seed)
    return PreparedData(train, to_examples(eval_report), template, ctok, load_report, report,
                        report.end_of_turn_ids(tokenizer))


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
