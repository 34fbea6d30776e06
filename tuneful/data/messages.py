"""Message-level conversion shared by the formats: OpenAI messages, ShareGPT turns, text-embedded
tool calls (Hermes ``<tool_call>``) and reasoning (``<think>`` blocks, ``thinking`` keys).

Knows only raw message objects and :class:`~tuneful.data.types.Message`; which record fields hold
the messages is the business of :mod:`tuneful.data.formats`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .fields import TrackedRecord
from .types import Message, RecordError, TemplateInputs, ToolCall, make_message, make_tool_call, make_tools

THINK_POLICIES = ("keep", "split")

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
    "function_call": "assistant",  # LLaMA-Factory: an assistant turn whose value is the call JSON
    "observation": "tool",  # LLaMA-Factory: the call's result
    "tool": "tool",
    "function_response": "tool",
    "ipython": "tool",
}
CALL_ROLES = {"function_call"}


@dataclass(frozen=True)
class ConvertOptions:
    """Choices a user makes about conversion (CLI flags of ``tuneful data convert``).

    ``oasst_paths``: "all" root-to-leaf paths or only the "top" ranked. ``oasst_lang``: keep only
    OpenAssistant messages in this language (None: all). ``think``: a ``<think>…</think>`` block at
    the start of an assistant reply is kept verbatim ("keep") or moved to ``reasoning_content``
    ("split"). ``parse_text_tool_calls``: Hermes-style ``<tool_call>{json}</tool_call>`` text in
    replies (and ``<tool_response>`` in results) becomes structured calls and tool messages.
    """

    oasst_paths: str = "all"
    oasst_lang: str | None = None
    allow_empty_assistant: bool = False
    think: str = "keep"
    parse_text_tool_calls: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.oasst_paths not in ("all", "top"):
            problems.append(f"oasst_paths must be 'all' or 'top', got {self.oasst_paths!r}")
        if self.think not in THINK_POLICIES:
            problems.append(f"think must be one of {THINK_POLICIES}, got {self.think!r}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Conversion:
    """One load's options and its named counts (think blocks found, calls parsed, messages pruned)."""

    options: ConvertOptions = field(default_factory=ConvertOptions)
    notes: Counter = field(default_factory=Counter)


# --- reasoning -----------------------------------------------------------------------------------

_THINK = re.compile(r"\A\s*<think>(.*?)</think>", re.DOTALL)


def opening_think(text: str) -> re.Match | None:
    """The ``<think>...</think>`` block a text opens with (group 1: the trace), or None."""
    return _THINK.match(text)


def reasoning_trace(message: Message) -> str:
    """A message's reasoning: ``reasoning_content``, or a ``<think>`` block opening its content ("" if none)."""
    if message.reasoning_content:
        return message.reasoning_content.strip()
    found = _THINK.match(message.content or "")
    return found.group(1).strip() if found else ""


def split_think(content: str | None, reasoning: str | None, conv: Conversion) -> tuple[str | None, str | None]:
    """Apply the ``think`` policy to a reply that opens with a ``<think>`` block; count what was found."""
    if content is None:
        return content, reasoning
    found = _THINK.match(content)
    if not found:
        return content, reasoning
    conv.notes[f"think_blocks_{'split' if conv.options.think == 'split' else 'kept'}"] += 1
    if conv.options.think == "keep" or reasoning is not None:
        return content, reasoning
    return content[found.end():].lstrip("\n"), found.group(1).strip("\n")


# --- text-embedded tool calls (Hermes / Qwen style) ----------------------------------------------

_TEXT_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_TEXT_RESULT = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def _text_calls(content: str, conv: Conversion) -> tuple[str, tuple]:
    """Structured calls out of ``<tool_call>`` blocks, and the text around them."""
    if "<tool_call>" not in content:
        return content, ()
    if not conv.options.parse_text_tool_calls:
        raise RecordError("text_tool_calls", "an assistant reply holds <tool_call> text. Convert it to structured calls "
                                             "with --parse-text-tool-calls (or remove it from the data)")
    calls = []
    for block in _TEXT_CALL.findall(content):
        try:
            raw = json.loads(block)
        except json.JSONDecodeError as exc:
            raise RecordError("bad_tool_call", f"a <tool_call> block is not valid JSON ({exc.msg}): {block[:80]!r}") from None
        calls.append(make_tool_call(raw))  # parsed from text: nothing of it goes unused
    conv.notes["text_tool_calls_parsed"] += len(calls)
    return _TEXT_CALL.sub("", content).strip(), tuple(calls)


def _text_results(content: str, conv: Conversion) -> list[str] | None:
    """The results inside ``<tool_response>`` blocks (one tool message each), or None when there are none."""
    if not conv.options.parse_text_tool_calls or "<tool_response>" not in content:
        return None
    return _TEXT_RESULT.findall(content)


# --- OpenAI messages -----------------------------------------------------------------------------


def tool_call(raw: Any) -> ToolCall:
    """A call read field by field (``type``, ``id``, ``function.name``), its ``arguments`` kept whole, so
    any other field inside a call is reported as unused."""
    if isinstance(raw, TrackedRecord):
        raw.get("type")  # "function", the only kind of call
        raw.get("id")
        function = raw.get("function", raw)
        if isinstance(function, TrackedRecord):
            function.get("name")
            function.whole("arguments")
        raw = {key: dict.__getitem__(raw, key) for key in raw}
    return make_tool_call(raw)


def _content_parts(content: Any) -> tuple[Any, str | None]:
    """OpenAI content may be a list of parts: text parts are joined; reasoning/thinking parts become the trace."""
    if not isinstance(content, list):
        return content, None
    texts, thoughts = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("text", part.get("value")) if isinstance(part, dict) else None
        if kind in ("text", "reasoning", "thinking") and isinstance(value, str):
            (texts if kind == "text" else thoughts).append(value)
        else:
            raise RecordError("unsupported_content_part", f"content part of type {kind!r} is not supported "
                                                          "(text, reasoning and thinking parts are)")
    return "".join(texts), ("".join(thoughts) if thoughts else None)


def openai_message(m: Any, conv: Conversion) -> Message:
    """One OpenAI / transformers chat message, tool calls, tool results and reasoning included."""
    if not isinstance(m, dict) or "role" not in m:
        raise RecordError("bad_conversation", "each message needs a 'role'")
    role = m["role"]
    role = "tool" if role == "function" else role  # OpenAI's legacy name for a tool result
    content, part_reasoning = _content_parts(m.get("content"))
    reasoning = m.get("reasoning_content")
    for alias in ("thinking", "reasoning"):  # other names datasets use for the trace
        if reasoning is None and isinstance(m.get(alias), str):
            reasoning = m[alias]
    reasoning = reasoning if reasoning is not None else part_reasoning
    calls = [tool_call(c) for c in (m.get("tool_calls") or [])]
    if m.get("function_call") is not None:  # OpenAI's legacy single call
        calls.append(tool_call(m["function_call"]))
    if role == "assistant":
        if isinstance(content, str):
            content, text_calls = _text_calls(content, conv)
            calls += text_calls
        content, reasoning = split_think(content, reasoning, conv)
    if content is None and not calls and "content" not in m:
        raise RecordError("bad_conversation", f"a {role} message needs 'content'")
    return make_message(role, content, tool_calls=tuple(calls), reasoning_content=reasoning,
                        tool_call_id=m.get("tool_call_id"), name=m.get("name"), weight=m.get("weight"))


def openai_messages(messages: Any, conv: Conversion) -> list[Message]:
    if not isinstance(messages, list):
        raise RecordError("bad_conversation", "'messages' must be a list of {role, content}")
    out: list[Message] = []
    for m in messages:
        _append(out, openai_message(m, conv), conv)
    return out


def _append(out: list[Message], message: Message, conv: Conversion) -> None:
    """Append ``message``; a tool (or, after calls, user) turn of ``<tool_response>`` blocks becomes one tool
    message per block when text tool calls are parsed."""
    results = _text_results(message.content or "", conv) if message.role in ("tool", "user") else None
    if results is not None and (message.role == "tool" or (out and out[-1].tool_calls)):
        out += [Message("tool", r) for r in results]
    else:
        out.append(message)


# --- ShareGPT turns ------------------------------------------------------------------------------


def _calls_from_value(value: Any) -> tuple:
    """A ``function_call`` turn's value: one ``{"name", "arguments"}`` object or a list of them (parallel)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError("bad_tool_call", f"a function_call turn is not valid JSON ({exc.msg}): {value[:80]!r}") from None
    calls = value if isinstance(value, list) else [value]
    return tuple(make_tool_call(c) for c in calls)  # parsed from a JSON string: nothing of it goes unused


def sharegpt_messages(turns: Any, conv: Conversion) -> list[Message]:
    """ShareGPT ``{from, value}`` turns, including LLaMA-Factory's ``function_call`` / ``observation`` roles.

    A ``function_call`` turn right after an assistant text turn joins it (one assistant turn that
    says something and calls); consecutive ``function_call`` turns join too (parallel calls).
    """
    if not isinstance(turns, list):
        raise RecordError("bad_conversation", "'conversations' must be a list of {from, value} turns")
    out: list[Message] = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError("bad_conversation", "each ShareGPT turn needs 'from' and 'value'")
        source = str(turn["from"]).lower()
        role = SHAREGPT_ROLES.get(source)
        if role is None:
            raise RecordError("unsupported_role", f"ShareGPT role {turn['from']!r} is not supported "
                                                  f"(known: {', '.join(sorted(SHAREGPT_ROLES))})")
        if source in CALL_ROLES:
            calls = _calls_from_value(turn["value"])
            if out and out[-1].role == "assistant":  # text then call, or a second call: one assistant turn
                previous = out.pop()
                out.append(Message("assistant", previous.content, previous.tool_calls + calls,
                                   previous.reasoning_content))
            else:
                out.append(make_message("assistant", None, tool_calls=calls))
            continue
        _append(out, openai_message({"role": role, "content": turn["value"]}, conv), conv)
    return out


def template_inputs(record: Any) -> TemplateInputs:
    """A record's ``tools`` and ``chat_template_kwargs`` (both optional)."""
    kwargs = record.whole("chat_template_kwargs") if "chat_template_kwargs" in record else None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RecordError("bad_field", f"'chat_template_kwargs' must be an object, got {type(kwargs).__name__}")
    tools = make_tools(record.whole("tools")) if "tools" in record else None
    return TemplateInputs(tools, kwargs or None)
