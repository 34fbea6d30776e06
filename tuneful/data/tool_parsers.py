"""Model output → (reasoning, text, tool calls), for the call syntaxes of the major template families.

Knows only generated text; which syntax a model writes is decided by its chat template (recorded in
the model folder at training time, or detected from the template, or ``--tool-parser``):

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks after optional text
  (Hermes, Qwen2.5, Qwen3, tuneful's built-in chatml);
- ``tuneful``: ``<tool_call>NAME\nkey: value\n...\n</tool_call>`` blocks after optional text (tuneful's own
  template; a value that starts with a cased letter is a string as written, any other is JSON);
- ``llama3_json``: the whole reply is ``{"name": ..., "parameters": {...}}`` (Llama 3.1/3.2/3.3), optionally
  after ``<|python_tag|>``, several joined by ``;``;
- ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}, ...]`` (Mistral v0.3);
- ``granite``: ``<|tool_call|>[{"name": ..., "arguments": {...}}, ...]`` (Granite 3.x).

A leading ``<think>...</think>`` block is returned as the reasoning. Output that looks like a call but
does not parse is returned as text with ``failed=True`` (the server counts it), never an error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .messages import opening_think
from .types import RecordError, ToolCall, make_tool_call


@dataclass(frozen=True)
class ParsedReply:
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    failed: bool = False  # something looked like a call but did not parse


@dataclass(frozen=True)
class ToolParser:
    name: str
    start: str  # the text that opens a call: streaming holds text back from here on
    parse_calls: Callable[[str], tuple[str, list[Any]] | None] = field(repr=False)  # text -> (content, raw calls)

    def parse(self, text: str, *, truncated: bool = False) -> ParsedReply:
        """The reply's reasoning, text and calls. ``truncated``: the length limit cut the reply, so a last call may
        be unfinished: the complete calls before it still stand. A reply whose calls do not parse is ``failed``,
        and its content is the text before the first call marker: the template's call syntax never reaches it."""
        reasoning, text = split_reasoning(text)
        if self.start not in text and not (self.name == "llama3_json" and text.lstrip().startswith("{")):
            return ParsedReply(text, (), reasoning)
        found = self.parse_calls(text)
        cut = text.rfind(self.start)
        while found is None and truncated and cut > 0:  # drop the unfinished last call, then the one before ...
            found = self.parse_calls(text[:cut].rstrip()) if self.start in text[:cut] else None
            cut = text.rfind(self.start, 0, cut)
        calls: tuple[ToolCall, ...] = ()
        if found is not None:
            try:
                calls = tuple(make_tool_call(call) for call in found[1])
            except RecordError:
                found = None
        if found is None:
            return ParsedReply(self._before_calls(text), (), reasoning, failed=True)
        return ParsedReply(found[0], calls, reasoning, failed=not calls)

    def _before_calls(self, text: str) -> str:
        """The text before the first call marker (all of it where the syntax has none: a bare JSON reply)."""
        at = text.find(self.start)
        return text[:at].rstrip() if at >= 0 else text


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(the opening ``<think>`` block's trace, the reply after it without leading whitespace); (None, text)."""
    found = opening_think(text)
    if not found:
        return None, text
    return found.group(1).strip("\n"), text[found.end():].lstrip()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _call_blocks(read_call: Callable[[str], dict | None]) -> Callable[[str], tuple[str, list[Any]] | None]:
    """A parser for ``<tool_call>...</tool_call>`` blocks after optional text, each block read by ``read_call``
    (None: the block is not a call, and the reply does not parse)."""
    def parse(text: str) -> tuple[str, list[Any]] | None:
        blocks = _CALL_BLOCK.findall(text)
        if not blocks or text.count("<tool_call>") != len(blocks):
            return None
        calls = [read_call(b) for b in blocks]
        if any(c is None for c in calls):
            return None
        return text[: text.index("<tool_call>")].strip(), calls
    return parse


def _json_call(block: str) -> dict | None:
    """A Hermes block: the call as one JSON object."""
    call = _json(block)
    return call if isinstance(call, dict) else None


def plain_string(value: str) -> bool:
    """Whether the tuneful template writes a string argument as it is (``key: value``) rather than as JSON:
    it starts with a letter that has a case (lower- and upper-case differ: the test the template can make with
    Jinja's own filters), ends with a non-space, holds no line break and is not a JSON literal."""
    return (value[:1].lower() != value[:1].upper() and value == value.rstrip() and "\n" not in value
            and value not in ("true", "false", "null"))


def _key_value_call(block: str) -> dict | None:
    """``NAME\nkey: value\n...`` → {"name", "arguments"}; None when a line is not ``key: value`` or a value
    that is not a plain string is not JSON."""
    name, *lines = block.strip("\n").split("\n")
    arguments: dict[str, Any] = {}
    for line in lines:
        key, separator, value = line.partition(": ")
        if not separator or not key or key in arguments:
            return None
        if plain_string(value):
            arguments[key] = value
        else:
            parsed = _json(value)
            if parsed is None and value != "null":
                return None
            arguments[key] = parsed
    name = name.strip()
    return {"name": name, "arguments": arguments} if name and " " not in name else None


def _llama3(text: str) -> tuple[str, list[Any]] | None:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    calls = [_json(part) for part in body.split(";")] if body else []
    if not calls or any(not isinstance(c, dict) or "name" not in c for c in calls):
        return None
    return "", [{"name": c["name"], "arguments": c.get("parameters", c.get("arguments"))} for c in calls]


def _json_list_after(marker: str) -> Callable[[str], tuple[str, list[Any]] | None]:
    def parse(text: str) -> tuple[str, list[Any]] | None:
        head, _, rest = text.partition(marker)
        calls = _json(rest.strip())
        if isinstance(calls, dict):
            calls = [calls]
        if not isinstance(calls, list) or not calls or any(not isinstance(c, dict) for c in calls):
            return None
        return head.strip(), calls
    return parse


PARSERS: dict[str, ToolParser] = {
    "hermes": ToolParser("hermes", "<tool_call>", _call_blocks(_json_call)),
    "tuneful": ToolParser("tuneful", "<tool_call>", _call_blocks(_key_value_call)),
    "llama3_json": ToolParser("llama3_json", "<|python_tag|>", _llama3),
    "mistral": ToolParser("mistral", "[TOOL_CALLS]", _json_list_after("[TOOL_CALLS]")),
    "granite": ToolParser("granite", "<|tool_call|>", _json_list_after("<|tool_call|>")),
}

# the marker each family's template prints around or before a call, in the order they are checked
_TEMPLATE_MARKERS = (("'<tool_call>' + function.name", "tuneful"), ("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"),
                     ("<|tool_call|>", "granite"), ("<|python_tag|>", "llama3_json"), ('"parameters": ', "llama3_json"))


def parser_for_template(template_source: str) -> str | None:
    """The call syntax a chat template prints (None: the template prints no tool calls we know)."""
    for marker, name in _TEMPLATE_MARKERS:
        if marker in template_source:
            return name
    return None


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call_body(call: Any, index: int | None = None) -> dict:
    """A parsed call as OpenAI sends it: ``arguments`` as a JSON string, a fresh id (``index`` when streamed)."""
    out = {"index": index} if index is not None else {}
    out.update({"id": call_id(), "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}})
    return out


class ReplyStream:
    """Streamed text → OpenAI delta objects: the reasoning first (one delta, once its block closes), then
    content as it comes, then tool calls. From the first character that may open a call (the parser's
    marker, or a prefix of it at the end of the text so far; for ``llama3_json`` a reply that starts
    with ``{``) the text is held, and parsed when the reply ends: calls become ``tool_calls`` deltas,
    anything else is released as content."""

    def __init__(self, parser: ToolParser | None):
        self.parser = parser
        self.text = ""
        self.body_start: int | None = None  # where the reply proper starts (after a reasoning block)
        self.released = 0  # characters of the body sent as content

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        out = []
        if self.body_start is None:
            head = self.text.lstrip()
            if "<think>".startswith(head) and len(head) < len("<think>"):
                return out  # may still become a reasoning block
            if head.startswith("<think>"):
                if "</think>" not in head:
                    return out
                reasoning, _ = split_reasoning(self.text)
                out.append({"reasoning_content": reasoning})
                self.body_start = self.text.index("</think>") + len("</think>")
            else:
                self.body_start = 0
        body = self.text[self.body_start:]
        if self.body_start and not body[self.released:].strip() and not self.released:
            return out  # whitespace after the reasoning block is not content
        safe = self._safe_end(body)
        if safe > self.released:
            start = self.released
            if start == 0 and self.body_start:
                start = len(body) - len(body.lstrip())  # drop whitespace that followed the reasoning
            if safe > start:
                out.append({"content": body[start:safe]})
            self.released = safe
        return out

    def _safe_end(self, body: str) -> int:
        if self.parser is None:
            return len(body)
        if self.parser.name == "llama3_json" and (not body.strip() or body.lstrip().startswith(("{", "<"))):
            return 0 if not self.released else self.released
        at = body.find(self.parser.start)
        if at >= 0:
            return max(self.released, at)
        return len(body) - _held_suffix(body, self.parser.start)

    def finish(self, *, truncated: bool = False) -> tuple[list[dict], ParsedReply]:
        """The deltas still owed, and the reply as a whole (its ``tool_calls`` decide the finish reason);
        ``truncated``: the length limit ended the reply (:meth:`ToolParser.parse`)."""
        if self.parser is not None:
            reply = self.parser.parse(self.text, truncated=truncated)
        else:
            reasoning, content = split_reasoning(self.text)
            reply = ParsedReply(content, (), reasoning)
        out = []
        if self.body_start is None:  # ended while it could still have been a reasoning block
            if reply.reasoning is not None:
                out.append({"reasoning_content": reply.reasoning})
            body = split_reasoning(self.text)[1]
        else:
            body = self.text[self.body_start:].lstrip() if self.body_start and not self.released else \
                self.text[self.body_start:]
        if reply.tool_calls or reply.failed:  # the held call text becomes calls, or is not shown at all
            rest = reply.content[self.released:] if len(reply.content) > self.released else ""
            if rest.strip():
                out.append({"content": rest})
            out += [{"tool_calls": [tool_call_body(call, index)]} for index, call in enumerate(reply.tool_calls)]
        elif body[self.released:]:
            out.append({"content": body[self.released:]})
        return out, reply
