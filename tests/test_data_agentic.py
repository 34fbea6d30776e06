"""Agentic and modern data shapes: tool calls, tool results, reasoning, unpaired (KTO) labels, every
OpenAssistant layout, FLAN rows, bad bytes, and the promise that no field is dropped without a word.
Real files from ../shared/fixtures where they exist; literal records for the rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import needs_fixtures
from tuneful.cli.main import app
from tuneful.data.formats import FORMATS, detect_format
from tuneful.data.loader import load, write_jsonl
from tuneful.data.messages import ConvertOptions
from tuneful.data.types import LabeledConversation, RecordError, ToolCall


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def _convert_cli(*args: str) -> dict:
    res = CliRunner().invoke(app, ["data", "convert", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- real files -------------------------------------------------------------------------------------


@needs_fixtures
def test_glaive_tool_call_demo_loads_every_record_with_its_tools(fixtures: Path, tmp_path: Path):
    source = fixtures / "data" / "llamafactory" / "glaive_toolcall_en_demo.json"
    raw = json.loads(source.read_text())
    summary = _convert_cli(str(source), "--out", str(tmp_path / "g.jsonl"))
    assert summary["records_in"] == summary["written"] == 300 and summary["skipped"] == 0
    assert summary["ignored_fields"] == {}
    written = [json.loads(x) for x in (tmp_path / "g.jsonl").read_text().splitlines()]
    calls = results = 0
    for record, out in zip(raw, written):
        defined = [t["name"] for t in json.loads(record["tools"])] if record["tools"].strip() not in ("", "[]") else []
        assert [t["function"]["name"] for t in out.get("tools", [])] == defined
        for i, m in enumerate(out["messages"]):
            for call in m.get("tool_calls", []):
                calls += 1
                assert call["function"]["name"] in defined and isinstance(call["function"]["arguments"], dict)
            if m["role"] == "tool":
                results += 1
                assert out["messages"][i - 1]["role"] == "tool" or out["messages"][i - 1].get("tool_calls")
    source_turns = [t["from"] for r in raw for t in r["conversations"]]
    assert calls == source_turns.count("function_call") and results == source_turns.count("observation")
    # the canonical file loads back to the same items
    assert load(tmp_path / "g.jsonl").items == load(source).items


@needs_fixtures
def test_kto_demo_is_unpaired_data_and_sft_refuses_it(fixtures: Path):
    from tuneful.sft.config import DataSettings
    from tuneful.sft.data import _load_conversations

    source = fixtures / "data" / "llamafactory" / "kto_en_demo.json"
    result = load(source)
    assert result.report.format == "unpaired" and not result.conversations
    assert all(isinstance(x, LabeledConversation) for x in result.items)
    assert sum(x.label for x in result.labeled) == 150 and len(result.labeled) == 300
    assert result.labeled[0].to_json()["label"] is True
    with pytest.raises(ValueError, match=r"150 marked undesirable, e\.g\. .*kto_en_demo\.json\[0\].*label == true"):
        _load_conversations(str(source), DataSettings(train=str(source)))


def _flatten(node: dict, tree_id: str, parent: str | None = None) -> list[dict]:
    """OpenAssistant export trees as the flat rows of the oasst1/oasst2 datasets (one message per row)."""
    row = {k: v for k, v in node.items() if k != "replies"}
    row.update({"parent_id": parent, "message_tree_id": tree_id, "user_id": "u", "created_date": "2023-02-01"})
    rows = [row]
    for reply in node.get("replies", []):
        rows += _flatten(reply, tree_id, node["message_id"])
    return rows


def _message_lists(items) -> list:
    return sorted(tuple((m.role, m.content) for m in c.messages) for c in items)


@needs_fixtures
@pytest.mark.parametrize("paths", ["all", "top"])
def test_oasst_flat_rows_and_bare_trees_give_the_export_trees_conversations(fixtures: Path, tmp_path: Path, paths):
    trees = [json.loads(x) for x in (fixtures / "data" / "oasst" / "en_100_tree.jsonl").read_text().splitlines()]
    rows = [r for t in trees for r in _flatten(t["prompt"], t["message_tree_id"])]
    options = ConvertOptions(oasst_paths=paths)
    exported = load(fixtures / "data" / "oasst" / "en_100_tree.jsonl", options=options)
    flat = load(_jsonl(tmp_path / "rows.jsonl", rows), options=options)
    bare = load(_jsonl(tmp_path / "bare.jsonl", [t["prompt"] for t in trees]), options=options)
    assert flat.report.format == "oasst_rows" and bare.report.format == "oasst"
    assert flat.report.records_in == len(rows) == 1167
    assert _message_lists(flat.items) == _message_lists(exported.items) == _message_lists(bare.items)
    assert flat.report.ignored_fields["created_date"] == 1167  # unused, and said so


def test_oasst_rows_prune_and_count_deleted_failed_foreign_and_orphan_messages(tmp_path: Path):
    def row(mid, parent, role, text, **kw):
        return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": "en", "rank": None, **kw}

    rows = [row("r", None, "prompter", "Hi?"), row("a1", "r", "assistant", "Hello!", rank=0),
            row("a2", "r", "assistant", "gone", deleted=True), row("a3", "r", "assistant", "bad", review_result=False),
            row("a4", "r", "assistant", "Hallo!", lang="de"), row("p2", "a2", "prompter", "under a deleted one"),
            row("x", "missing", "assistant", "orphan")]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    result = load(path, on_error="skip", options=ConvertOptions(oasst_lang="en"))
    assert _message_lists(result.items) == [(("user", "Hi?"), ("assistant", "Hello!"))]
    assert dict(result.report.skipped_by_reason) == {"oasst_deleted": 1, "oasst_review_failed": 1, "oasst_lang": 1,
                                                     "oasst_parent_skipped": 1, "oasst_orphan": 1}
    assert result.report.records_in == 7 and any(where.endswith("rows.jsonl:7") for where, _ in result.report.skipped)
    assert len(load(path, on_error="skip").items) == 2  # without --lang the German reply is a conversation too


def test_single_json_object_file_is_one_record(tmp_path: Path):
    (tmp_path / "one.json").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                {"role": "assistant", "content": "a"}]}))
    result = load(tmp_path / "one.json")
    assert result.report.records_in == 1 and [m.content for m in result.conversations[0].messages] == ["q", "a"]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [{"instruction": "q", "output": "a"}] * 2}))
    assert load(tmp_path / "wrapped.json").report.records_in == 2


def test_flan_rows_keep_task_and_template_type(tmp_path: Path):
    path = _jsonl(tmp_path / "flan.jsonl", [{"inputs": "Premise: ... Does it follow?", "targets": "yes",
                                             "task_name": "anli_r1", "template_type": "zs_opt", "task_source": "Flan2021",
                                             "extra": 1}])
    result = load(path)
    [conv] = result.conversations
    assert result.report.format == "flan" and conv.meta == {"task_name": "anli_r1", "template_type": "zs_opt",
                                                             "task_source": "Flan2021"}
    assert dict(result.report.ignored_fields) == {"extra": 1}


# --- tool calls, results and reasoning in OpenAI messages ---------------------------------------------


AGENT = {
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "reasoning_content": "Use the tool.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "4C"},
        {"role": "assistant", "content": "It is 4 °C.", "thinking": "The tool said 4C."},
    ],
    "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "chat_template_kwargs": {"enable_thinking": True},
}


def test_openai_tool_calls_results_and_reasoning_are_kept(tmp_path: Path):
    [conv] = FORMATS["messages"].convert(AGENT)
    call_turn, result, answer = conv.messages[1:]
    assert call_turn.content == "" and call_turn.reasoning_content == "Use the tool."
    assert call_turn.tool_calls == (ToolCall("get_weather", {"city": "Oslo"}, "c1"),)
    assert (result.role, result.tool_call_id, result.name, result.content) == ("tool", "c1", "get_weather", "4C")
    assert answer.reasoning_content == "The tool said 4C."
    assert conv.inputs.tools[0] == {"type": "function", "function": AGENT["tools"][0]}  # bare definition wrapped
    written = conv.to_json()
    assert written["chat_template_kwargs"] == {"enable_thinking": True}
    assert written["messages"][1]["tool_calls"][0] == {"id": "c1", "type": "function",
                                                       "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    write_jsonl([conv], tmp_path / "c.jsonl")
    assert load(tmp_path / "c.jsonl").items == [conv]


@pytest.mark.parametrize("change, rule", [
    (lambda r: r["messages"].pop(1), "tool_without_call"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="get_time"), "unknown_tool"),
    (lambda r: r["messages"][2].update(tool_call_id="c9"), "unknown_tool_call_id"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city: Oslo"), "bad_tool_arguments"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="[1]"), "bad_tool_arguments"),
    (lambda r: r["messages"][2].update(tool_calls=[{"function": {"name": "get_weather"}}]), "tool_calls_not_assistant"),
    (lambda r: r.update(tools="not json"), "bad_tools"),
])
def test_tool_rules_are_named(change, rule):
    record = json.loads(json.dumps(AGENT))
    change(record)
    with pytest.raises(RecordError) as err:
        FORMATS["messages"].convert(record)
    assert err.value.rule == rule
    if rule == "bad_tool_arguments":
        assert "get_weather" in str(err.value)  # the error names the call


def test_a_conversation_may_end_with_a_tool_call_turn():
    [conv] = FORMATS["messages"].convert({"messages": AGENT["messages"][:2]})
    assert conv.messages[-1].tool_calls and conv.inputs.tools is None


def test_think_blocks_kept_by_default_split_by_option():
    record = {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "<think>\nstep\n</think>\n\nanswer"}]}
    result_keep = FORMATS["messages"].convert(record)[0].messages[1]
    assert result_keep.content.startswith("<think>") and result_keep.reasoning_content is None
    split = FORMATS["messages"].convert(record, ConvertOptions(think="split"))[0].messages[1]
    assert (split.reasoning_content, split.content) == ("step", "answer")


def test_convert_summary_says_what_happened_to_think_blocks(tmp_path: Path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>s</think>a"}]}
    src = _jsonl(tmp_path / "t.jsonl", [record])
    assert _convert_cli(str(src), "--out", str(tmp_path / "o.jsonl"))["notes"] == {"think_blocks_kept": 1}
    assert _convert_cli(str(src), "--out", str(tmp_path / "o.jsonl"), "--think", "split")["notes"] == {"think_blocks_split": 1}


HERMES = {"conversations": [
    {"from": "system", "value": "You can call functions."},
    {"from": "human", "value": "Weather in Oslo?"},
    {"from": "gpt", "value": "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"},
    {"from": "tool", "value": "<tool_response>\n{\"temp\": 4}\n</tool_response>"},
    {"from": "gpt", "value": "4 degrees."}]}


def test_hermes_text_calls_need_the_option_and_become_structured():
    with pytest.raises(RecordError, match="--parse-text-tool-calls") as err:
        FORMATS["sharegpt"].convert(HERMES)
    assert err.value.rule == "text_tool_calls"
    [conv] = FORMATS["sharegpt"].convert(HERMES, ConvertOptions(parse_text_tool_calls=True))
    call_turn, result = conv.messages[2], conv.messages[3]
    assert call_turn.content == "Checking." and call_turn.tool_calls == (ToolCall("get_weather", {"city": "Oslo"}),)
    assert (result.role, result.content) == ("tool", "{\"temp\": 4}")


def test_sharegpt_function_call_after_text_joins_the_turn_and_parallel_calls_join():
    record = {"conversations": [
        {"from": "human", "value": "a and b?"}, {"from": "gpt", "value": "Looking."},
        {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {\"x\": 1}}"},
        {"from": "function_call", "value": "[{\"name\": \"f\", \"arguments\": {\"x\": 2}}]"},
        {"from": "observation", "value": "1"}, {"from": "observation", "value": "2"}, {"from": "gpt", "value": "done"}],
        "tools": [{"name": "f", "parameters": {}}]}
    [conv] = FORMATS["sharegpt"].convert(record)
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert conv.messages[1].content == "Looking." and [c.arguments for c in conv.messages[1].tool_calls] == [{"x": 1}, {"x": 2}]


# --- nothing dropped silently ---------------------------------------------------------------------


def test_unused_fields_are_counted_by_name(tmp_path: Path):
    records = [{"messages": [{"role": "user", "content": "q", "loss_weight": 0.0},
                             {"role": "assistant", "content": "a", "loss_weight": 1.0}], "source": "x", "id": 3}] * 2
    summary = _convert_cli(str(_jsonl(tmp_path / "m.jsonl", records)), "--out", str(tmp_path / "o.jsonl"))
    assert summary["ignored_fields"] == {"messages[].loss_weight": 4, "source": 2}
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])["meta"] == {"id": 3}


def test_labels_never_load_as_sft_conversations():
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}], "label": False}
    assert detect_format(record).kind == "unpaired"
    [item] = FORMATS["unpaired"].convert(record)
    assert isinstance(item, LabeledConversation) and item.label is False
    [paired_style] = FORMATS["unpaired"].convert({"prompt": "q", "completion": "good", "label": True})
    assert [m.role for m in paired_style.messages] == ["user", "assistant"] and paired_style.label


# --- bad bytes and empty inputs ---------------------------------------------------------------------


def test_a_line_that_is_not_utf8_is_a_record_error_with_file_and_line(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"instruction": "q", "output": "a"}).encode()
    path.write_bytes(good + b"\n" + b'{"instruction": "\xff", "output": "a"}\n' + good + b"\n")
    result = load(path, on_error="skip")
    assert result.report.written == 2 and dict(result.report.skipped_by_reason) == {"invalid_utf8": 1}
    assert result.report.skipped[0][0] == f"{path}:2"
    with pytest.raises(RecordError) as err:
        load(path)
    assert err.value.where == f"{path}:2" and "0xff" in str(err.value)
    array = tmp_path / "d.json"
    array.write_bytes(b'[{"instruction": "\xff", "output": "a"}]')
    with pytest.raises(RecordError, match="d.json.*invalid_utf8"):
        load(array, on_error="skip")


def test_an_empty_input_says_so(tmp_path: Path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    res = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0 and "empty input" in res.output


def test_every_field_of_a_call_is_used_and_an_unknown_one_is_reported(tmp_path: Path):
    record = json.loads(json.dumps(AGENT))
    assert load(_jsonl(tmp_path / "a.jsonl", [record])).report.ignored_fields == {}
    record["messages"][1]["tool_calls"][0]["index"] = 0  # a streaming leftover the loader does not use
    assert dict(load(_jsonl(tmp_path / "b.jsonl", [record])).report.ignored_fields) == {"messages[].tool_calls[].index": 1}
