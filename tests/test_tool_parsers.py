"""Tool-call parsers and the streaming splitter, on literal model outputs."""

from __future__ import annotations

import json

import pytest

from tuneful.data.types import ToolCall
from tuneful.data.tool_parsers import PARSERS, ReplyStream, parser_for_template
from tuneful.templates.registry import builtin

WEATHER = ToolCall("get_weather", {"city": "Oslo"})


@pytest.mark.parametrize("parser, text, content, calls", [
    ("hermes", 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
     "Checking.", [WEATHER]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
     "", [WEATHER, ToolCall("get_weather", {"city": "Rome"})]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [WEATHER]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [WEATHER]),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "abc123xyz"}]', "",
     [ToolCall("get_weather", {"city": "Oslo"}, "abc123xyz")]),
    ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', "", [WEATHER]),
    ("hermes", "It is sunny.", "It is sunny.", []),
    ("tuneful", "Checking.\n<tool_call>get_weather\ncity: Oslo\n</tool_call>", "Checking.", [WEATHER]),
    ("tuneful", '<tool_call>get_weather\ncity: Oslo\n</tool_call>\n<tool_call>plan\nday: 3\nnote: "12"\n'
                'who: [1, "x"]\nok: true\nwhere: null\n</tool_call>', "",
     [WEATHER, ToolCall("plan", {"day": 3, "note": "12", "who": [1, "x"], "ok": True, "where": None})]),
    ("tuneful", "<tool_call>get_time\n</tool_call>", "", [ToolCall("get_time", {})]),
])
def test_each_family_syntax_parses(parser, text, content, calls):
    reply = PARSERS[parser].parse(text)
    assert (reply.content, list(reply.tool_calls), reply.failed) == (content, calls, False)


@pytest.mark.parametrize("parser, text", [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "get_weather"'),  # cut off
    ("llama3_json", '{"answer": 42}'),
    ("mistral", "[TOOL_CALLS] not json"),
    ("tuneful", "<tool_call>get_weather\ncity Oslo\n</tool_call>"),  # no "key: value"
    ("tuneful", "<tool_call>get_weather\ndays: 3 days\n</tool_call>"),  # not a plain string, not JSON
    ("tuneful", "<tool_call>get weather\n</tool_call>"),
])
def test_a_call_that_does_not_parse_is_flagged_and_its_syntax_kept_out_of_the_content(parser, text):
    """Issue 43: the template's call syntax never reaches ``content`` (a bare JSON reply, which has no marker, is
    kept as text)."""
    reply = PARSERS[parser].parse("Let me check. " + text if parser != "llama3_json" else text)
    assert reply.content == ("Let me check." if parser != "llama3_json" else text)
    assert not reply.tool_calls and reply.failed


@pytest.mark.parametrize("parser", ["hermes", "tuneful"])
def test_the_calls_completed_before_the_length_limit_are_kept(parser):
    """Issue 43: `tool_choice: required` with a small max_tokens cut a second call; the first, complete, was thrown
    away and the raw syntax returned as content."""
    first = ('<tool_call>\n{"name": "lookup_city", "arguments": {"city": "Fetd"}}\n</tool_call>' if parser == "hermes"
             else "<tool_call>lookup_city\ncity: Fetd\n</tool_call>")
    text = first + "\n<tool_call>lookup_c"
    assert PARSERS[parser].parse(text).failed  # not cut by the limit: a broken reply
    reply = PARSERS[parser].parse(text, truncated=True)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("lookup_city", {"city": "Fetd"})]
    assert reply.content == "" and not reply.failed


def test_reasoning_is_split_off():
    reply = PARSERS["hermes"].parse("<think>\nNeed the tool.\n</think>\n\n<tool_call>\n"
                                    '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert reply.reasoning == "Need the tool." and reply.tool_calls == (WEATHER,) and reply.content == ""


def test_parser_comes_from_the_template(fixtures):
    def source(name: str) -> str:
        return (fixtures / "chat_templates" / f"{name}.jinja").read_text()

    assert parser_for_template(builtin("chatml").source) == "hermes"
    assert parser_for_template(builtin("tuneful").source) == "tuneful"
    assert parser_for_template(source("qwen2.5-instruct")) == parser_for_template(source("qwen3")) == "hermes"
    assert parser_for_template(source("llama-3.1-instruct")) == "llama3_json"
    assert parser_for_template(source("mistral-7b-instruct-v0.3")) == "mistral"
    assert parser_for_template(source("granite-3.2-instruct")) == "granite"
    assert parser_for_template(builtin("zephyr").source) is None


def test_the_tuneful_syntax_reads_back_what_its_template_writes():
    """Every argument value round-trips through tuneful.jinja and the tuneful parser: a plain string written as
    it is (after a space, as in prose), any other value (a string that looks like JSON, ends in a space or holds
    a line break, numbers, lists, null) as JSON."""
    from tuneful.templates.render import render

    arguments = {"name": "Staifouia", "n": 3, "s": "12", "t": "true", "u": "a b ", "v": None, "w": [1, "x"],
                 "x": "Ünï", "y": "two\nlines", "z": "-", "e": ""}
    messages = [{"role": "user", "content": "Go."},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                    "name": "f", "arguments": arguments}}]}]
    text = render(messages, builtin("tuneful").source).split("<|assistant|>")[1].removesuffix("<|end|>")
    assert "\nname: Staifouia\n" in text and '\ns: "12"\n' in text and "\nx: Ünï\n" in text
    assert PARSERS["tuneful"].parse(text).tool_calls == (ToolCall("f", arguments),)


def _stream(parser: str | None, text: str, size: int = 3) -> tuple[list[dict], object]:
    stream = ReplyStream(PARSERS[parser] if parser else None)
    deltas = []
    for start in range(0, len(text), size):
        deltas += stream.feed(text[start : start + size])
    rest, reply = stream.finish()
    return deltas + rest, reply


def _joined(deltas: list[dict], key: str) -> str:
    return "".join(d.get(key) or "" for d in deltas)


@pytest.mark.parametrize("size", [1, 3, 50])
def test_streamed_text_is_all_content(size):
    deltas, reply = _stream("hermes", "Plain answer, no call <tool maybe> at all.", size)
    assert _joined(deltas, "content") == "Plain answer, no call <tool maybe> at all." and not reply.tool_calls


@pytest.mark.parametrize("size", [1, 4, 200])
def test_streamed_reasoning_text_and_call(size):
    text = ("<think>\nI need the weather.\n</think>\n\nLet me check.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    deltas, reply = _stream("hermes", text, size)
    assert _joined(deltas, "reasoning_content") == "I need the weather."
    assert _joined(deltas, "content").strip() == "Let me check." and "<tool_call>" not in _joined(deltas, "content")
    [call] = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"} and reply.tool_calls == (WEATHER,)


def test_a_streamed_broken_call_is_flagged_and_its_syntax_withheld():
    text = 'Sure <tool_call>{"name": oops'
    deltas, reply = _stream("hermes", text, 2)
    assert _joined(deltas, "content").strip() == "Sure" and "<tool_call>" not in _joined(deltas, "content")
    assert reply.failed


def test_llama_json_call_is_held_until_the_end():
    deltas, reply = _stream("llama3_json", '{"name": "get_weather", "parameters": {"city": "Oslo"}}', 5)
    assert _joined(deltas, "content") == "" and len([d for d in deltas if "tool_calls" in d]) == 1
