"""DPO data: load pairs → hold out → template/tokenizer preflight → tokenize with a shared prompt → length policy.

The SFT preflight (double BOS, end-of-turn never trained, pad == eos, template drift...) runs on the
conversations prompt + chosen, so every template check SFT makes is made here too, before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..data.loader import LoadReport
from ..data.mixture import load_training
from ..data.types import Conversation, PreferencePair
from ..tokenization.preflight import PreflightReport, preflight
from ..train.plan import split_eval
from ..templates.registry import ChatTemplate, run_template
from .config import PreferenceDataSettings
from .data import PreferenceDataError, PreferenceExample, preference_tokenizer, tokenize_pairs


@dataclass
class PreparedPairs:
    train: list[PreferenceExample]
    eval: list[PreferenceExample]
    template: ChatTemplate
    load_report: LoadReport
    preflight_report: PreflightReport
    end_of_turn_ids: list[int]
    dropped_overlong: int

    def summary(self) -> dict:
        return {"train_pairs": len(self.train), "eval_pairs": len(self.eval), "dropped_overlong": self.dropped_overlong,
                "template": self.template.origin, "data": self.load_report.summary(),
                "preflight_warnings": [str(f) for f in self.preflight_report.warnings]}


def pair_length(example: PreferenceExample) -> int:
    """Tokens of the longer row of the pair (prompt + the longer response)."""
    return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))


def _load_pairs(source: str | list, settings: PreferenceDataSettings,
                seed: int = 0) -> tuple[list[PreferencePair], LoadReport]:
    result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
    if result.labeled:
        raise ValueError(f"data.train={source} holds unpaired preference data (KTO: replies with a true/false 'label'), "
                         "not pairs; DPO needs prompt/chosen/rejected. Pair them first, or train them with a KTO trainer")
    if result.conversations and not result.preferences:
        raise ValueError(f"data.train={source} holds conversations, not preference pairs (prompt/chosen/rejected); "
                         "train on it with tuneful sft")
    return result.preferences, result.report


def length_policy(examples: list, settings: Any, split: str, *, length: Callable[[Any], int] = pair_length,
                  unit: str = "pair") -> tuple[list, int]:
    """``data.overlong`` applied: the examples within ``data.max_length`` (by ``length``) and how many were
    dropped; with ``overlong=fail`` any longer one is an error naming the fix."""
    kept = [e for e in examples if length(e) <= settings.max_length]
    dropped = len(examples) - len(kept)
    if dropped and settings.overlong == "fail":
        longest = max(length(e) for e in examples)
        raise PreferenceDataError(f"{dropped} {split} {unit}(s) exceed data.max_length={settings.max_length} (longest "
                                  f"{longest} tokens). Fix: raise data.max_length or set data.overlong=drop")
    return kept, dropped


def prepare_pairs(settings: PreferenceDataSettings, tokenizer: Any, seed: int) -> PreparedPairs:
    template = run_template(settings, tokenizer)
    ctok = preference_tokenizer(tokenizer, template)
    pairs, load_report = _load_pairs(settings.train, settings, seed)
    train_pairs, eval_pairs = split_eval(pairs, settings, seed, lambda src: _load_pairs(src, settings)[0])
    if not train_pairs:
        raise PreferenceDataError(f"data.train={settings.train}: no preference pairs to train on")
    chosen_conversations = [Conversation((*p.prompt, p.chosen), p.meta, p.inputs) for p in train_pairs]
    report = preflight(tokenizer, ctok, chosen_conversations, max_length=None,
                       allow_template_change=settings.allow_template_change)
    report.raise_on_errors()
    train, dropped = length_policy(tokenize_pairs(ctok, train_pairs), settings, "training")
    held, dropped_eval = length_policy(tokenize_pairs(ctok, eval_pairs), settings, "held-out")
    if not train:
        raise PreferenceDataError(f"every training pair is longer than data.max_length={settings.max_length}")
    return PreparedPairs(train, held, template, load_report, report, report.end_of_turn_ids(tokenizer),
                         dropped + dropped_eval)

