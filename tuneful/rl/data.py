"""Prompt records for online methods: what the policy answers, and what its rewards may read.

A record is a JSON object with ``messages`` (OpenAI-style, ending with a user or tool turn) or
``prompt`` (a string, or a message list), optional ``tools``, and any other fields (a reference
answer, test cases...), which reach the reward functions untouched as ``record``. A record whose
messages end with an assistant turn (SFT data) gives that turn to the rewards as
``record["reference"]`` and is prompted without it. Bad records are errors with their file:line
(or skipped and counted with ``on_error=skip``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.sources import read_records
from ..infer.chat_model import prompt_renderer, template_end_of_turn_ids
from ..templates.registry import run_template
from ..tokenization.masking import ConversationTokenizer
from ..tokenization.plan import split_eval
from ..tokenization.preflight import PreflightReport, check_template_choice, check_tokenizer


ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PromptRecord:
    messages: list[dict]
    tools: list[dict] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def _messages(value: dict) -> list[dict]:
    raw = value.get("messages", value.get("prompt"))
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise ValueError("needs 'messages' (a list of {role, content}) or 'prompt' (a string or such a list)")
    for k, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {k}: needs a role among {', '.join(ROLES)}")
        if not isinstance(m.get("content") or "", str):
            raise ValueError(f"message {k}: content must be a string")
    return [dict(m) for m in raw]


def prompt_record(value: Any, where: str) -> PromptRecord:
    if not isinstance(value, dict):
        raise ValueError("a prompt record must be a JSON object")
    messages = _messages(value)
    fields = {k: v for k, v in value.items() if k not in ("messages", "prompt", "tools")}
    if messages[-1]["role"] == "assistant":
        fields.setdefault("reference", messages[-1].get("content") or "")
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise ValueError("the prompt must end with a user (or tool) message for the model to answer")
    tools = value.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ValueError("'tools' must be a list of tool definitions")
    return PromptRecord(messages, tools, fields, where)


@dataclass
class LoadedPrompts:
    records: list[PromptRecord]
    skipped: list[str]


def load_prompts(source: str, *, on_error: str = "fail") -> LoadedPrompts:
    records, skipped = [], []
    for raw in read_records(source):
        try:
            if raw.error is not None:
                raise ValueError(str(raw.error))
            records.append(prompt_record(raw.value, raw.where))
        except ValueError as exc:
            if on_error == "fail":
                raise ValueError(f"{raw.where}: {exc}") from None
            skipped.append(f"{raw.where}: {exc}")
    if not records:
        raise ValueError(f"{source}: no prompt records" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return LoadedPrompts(records, skipped)


@dataclass
class PreparedPrompts:
    """Prompt records and their token ids, rendered by the inference code path (ChatModel.prompt_ids)."""

    train: list[PromptRecord]
    train_ids: list[list[int]]
    eval: list[PromptRecord]
    eval_ids: list[list[int]]
    template: Any
    end_of_turn_ids: list[int]
    dropped_overlong: int
    skipped: list[str]
    renderer: Any  # the ChatModel that rendered the prompts (episodes render their later turns with it)

    @property
    def stop_ids(self) -> list[int]:
        """Every id that ends a sampled completion: the renderer's."""
        return self.renderer.stop_ids

    def summary(self) -> dict:
        return {"train_prompts": len(self.train), "eval_prompts": len(self.eval),
                "dropped_overlong": self.dropped_overlong, "skipped": len(self.skipped),
                "template": self.template.origin}


def prepare_prompts(settings: Any, tokenizer: Any, seed: int) -> PreparedPrompts:
    """Load → hold out → template checks → prompt ids as inference renders them → length policy."""
    template = run_template(settings, tokenizer)
    report = PreflightReport()
    report.findings += check_tokenizer(tokenizer)
    report.findings += check_template_choice(tokenizer, ConversationTokenizer(tokenizer, template),
                                             settings.allow_template_change)
    report.raise_on_errors()
    eot = template_end_of_turn_ids(tokenizer, template)
    if not eot:
        raise ValueError(f"template {template.origin} closes assistant turns with no single special token: sampled "
                         "completions could never end their turn. Use a template with an end-of-turn token")
    renderer = prompt_renderer(tokenizer, template, "policy")
    loaded = load_prompts(settings.train, on_error=settings.on_error)
    skipped = list(loaded.skipped)
    train, held = split_eval(loaded.records, settings, seed,
                             lambda src: load_prompts(src, on_error=settings.on_error).records)
    dropped, splits = 0, []
    for records in (train, held):
        ids = [renderer.prompt_ids(r.messages, r.tools) for r in records]
        kept = [k for k, x in enumerate(ids) if len(x) <= settings.max_prompt_length]
        dropped += len(ids) - len(kept)
        splits.append(([records[k] for k in kept], [ids[k] for k in kept]))
    if not splits[0][0]:
        raise ValueError(f"data.train={settings.train}: no prompt fits data.max_prompt_length="
                         f"{settings.max_prompt_length}")
    return PreparedPrompts(*splits[0], *splits[1], template, eot, dropped, skipped, renderer)
