"""KTO data: labelled conversations → (prompt, reply, mismatched reply) items, tokenized like DPO pairs.

Each record is a conversation whose final assistant reply is desirable or not. It is rendered and
masked exactly as a DPO reply (the prompt is the token prefix before the first trained token; the
reply is its trained tokens and the end-of-turn). KTO's reference point needs, for each prompt, a
reply written for *another* prompt: item i borrows the reply of the nearest earlier item (cycling)
with a different prompt whose reply fits after its prompt within ``max_length``. That assignment is
fixed at preparation, so reference log-probs can be precomputed and a resumed run sees the same
items. An item is stored as a :class:`PreferenceExample` (its reply first, the mismatched reply
second), so the DPO batch layouts and reference policies serve KTO unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data.loader import LoadReport
from ..data.mixture import load_training
from ..data.types import Conversation, LabeledConversation
from ..dpo.data import PreferenceDataError, PreferenceExample, preference_tokenizer, reply_tokens
from ..dpo.prepare import length_policy
from ..tokenization.preflight import PreflightReport, preflight
from ..templates.registry import ChatTemplate, run_template
from ..train.plan import split_eval
from .config import LabeledDataSettings


@dataclass(frozen=True)
class LabeledReply:
    prompt_ids: list[int]
    reply_ids: list[int]
    reply_mask: list[int]
    desirable: bool


@dataclass
class PreparedLabeled:
    train: list[PreferenceExample]
    train_desirable: list[bool]
    eval: list[PreferenceExample]
    eval_desirable: list[bool]
    template: ChatTemplate
    load_report: LoadReport
    preflight_report: PreflightReport
    end_of_turn_ids: list[int]
    dropped_overlong: int

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


def _load(source: str | list, settings: LabeledDataSettings,
          seed: int = 0) -> tuple[list[LabeledConversation], LoadReport]:
    result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
    if result.preferences and not result.labeled:
        raise ValueError(f"data.train={source} holds preference pairs (prompt/chosen/rejected), not labelled replies; "
                         "train them with tuneful dpo, or unpair them (chosen -> label true, rejected -> label false)")
    if result.conversations and not result.labeled:
        raise ValueError(f"data.train={source} holds conversations without a true/false 'label'; KTO needs each "
                         "reply marked desirable or undesirable (or train them with tuneful sft)")
    return result.labeled, result.report


def tokenize_labeled(ctok: Any, records: Sequence[LabeledConversation]) -> list[LabeledReply]:
    """Every record, or one PreferenceDataError listing every bad one."""
    out, errors = [], []
    for index, record in enumerate(records):
        try:
            if not record.messages or record.messages[-1].role != "assistant":
                raise PreferenceDataError("the conversation does not end with an assistant reply to label")
            encoded = ctok(Conversation(record.messages, inputs=record.inputs))
            if encoded.rendered.turns and not encoded.rendered.turns[-1].prompt_matches_inference:
                raise PreferenceDataError("the template renders the prompt differently at inference than in front "
                                          "of the reply; the model would be trained on a prompt it never sees")
            prompt, reply, mask = reply_tokens(encoded)
            out.append(LabeledReply(prompt, reply, mask, record.label))
        except PreferenceDataError as exc:
            errors.append(f"{(record.meta or {}).get('where', f'record {index}')}: {exc}")
    if errors:
        raise PreferenceDataError(f"{len(errors)} bad labelled record(s):\n  " + "\n  ".join(errors[:20]))
    return out


def with_mismatched_replies(items: Sequence[LabeledReply], max_length: int, split: str) -> list[PreferenceExample]:
    """Each item with the reply of the nearest earlier item (cycling) that answers a different prompt and fits."""
    if len(items) < 2:
        raise PreferenceDataError(f"{len(items)} {split} item(s): KTO's reference point needs replies to other "
                                  "prompts, so at least 2 items")
    out = []
    for i, item in enumerate(items):
        for back in range(1, len(items)):
            other = items[(i - back) % len(items)]
            if other.prompt_ids != item.prompt_ids and len(item.prompt_ids) + len(other.reply_ids) <= max_length:
                break
        else:
            raise PreferenceDataError(f"{split} item {i}: no reply to another prompt fits after its prompt within "
                                      f"data.max_length={max_length}; raise max_length or add varied prompts")
        out.append(PreferenceExample(item.prompt_ids, item.reply_ids, item.reply_mask, other.reply_ids, other.reply_mask))
    return out


def prepare_labeled(settings: LabeledDataSettings, tokenizer: Any, seed: int) -> PreparedLabeled:
    template = run_template(settings, tokenizer)
    ctok = preference_tokenizer(tokenizer, template)
    records, load_report = _load(settings.train, settings, seed)
    train_records, eval_records = split_eval(records, settings, seed, lambda src: _load(src, settings)[0])
    if not train_records:
        raise PreferenceDataError(f"data.train={settings.train}: no labelled replies to train on")
    # the template checks SFT makes, on the desirable conversations (never train targets of their own here)
    checked = [Conversation(r.messages, r.meta, r.inputs) for r in train_records if r.label] or \
              [Conversation(r.messages, r.meta, r.inputs) for r in train_records]
    report = preflight(tokenizer, ctok, checked, max_length=None, allow_template_change=settings.allow_template_change)
    report.raise_on_errors()
    splits, dropped = {}, 0
    for split, part in (("training", train_records), ("held-out", eval_records)):
        kept, too_long = length_policy(tokenize_labeled(ctok, part), settings, split, unit="item",
                                       length=lambda x: len(x.prompt_ids) + len(x.reply_ids))
        dropped += too_long
        splits[split] = kept
    if not splits["training"]:
        raise PreferenceDataError(f"every training item is longer than data.max_length={settings.max_length}")
    held = splits["held-out"]
    return PreparedLabeled(
        with_mismatched_replies(splits["training"], settings.max_length, "training"),
        [x.desirable for x in splits["training"]],
        with_mismatched_replies(held, settings.max_length, "held-out") if held else [],
        [x.desirable for x in held], template, load_report, report, report.end_of_turn_ids(tokenizer), dropped)
