"""Format-specific conversion: one raw record (a dict) -> conversations or preference pairs.

Each format is a small converter plus a detector that looks only at the record's keys and value
shapes. Detectors are written to be mutually exclusive on well-formed data; when a record still
matches several, :func:`detect_format` says which fields matched and how to choose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .types import (
    Conversation,
    Message,
    PreferencePair,
    RecordError,
    make_conversation,
    make_message,
    make_preference,
)

Item = Conversation | PreferencePair

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class ConvertOptions:
    """Options shared by converters. ``oasst_paths``: "all" root-to-leaf paths or only the "top" ranked."""

    oasst_paths: str = "all"
    allow_empty_assistant: bool = False

    def __post_init__(self) -> None:
        if self.oasst_paths not in ("all", "top"):
            raise ValueError(f"oasst_paths must be 'all' or 'top', got {self.oasst_paths!r}")


def _conv(messages: list[Message], opts: ConvertOptions, meta: dict | None = None) -> Conversation:
    return make_conversation(messages, meta, allow_empty_assistant=opts.allow_empty_assistant)


def _text(record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError("missing_field", f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise RecordError("content_not_string", f"field {key!r} is {type(value).__name__}, not a string")
    return value


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


def convert_alpaca(record: dict, opts: ConvertOptions) -> list[Item]:
    prompt = _prompt_with_input(_text(record, "instruction"), _text(record, "input", required=False))
    messages = _history_messages(record) + [Message("user", prompt), make_message("assistant", record.get("output"))]
    return [_conv(messages, opts)]


def convert_dolly(record: dict, opts: ConvertOptions) -> list[Item]:
    prompt = _prompt_with_input(_text(record, "instruction"), _text(record, "context", required=False))
    meta = {"category": record["category"]} if isinstance(record.get("category"), str) else None
    return [_conv([Message("user", prompt), make_message("assistant", record.get("response"))], opts, meta)]


def convert_self_instruct(record: dict, opts: ConvertOptions) -> list[Item]:
    """Self-Instruct seed tasks: one instruction with several (input, output) instances."""
    instruction = _text(record, "instruction")
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RecordError("missing_field", "field 'instances' must be a non-empty list")
    meta = {k: record[k] for k in ("id", "name", "is_classification") if k in record}
    out: list[Item] = []
    for inst in instances:
        prompt = _prompt_with_input(instruction, _text(inst, "input", required=False))
        out.append(_conv([Message("user", prompt), make_message("assistant", inst.get("output"))], opts, meta))
    return out


def _sharegpt_messages(turns: Any) -> list[Message]:
    if not isinstance(turns, list):
        raise RecordError("bad_conversation", "'conversations' must be a list of {from, value} turns")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError("bad_conversation", "each ShareGPT turn needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError("unsupported_role", f"ShareGPT role {turn['from']!r} is not supported")
        out.append(make_message(role, turn["value"]))
    return out


def convert_sharegpt(record: dict, opts: ConvertOptions) -> list[Item]:
    messages = _sharegpt_messages(record["conversations"])
    system = record.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system))
    meta = {"id": record["id"]} if "id" in record else None
    return [_conv(messages, opts, meta)]


def _openai_content(content: Any) -> Any:
    """OpenAI content may be a list of parts; only text parts are supported here."""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RecordError("unsupported_content_part", "only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    return content


def _openai_messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list):
        raise RecordError("bad_conversation", "'messages' must be a list of {role, content}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError("bad_conversation", "each message needs 'role' and 'content'")
        out.append(make_message(m["role"], _openai_content(m["content"])))
    return out


def convert_messages(record: dict, opts: ConvertOptions) -> list[Item]:
    return [_conv(_openai_messages(record["messages"]), opts, record.get("meta"))]


def convert_lima(record: dict, opts: ConvertOptions) -> list[Item]:
    """LIMA: ``conversations`` is a list of strings alternating user, assistant, user, ..."""
    turns = record["conversations"]
    messages = [make_message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return [_conv(messages, opts, {"source": record["source"]} if "source" in record else None)]


def _oasst_paths(node: dict, top_only: bool) -> Iterable[list[dict]]:
    """Root-to-leaf paths of an OpenAssistant tree (deleted messages pruned); lower rank is better."""
    replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
    if not replies:
        yield [node]
        return
    if top_only:
        replies = [min(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))]
    for reply in replies:
        for path in _oasst_paths(reply, top_only):
            yield [node] + path


def convert_oasst(record: dict, opts: ConvertOptions) -> list[Item]:
    root = record.get("prompt")
    if not isinstance(root, dict):
        raise RecordError("bad_tree", "an OpenAssistant tree needs a 'prompt' message node")
    out: list[Item] = []
    for path in _oasst_paths(root, top_only=opts.oasst_paths == "top"):
        if path[-1].get("role") != "assistant":
            path = path[:-1]  # a trailing prompter message has no answer to learn from
        if len(path) < 2:
            continue
        roles = {"prompter": "user", "assistant": "assistant"}
        messages = [make_message(roles.get(n.get("role"), n.get("role")), n.get("text")) for n in path]
        meta = {"message_tree_id": record.get("message_tree_id"), "leaf_id": path[-1].get("message_id")}
        out.append(_conv(messages, opts, meta))
    if not out:
        raise RecordError("no_assistant_turn", "the tree has no path that ends with an assistant reply")
    return out


# --- preference formats --------------------------------------------------------------------------


def _final_reply(value: Any, prompt: list[Message], name: str) -> str:
    """A chosen/rejected value as the final assistant text.

    Accepts a string, one message dict, or a full message list that repeats the prompt (the prompt
    prefix is checked and dropped, so the prompt is never duplicated inside chosen/rejected).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        msgs = _sharegpt_messages([value]) if "from" in value else _openai_messages([value])
        value_msgs = msgs
    elif isinstance(value, list):
        value_msgs = _sharegpt_messages(value) if value and "from" in value[0] else _openai_messages(value)
    else:
        raise RecordError("bad_preference", f"{name} must be a string, a message or a message list")
    if len(value_msgs) > 1:
        head = list(value_msgs[:-1])
        if head != list(prompt):
            raise RecordError("prompt_mismatch", f"{name} repeats a conversation that is not the prompt")
    if value_msgs[-1].role != "assistant":
        raise RecordError("bad_preference", f"{name} must end with an assistant message")
    return value_msgs[-1].content


def _prompt_messages(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return _sharegpt_messages(value)
    return _openai_messages(value)


def convert_preference(record: dict, opts: ConvertOptions) -> list[Item]:
    prompt = _prompt_messages(record["prompt"])
    chosen = _final_reply(record["chosen"], prompt, "chosen")
    rejected = _final_reply(record["rejected"], prompt, "rejected")
    return [make_preference(prompt, chosen, rejected)]


def convert_sharegpt_preference(record: dict, opts: ConvertOptions) -> list[Item]:
    prompt = _sharegpt_messages(record["conversations"])
    chosen = _final_reply(record["chosen"], prompt, "chosen")
    rejected = _final_reply(record["rejected"], prompt, "rejected")
    return [make_preference(prompt, chosen, rejected)]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[Message]:
    """Split an Anthropic hh-rlhf transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") into messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError("bad_transcript", "expected text starting with '\\n\\nHuman:'")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [Message(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def convert_hh_rlhf(record: dict, opts: ConvertOptions) -> list[Item]:
    chosen = parse_hh_transcript(_text(record, "chosen"))
    rejected = parse_hh_transcript(_text(record, "rejected"))
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("prompt_mismatch", "chosen and rejected transcripts differ before the final reply")
    if chosen[-1].role != "assistant" or rejected[-1].role != "assistant":
        raise RecordError("bad_preference", "transcripts must end with an Assistant turn")
    return [make_preference(chosen[:-1], chosen[-1].content, rejected[-1].content)]


# --- detection -----------------------------------------------------------------------------------


def _is_list_of_dicts_with(value: Any, *keys: str) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and all(k in v for k in keys) for v in value)


def _is_hh(record: dict) -> bool:
    return "prompt" not in record and all(
        isinstance(record.get(k), str) and record[k].startswith("\n\nHuman:") for k in ("chosen", "rejected")
    )


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    matches: Callable[[dict], bool]
    convert: Callable[[dict, ConvertOptions], list[Item]]
    kind: str  # "sft" or "preference"


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("alpaca", "instruction / input / output", lambda r: "instruction" in r and "output" in r, convert_alpaca, "sft"),
        Format("dolly", "instruction / context / response", lambda r: "instruction" in r and "response" in r, convert_dolly, "sft"),
        Format("self_instruct", "instruction / instances[input, output]", lambda r: "instruction" in r and "instances" in r, convert_self_instruct, "sft"),
        Format(
            "sharegpt",
            "conversations[from, value]",
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
            "OpenAI messages[role, content]",
            lambda r: _is_list_of_dicts_with(r.get("messages"), "role", "content") and "chosen" not in r,
            convert_messages,
            "sft",
        ),
        Format("oasst", "OpenAssistant message tree", lambda r: "message_tree_id" in r and isinstance(r.get("prompt"), dict), convert_oasst, "sft"),
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
