"""Format-specific conversion: one raw record (a dict) -> conversations, preference pairs or labelled replies.

Each format is a small converter plus a detector that looks only at the record's keys and value
shapes. Detectors are written to be mutually exclusive on well-formed data; when a record still
matches several, :func:`detect_format` says which fields matched and how to choose. Converters read
records through :class:`~tuneful.data.fields.TrackedRecord`, so every field they leave unread is
counted by name (``ignored_fields``); formats that need the whole file at once (flat OpenAssistant
rows) convert all records together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .fields import TrackedRecord, track, unused_fields
from .messages import (
    Conversion,
    ConvertOptions,
    openai_message,
    openai_messages,
    sharegpt_messages,
    template_inputs,
)
from .oasst import convert_oasst_rows, convert_oasst_tree, is_oasst_node, is_oasst_row
from .types import (
    NO_TEMPLATE_INPUTS,
    Conversation,
    LabeledConversation,
    Message,
    PreferencePair,
    RecordError,
    make_conversation,
    make_labeled,
    make_message,
    make_preference,
)

Item = Conversation | PreferencePair | LabeledConversation


def _conv(messages: list[Message], conv: Conversion, meta: dict | None = None, record: Any = None) -> Conversation:
    """A validated conversation; ``record`` given: its ``tools`` / ``chat_template_kwargs`` come along."""
    inputs = template_inputs(record) if record is not None else NO_TEMPLATE_INPUTS
    return make_conversation(messages, meta, inputs=inputs, allow_empty_assistant=conv.options.allow_empty_assistant)


def _text(record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError("missing_field", f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise RecordError("content_not_string", f"field {key!r} is {type(value).__name__}, not a string")
    return value


def _meta(record: dict, *keys: str) -> dict | None:
    """Fields kept with the record (written out by ``convert``, never rendered); a ``meta`` object is merged in."""
    out = dict(record.whole("meta")) if isinstance(record.get("meta"), dict) else {}
    out.update({k: record.whole(k) for k in keys if k in record})
    return out or None


def _prompt_with_input(instruction: str, extra: str) -> str:
    """Instruction and its optional input/context, separated by a blank line (the common convention)."""
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _history_messages(record: dict) -> list[Message]:
    """Optional ``system`` and ``history`` ([[user, assistant], ...]) fields of Alpaca-style records."""
    out: list[Message] = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        out.append(Message("system", system))
    for pair in record.get("history") or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad_history", "history entries must be [user, assistant] pairs")
        out += [make_message("user", pair[0]), make_message("assistant", pair[1])]
    return out


# --- instruction formats -------------------------------------------------------------------------


def convert_alpaca(record: dict, conv: Conversion) -> list[Item]:
    prompt = _prompt_with_input(_text(record, "instruction"), _text(record, "input", required=False))
    messages = _history_messages(record) + [Message("user", prompt), make_message("assistant", record.get("output"))]
    return [_conv(messages, conv, _meta(record, "id", "source", "category"))]


def convert_dolly(record: dict, conv: Conversion) -> list[Item]:
    prompt = _prompt_with_input(_text(record, "instruction"), _text(record, "context", required=False))
    meta = {"category": record["category"]} if isinstance(record.get("category"), str) else None
    return [_conv([Message("user", prompt), make_message("assistant", record.get("response"))], conv, meta)]


def convert_self_instruct(record: dict, conv: Conversion) -> list[Item]:
    """Self-Instruct seed tasks: one instruction with several (input, output) instances."""
    instruction = _text(record, "instruction")
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RecordError("missing_field", "field 'instances' must be a non-empty list")
    meta = _meta(record, "id", "name", "is_classification")
    out: list[Item] = []
    for k, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError("bad_instance", f"instances[{k}] is a JSON {type(inst).__name__}, not an object with "
                                              "input and output")
        prompt = _prompt_with_input(instruction, _text(inst, "input", required=False))
        out.append(_conv([Message("user", prompt), make_message("assistant", inst.get("output"))], conv, meta))
    return out


def convert_flan(record: dict, conv: Conversion) -> list[Item]:
    """FLAN Collection rows: ``inputs`` (the templated task) and ``targets``; the task is kept in meta."""
    messages = [make_message("user", record.get("inputs")), make_message("assistant", record.get("targets"))]
    return [_conv(messages, conv, _meta(record, "task_name", "template_type", "task_source", "_task_name",
                                        "_template_idx", "_task_source", "_template_type"))]


def convert_sharegpt(record: dict, conv: Conversion) -> list[Item]:
    messages = sharegpt_messages(record["conversations"], conv)
    system = record.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system))
    return [_conv(messages, conv, _meta(record, "id", "source", "category"), record)]


def convert_messages(record: dict, conv: Conversion) -> list[Item]:
    return [_conv(openai_messages(record["messages"], conv), conv, _meta(record, "id"), record)]


def convert_lima(record: dict, conv: Conversion) -> list[Item]:
    """LIMA: ``conversations`` is a list of strings alternating user, assistant, user, ..."""
    turns = record["conversations"]
    messages = [make_message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return [_conv(messages, conv, _meta(record, "source"))]


def convert_oasst(record: dict, conv: Conversion) -> list[Item]:
    """An OpenAssistant tree: the export wrapper (``message_tree_id`` + ``prompt``) or a bare root message."""
    return [_conv(messages, conv, meta) for messages, meta in convert_oasst_tree(record, conv)]


# --- preference formats --------------------------------------------------------------------------


def _final_reply(value: Any, prompt: list[Message], name: str, conv: Conversion) -> Message:
    """A chosen/rejected value as the final assistant message.

    Accepts a string, one message dict, or a full message list that repeats the prompt (the prompt
    prefix is checked and dropped, so the prompt is never duplicated inside chosen/rejected).
    """
    if isinstance(value, str):
        return Message("assistant", value)
    if isinstance(value, dict):
        value_msgs = sharegpt_messages([value], conv) if "from" in value else [openai_message(value, conv)]
    elif isinstance(value, list):
        value_msgs = sharegpt_messages(value, conv) if value and "from" in value[0] else openai_messages(value, conv)
    else:
        raise RecordError("bad_preference", f"{name} must be a string, a message or a message list")
    if len(value_msgs) > 1:
        head = list(value_msgs[:-1])
        if head != list(prompt):
            raise RecordError("prompt_mismatch", f"{name} repeats a conversation that is not the prompt")
    if value_msgs[-1].role != "assistant":
        raise RecordError("bad_preference", f"{name} must end with an assistant message")
    return value_msgs[-1]


def _prompt_messages(value: Any, conv: Conversion) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return sharegpt_messages(value, conv)
    return openai_messages(value, conv)


def convert_preference(record: dict, conv: Conversion) -> list[Item]:
    prompt = _prompt_messages(record["prompt"], conv)
    chosen = _final_reply(record["chosen"], prompt, "chosen", conv)
    rejected = _final_reply(record["rejected"], prompt, "rejected", conv)
    # a "margin" (how much better chosen is, e.g. a rating difference) is kept: reward models can train with it
    return [make_preference(prompt, chosen, rejected, _meta(record, "id", "meta", "margin"),
                            inputs=template_inputs(record))]


def convert_sharegpt_preference(record: dict, conv: Conversion) -> list[Item]:
    prompt = sharegpt_messages(record["conversations"], conv)
    chosen = _final_reply(record["chosen"], prompt, "chosen", conv)
    rejected = _final_reply(record["rejected"], prompt, "rejected", conv)
    return [make_preference(prompt, chosen, rejected, _meta(record, "id"), inputs=template_inputs(record))]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[Message]:
    """Split an Anthropic hh-rlhf transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") into messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError("bad_transcript", "expected text starting with '\\n\\nHuman:'")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [Message(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def convert_hh_rlhf(record: dict, conv: Conversion) -> list[Item]:
    chosen = parse_hh_transcript(_text(record, "chosen"))
    rejected = parse_hh_transcript(_text(record, "rejected"))
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("prompt_mismatch", "chosen and rejected transcripts differ before the final reply")
    if chosen[-1].role != "assistant" or rejected[-1].role != "assistant":
        raise RecordError("bad_preference", "transcripts must end with an Assistant turn")
    return [make_preference(chosen[:-1], chosen[-1], rejected[-1])]


def convert_unpaired(record: dict, conv: Conversion) -> list[Item]:
    """KTO data: ``messages`` (ending with the judged reply) or ``prompt`` + ``completion``, with a boolean ``label``."""
    if "messages" in record:
        messages = openai_messages(record["messages"], conv)
    else:
        prompt = _prompt_messages(record["prompt"], conv)
        messages = prompt + [_final_reply(record["completion"], prompt, "completion", conv)]
    return [make_labeled(messages, record["label"], _meta(record, "id", "meta"), inputs=template_inputs(record))]


# --- detection -----------------------------------------------------------------------------------


def _is_list_of_dicts_with(value: Any, *keys: str) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and all(k in v for k in keys) for v in value)


def _is_hh(record: dict) -> bool:
    return "prompt" not in record and all(
        isinstance(record.get(k), str) and record[k].startswith("\n\nHuman:") for k in ("chosen", "rejected")
    )


def _is_unpaired(record: dict) -> bool:
    has_reply = _is_list_of_dicts_with(record.get("messages"), "role") or ("prompt" in record and "completion" in record)
    return "label" in record and has_reply and "chosen" not in record


@dataclass(frozen=True)
class Format:
    """A data format: how to recognise a record, and how to convert it.

    ``kind`` is "sft", "preference" or "unpaired". A format with ``convert_all`` (and no
    ``convert``) needs every record of the source at once.
    """

    name: str
    description: str
    matches: Callable[[dict], bool]
    convert_one: Callable[[dict, Conversion], list[Item]] | None
    kind: str
    convert_all: Callable[[list[tuple[str, TrackedRecord]], Conversion], Any] | None = None

    def convert(self, record: dict, conversion: Conversion | ConvertOptions | None = None) -> list[Item]:
        """Convert one record (fields left unread are not reported here; the loader reports them)."""
        if self.convert_one is None:
            raise ValueError(f"format {self.name} converts whole files; use tuneful.data.loader.load")
        return self.convert_one(track(record)[0], _conversion(conversion))

    def convert_tracked(self, record: dict, conversion: Conversion) -> tuple[list[Item], list[str]]:
        """Items and the names of the fields the converter did not read."""
        tracked, registry = track(record)
        items = self.convert_one(tracked, conversion)
        return items, list(unused_fields(registry))


def _conversion(value: Conversion | ConvertOptions | None) -> Conversion:
    if isinstance(value, Conversion):
        return value
    return Conversion(value or ConvertOptions())


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("alpaca", "instruction / input / output", lambda r: "instruction" in r and "output" in r, convert_alpaca, "sft"),
        Format("dolly", "instruction / context / response", lambda r: "instruction" in r and "response" in r, convert_dolly, "sft"),
        Format("self_instruct", "instruction / instances[input, output]", lambda r: "instruction" in r and "instances" in r, convert_self_instruct, "sft"),
        Format("flan", "FLAN inputs / targets (task_name, template_type)", lambda r: "inputs" in r and "targets" in r, convert_flan, "sft"),
        Format(
            "sharegpt",
            "conversations[from, value] (function_call / observation roles, tools)",
            lambda r: _is_list_of_dicts_with(r.get("conversations"), "from", "value") and "chosen" not in r,
            convert_sharegpt,
            "sft",
        ),
        Format(
            "lima",
            "conversations[str, str, ...] alternating user/assistant",
            lambda r: isinstance(r.get("conversations"), list) and bool(r["conversations"]) and all(isinstance(t, str) for t in r["conversations"]),
            convert_lima,
            "sft",
        ),
        Format(
            "messages",
            "OpenAI messages[role, content] (tool_calls, tool role, reasoning_content, tools)",
            lambda r: _is_list_of_dicts_with(r.get("messages"), "role") and "chosen" not in r and "label" not in r,
            convert_messages,
            "sft",
        ),
        Format("oasst", "OpenAssistant message tree (export wrapper or bare root message with replies)",
               lambda r: ("message_tree_id" in r and isinstance(r.get("prompt"), dict)) or is_oasst_node(r), convert_oasst, "sft"),
        Format("oasst_rows", "OpenAssistant flat message rows (message_id, parent_id, role, text), assembled into trees",
               is_oasst_row, None, "sft", convert_all=convert_oasst_rows),
        Format(
            "preference",
            "prompt / chosen / rejected (strings or messages)",
            lambda r: all(k in r for k in ("prompt", "chosen", "rejected")) and not isinstance(r.get("prompt"), dict),
            convert_preference,
            "preference",
        ),
        Format("hh_rlhf", "hh-rlhf chosen/rejected transcripts", _is_hh, convert_hh_rlhf, "preference"),
        Format(
            "sharegpt_preference",
            "conversations[from, value] + chosen + rejected",
            lambda r: _is_list_of_dicts_with(r.get("conversations"), "from", "value") and "chosen" in r and "rejected" in r,
            convert_sharegpt_preference,
            "preference",
        ),
        Format("unpaired", "KTO: messages (or prompt + completion) with a true/false label", _is_unpaired,
               convert_unpaired, "unpaired"),
    ]
}


def detect_format(record: Any, where: str = "") -> Format:
    """The one format whose detector matches ``record``; a clear error when none or several match."""
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}", where)
    matched = [f for f in FORMATS.values() if f.matches(record)]
    if len(matched) == 1:
        return matched[0]
    fields = ", ".join(sorted(record)) or "(none)"
    if not matched:
        known = "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
        raise RecordError("unknown_format", f"no known format matches fields [{fields}]. Known: {known}", where)
    names = ", ".join(f"{f.name} ({f.description})" for f in matched)
    raise RecordError(
        "ambiguous_format",
        f"fields [{fields}] match several formats: {names}. Choose one with --format {matched[0].name} (or another).",
        where,
    )


def looks_like_a_record(value: Any) -> bool:
    """True when some format recognises ``value`` (a JSON object that is a record, not a wrapper of records)."""
    return isinstance(value, dict) and any(f.matches(value) for f in FORMATS.values())

