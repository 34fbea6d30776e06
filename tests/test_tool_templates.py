"""Tool calls and reasoning through the real templates and tokenizers of the shared fixtures.

Renderings equal transformers' apply_chat_template with ``tools=`` and chat_template_kwargs (goldens
made with transformers 5.23 by tests/make_tool_goldens.py), errors included. Masks are checked
token by token against spans computed here independently with apply_chat_template itself: every
assistant turn is trained as the template prints it when the model writes it (text, calls in the
template's own syntax, reasoning where printed, end-of-turn), after exactly the prompt the model
is given at inference; tool results, tool schemas, system and user text are never trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from conftest import FIXTURES, FROZEN_NOW, needs_fixtures
from tuneful.cli.main import app
from tuneful.data.formats import FORMATS
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.tokenization.preflight import preflight
from tuneful.templates.registry import ChatTemplate, builtin
from tuneful.templates.render import error_json, frozen_clock, render

DATA = json.loads((Path(__file__).parent / "data" / "tool_conversations.json").read_text())
TOOLS = DATA["tools"]
CONVERSATIONS = {c["id"]: c for c in DATA["conversations"]}
GOLDENS = sorted((Path(__file__).parent / "data" / "tool_goldens").glob("*.json"))

# tokenizer folder, template, end-of-turn: the tool-capable families the fixtures have tokenizers for
FAMILIES = {
    "llama-3.1-instruct": ("llama-3", "<|eot_id|>"),
    "llama-3.2-instruct": ("llama-3", "<|eot_id|>"),
    "llama-3.3-instruct": ("llama-3", "<|eot_id|>"),
    "qwen2.5-instruct": ("qwen2.5", "<|im_end|>"),
    "qwen3": ("qwen3", "<|im_end|>"),
    "mistral-7b-instruct-v0.3": ("mistral-v3", "</s>"),
    # the fixtures have no Granite tokenizer: GPT-2's vocabulary with Granite's special tokens added
    "granite-3.0-instruct": ("gpt-2", "<|end_of_text|>"),
    "granite-3.1-instruct": ("gpt-2", "<|end_of_text|>"),
    "granite-3.2-instruct": ("gpt-2", "<|end_of_text|>"),
}
GRANITE_TOKENS = ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"]


def _tokenizer(fixtures: Path, family: str):
    tok = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / FAMILIES[family][0])
    if family.startswith("granite"):
        tok.add_special_tokens({"additional_special_tokens": GRANITE_TOKENS, "eos_token": "<|end_of_text|>"})
    tok.chat_template = _template(family).source
    return tok


def _template(name: str) -> ChatTemplate:
    return ChatTemplate((FIXTURES / "chat_templates" / f"{name}.jinja").read_text(), f"file:{name}")


def test_goldens_cover_the_tool_capable_templates():
    assert {g.stem for g in GOLDENS} == set(FAMILIES)


@needs_fixtures
@pytest.mark.parametrize("golden_file", GOLDENS, ids=lambda p: p.stem)
def test_render_with_tools_and_kwargs_matches_golden(golden_file: Path):
    golden = json.loads(golden_file.read_text())
    template = _template(golden["template"]).source
    assert len(golden["results"]) == 2 * len(CONVERSATIONS)
    for result in golden["results"]:
        conv = CONVERSATIONS[result["conversation_id"]]
        try:
            got = {"rendered": render(conv["messages"], template, add_generation_prompt=result["add_generation_prompt"],
                                      special_tokens=golden["special_tokens_map"], now=FROZEN_NOW, tools=TOOLS,
                                      template_kwargs=conv.get("chat_template_kwargs"))}
        except Exception as exc:
            got = {"error": error_json(exc)}
        wanted = {k: result[k] for k in ("rendered", "error") if k in result}
        assert got == wanted, (golden["template"], result["conversation_id"], result["add_generation_prompt"])


@needs_fixtures
def test_cli_render_takes_conversation_objects_with_tools_and_kwargs(tmp_path: Path):
    golden = json.loads((Path(__file__).parent / "data" / "tool_goldens" / "qwen3.json").read_text())
    items = [{"messages": c["messages"], "tools": TOOLS, **({"chat_template_kwargs": c["chat_template_kwargs"]}
                                                           if "chat_template_kwargs" in c else {})}
             for c in DATA["conversations"]]
    items.append([{"role": "user", "content": "a plain message list still works"}])
    (tmp_path / "c.json").write_text(json.dumps(items))
    out = CliRunner().invoke(app, ["template", "render", "--template", str(FIXTURES / "chat_templates" / "qwen3.jinja"),
                                   "--messages", str(tmp_path / "c.json"), "--json", "--eos-token", "<|im_end|>"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout.strip().splitlines()[-1])
    wanted = [{"rendered": r["rendered"]} for r in golden["results"] if not r["add_generation_prompt"]]
    assert got[:-1] == wanted and got[-1] == {"rendered": "<|im_start|>user\na plain message list still works<|im_end|>\n"}


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _reference_turns(tok, conv: dict, eot: str) -> list[tuple[str, str]]:
    """(inference prompt, that prompt + the turn as the model writes it) of every assistant turn, from
    apply_chat_template alone."""
    kw = dict(tools=TOOLS, tokenize=False, **conv.get("chat_template_kwargs", {}))
    turns = []
    with frozen_clock(FROZEN_NOW):
        for i, m in enumerate(conv["messages"]):
            if m["role"] == "assistant":
                prompt = tok.apply_chat_template(conv["messages"][:i], add_generation_prompt=True, **kw)
                upto = tok.apply_chat_template(conv["messages"][: i + 1], **kw)
                assert upto.startswith(prompt)
                turns.append((prompt, upto[: upto.index(eot, len(prompt)) + len(eot)]))
    return turns


@needs_fixtures
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_agent_traces_are_masked_token_by_token(family: str, fixtures: Path):
    eot = FAMILIES[family][1]
    tok = _tokenizer(fixtures, family)
    ctok = ConversationTokenizer(tok, _template(family), now=FROZEN_NOW)
    checked = 0
    for conv in DATA["conversations"]:
        if family.startswith("llama") and conv["id"] == "parallel_calls":
            continue  # the template refuses parallel calls (golden: TemplateError)
        if family.startswith("mistral") and conv["id"] == "single_call":
            continue  # system prompt moved into the last user turn: tested in test_preflight_on_agentic_data
        [item] = FORMATS["messages"].convert({"messages": conv["messages"], "tools": TOOLS,
                                              **({"chat_template_kwargs": conv["chat_template_kwargs"]}
                                                 if "chat_template_kwargs" in conv else {})})
        example = ctok(item)
        reference = _reference_turns(tok, conv, eot)
        found, trained = [], []
        for training in example.examples:  # decoded from the start: SentencePiece drops a leading "▁" mid-way
            for start, end in _runs(training.train_mask):
                found.append((tok.decode(training.input_ids[:start]), tok.decode(training.input_ids[:end])))
                trained.append(tok.decode(training.input_ids[start:end]))
        assert sorted(found) == sorted(reference), (family, conv["id"])
        trained_text = "".join(trained)
        for m in conv["messages"]:
            if m["role"] in ("tool", "user", "system"):
                assert m["content"] not in trained_text, (family, conv["id"], m["content"])
            for call in m.get("tool_calls", []):
                if family.startswith("granite"):  # its public templates print no calls (preflight: an error)
                    assert call["function"]["name"] not in trained_text
                    continue
                assert call["function"]["name"] in trained_text
                assert all(str(v) in trained_text for v in call["function"]["arguments"].values())
        assert "Current weather in a city." not in trained_text  # the tool schema
        if family == "qwen3" and conv["id"].startswith("reasoning"):
            assert all(m.get("reasoning_content", "") in trained_text for m in conv["messages"])
        checked += 1
    assert checked >= 6


@needs_fixtures
def test_cli_mask_lists_training_examples_when_history_is_rewritten(fixtures: Path, tmp_path: Path):
    items = [{"messages": CONVERSATIONS["reasoning_multi_turn"]["messages"]},
             {"messages": CONVERSATIONS["thinking_off"]["messages"], "tools": TOOLS,
              "chat_template_kwargs": {"enable_thinking": False}}]
    (tmp_path / "c.json").write_text(json.dumps(items))
    res = CliRunner().invoke(app, ["template", "mask", "--messages", str(tmp_path / "c.json"), "--json",
                                   "--tokenizer", str(fixtures / "tokenizers" / "qwen3")])
    assert res.exit_code == 0, res.output
    reasoning, thinking_off = json.loads(res.stdout.strip().splitlines()[-1])
    tok = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "qwen3")
    full = tok.apply_chat_template(items[0]["messages"], tokenize=True, return_dict=True)["input_ids"]
    assert reasoning["input_ids"] == list(full) and len(_runs(reasoning["train_mask"])) == 2
    assert len(reasoning["examples"]) == 2  # the last turn in the full rendering, the first on its own
    assert "No prime up to 9" in tok.decode([t for t, m in zip(reasoning["examples"][0]["input_ids"],
                                                               reasoning["examples"][0]["train_mask"]) if m])
    # enable_thinking=false: the prompt closes the think block, the turn is in context, no extra example
    assert "examples" not in thinking_off and len(_runs(thinking_off["train_mask"])) == 1
    trained = tok.decode([t for t, m in zip(thinking_off["input_ids"], thinking_off["train_mask"]) if m])
    assert trained == "Hello.<|im_end|>" and "</think>" in tok.decode(thinking_off["input_ids"])


def _conversation(conv_id: str, tools=TOOLS):
    conv = CONVERSATIONS[conv_id]
    return FORMATS["messages"].convert({"messages": conv["messages"], **({"tools": tools} if tools else {})})[0]


@needs_fixtures
def test_preflight_on_agentic_data(fixtures: Path):
    llama = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "llama-3")
    qwen3 = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "qwen3")
    gpt2 = _tokenizer(fixtures, "granite-3.1-instruct")

    def checks(tok, template, convs, **kw):
        report = preflight(tok, ConversationTokenizer(tok, template, now=FROZEN_NOW, **kw), convs,
                           allow_template_change=True)
        return {f.check: f for f in report.findings}, report

    # Granite 3.1's public template prints an empty assistant turn for tool calls
    found, _ = checks(gpt2, _template("granite-3.1-instruct"), [_conversation("single_call")])
    assert found["tool_calls_not_rendered"].severity == "error"
    assert "granite-3.1-instruct" in found["tool_calls_not_rendered"].message
    assert "--template chatml" in found["tool_calls_not_rendered"].message
    # a built-in without tool support: neither the schemas nor the calls are printed
    found, _ = checks(gpt2, builtin("zephyr"), [_conversation("single_call")])
    assert {"tools_not_rendered", "tool_calls_not_rendered"} <= set(found)
    # Llama 3.1 prints no reasoning and drops the text of a turn that calls
    found, _ = checks(llama, _template("llama-3.1-instruct"),
                      [_conversation("reasoning_multi_turn", None), _conversation("text_and_call")])
    assert found["reasoning_not_rendered"].count == 1 and "2 assistant turn(s)" in found["reasoning_not_rendered"].message
    assert found["content_not_rendered"].count == 1
    # DeepSeek-R1 strips <think> blocks kept in the reply from every turn: the traces are never trained
    deepseek = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "deepseek-llm")
    think_in_content = FORMATS["messages"].convert({"messages": [
        {"role": "user", "content": "Is 91 prime?"}, {"role": "assistant", "content": "<think>\n7 * 13\n</think>\n\nNo."},
        {"role": "user", "content": "Is 97 prime?"}, {"role": "assistant", "content": "<think>\nno divisor\n</think>\n\nYes."}]})
    found, _ = checks(deepseek, _template("deepseek-r1"), think_in_content)
    assert "2 assistant turn(s) carry reasoning" in found["reasoning_not_rendered"].message
    # Qwen3 drops earlier reasoning: reported, trained alone (keep) or not at all (drop_earlier)
    found, report = checks(qwen3, _template("qwen3"), [_conversation("reasoning_multi_turn", None)])
    assert "tokens on top of" in found["reasoning_dropped_from_history"].message and len(report.training_examples) == 2
    found, report = checks(qwen3, _template("qwen3"), [_conversation("reasoning_multi_turn", None)],
                           reasoning="drop_earlier")
    assert "not trained" in found["reasoning_dropped_from_history"].message and len(report.training_examples) == 1
    ends_with_user = [*_conversation("reasoning_multi_turn", None).messages[:3]]
    from tuneful.data.types import make_conversation
    found, report = checks(qwen3, _template("qwen3"), [make_conversation(ends_with_user)], reasoning="drop_earlier")
    assert found["no_turn_left_to_train"].severity == "warning" and not report.examples
    # Mistral v0.3 prints the system prompt and tools in the last user turn only
    mistral = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "mistral-v3")
    found, report = checks(mistral, _template("mistral-7b-instruct-v0.3"), [_conversation("single_call")])
    assert "history_rewrite" in found and not [f for f in found.values() if f.severity == "error"]
    # the built-in chatml prints tools, calls and reasoning in every turn: nothing to report
    found, report = checks(qwen3, builtin("chatml"), [_conversation(c) for c in
                                                      ("single_call", "parallel_calls", "reasoning_with_calls")])
    assert not set(found) & {"tool_calls_not_rendered", "tools_not_rendered", "reasoning_not_rendered",
                             "reasoning_dropped_from_history", "content_not_rendered"}
    assert len(report.training_examples) == 3
