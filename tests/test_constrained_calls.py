"""Constrained decoding of tool calls (tool_choice "required" / a named function), below the server:
a random-init model — which never writes a call on its own — produces, under the grammar, a reply that
each syntax's own parser reads back as a call of an offered function with schema-valid arguments, and
then stops; an unconstrained row in the same batch decodes exactly as it does alone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.generation.logits_process import LogitsProcessorList

from tiny import tiny_llama
from tuneful.tokenization.masking import starter_tokenizer
from tuneful.infer.constrain import SYNTAXES, CallConstraints, ConstrainedRows, call_grammar
from tuneful.data.tool_parsers import PARSERS, plain_string

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
        "required": ["city", "days"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}},
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = starter_tokenizer()
    return tiny_llama(len(tokenizer), seed=3, hidden=64).eval(), tokenizer


def _decode(model, tokenizer, prompts: list[list[int]], matchers: list, stop_ids: list[int], steps: int = 60):
    ids = torch.tensor(prompts)
    processors = LogitsProcessorList([ConstrainedRows(matchers, model.config.vocab_size, stop_ids)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=stop_ids[0], logits_processor=processors)
    return [row[ids.shape[1]:].tolist() for row in out]


def _valid(call, tools: list[dict]) -> bool:
    function = {t["function"]["name"]: t["function"]["parameters"] for t in tools}.get(call.name)
    if function is None or set(call.arguments) != set(function["required"]):
        return False
    for key, value in call.arguments.items():
        spec = function["properties"][key]
        if "enum" in spec and value not in spec["enum"]:
            return False
        if spec.get("type") == "integer" and not isinstance(value, int):
            return False
        if spec.get("type") == "string" and not (isinstance(value, str) and len(value) <= spec["maxLength"]):
            return False
    return True


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("parallel", [True, False])
def test_every_syntax_gives_a_parsable_schema_valid_call_then_stops(model_and_tokenizer, syntax: str, parallel: bool):
    model, tokenizer = model_and_tokenizer
    stop = [tokenizer.eos_token_id]
    constraints = CallConstraints(tokenizer, model.config.vocab_size, stop)
    prompt = tokenizer("Weather in Oslo tomorrow?", add_special_tokens=False)["input_ids"]
    for tools in (TOOLS, TOOLS[1:]):  # any offered function ("required"), or one named
        [reply] = _decode(model, tokenizer, [prompt], [constraints.matcher(syntax, tools, parallel=parallel)], stop,
                          steps=120)
        assert reply[-1] in stop, tokenizer.decode(reply)  # the call is complete and the turn ends
        parsed = PARSERS[syntax].parse(tokenizer.decode(reply[:-1]))
        assert not parsed.failed and parsed.tool_calls, tokenizer.decode(reply)
        assert all(_valid(call, tools) for call in parsed.tool_calls), parsed.tool_calls
        if not parallel:
            assert len(parsed.tool_calls) == 1


def test_without_the_constraint_the_model_writes_no_call(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer("Weather in Oslo tomorrow?", add_special_tokens=False)["input_ids"]
    [reply] = _decode(model, tokenizer, [prompt], [None], [tokenizer.eos_token_id])
    assert not PARSERS["hermes"].parse(tokenizer.decode(reply)).tool_calls


def test_constrained_and_free_rows_share_a_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    stop = [tokenizer.eos_token_id]
    constraints = CallConstraints(tokenizer, model.config.vocab_size, stop)
    prompt = tokenizer("Weather in Oslo tomorrow?", add_special_tokens=False)["input_ids"]
    [alone] = _decode(model, tokenizer, [prompt], [None], stop)
    # the same prompt twice (no padding): the free row must match its solo run token for token
    forced, free = _decode(model, tokenizer, [prompt, prompt], [constraints.matcher("hermes", TOOLS), None], stop)
    assert free[:len(alone)] == alone
    assert PARSERS["hermes"].parse(tokenizer.decode(forced[:forced.index(stop[0])])).tool_calls


def test_the_grammar_uses_special_tokens_by_id_and_the_syntaxs_argument_key():
    from tuneful.tokenization.masking import load_tokenizer

    class Mistral:  # a tokenizer where the marker is one special token (as in Mistral v0.3)
        all_special_ids = [5]
        unk_token_id = 0

        @staticmethod
        def convert_tokens_to_ids(text):
            return 5 if text == "[TOOL_CALLS]" else 0

    grammar = call_grammar("mistral", TOOLS[1:], Mistral(), parallel=False)
    assert grammar.startswith('start: <[5]> " " calls') and '"maxItems": 1' in grammar
    llama = call_grammar("llama3_json", TOOLS[1:], load_tokenizer(None))
    assert json.loads(llama.split("%json ", 1)[1].splitlines()[0])["properties"]["parameters"]["properties"]["zone"]


def test_the_tuneful_grammar_writes_a_plain_string_as_it_is_and_never_as_a_json_literal(model_and_tokenizer):
    """tuneful's own syntax: a string argument may be written bare (as the template writes it) or as JSON; a bare
    value that would read back as true/false/null, a number, or an undeclared key is refused."""
    model, tokenizer = model_and_tokenizer
    constraints = CallConstraints(tokenizer, model.config.vocab_size, [tokenizer.eos_token_id])
    tools = [{"type": "function", "function": {"name": "find", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["name"]}}}]

    def accepts(text: str) -> bool:
        matcher = constraints.matcher("tuneful", tools, parallel=False)
        ok = matcher.consume_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
        return bool(ok) and not matcher.is_error() and matcher.is_accepting()

    assert accepts("<tool_call>find\nname: New York\nlimit: 3\n</tool_call>") and accepts('<tool_call>find\nname: "true"\n</tool_call>')
    for value in ("Oslo", "New York", "true", "trueish", "Oslo ", "t", "tru", "nul", "nulls", "null", "false", "falsy",
                  "12", "x\ty", "T", "tree house"):  # bare exactly when the template writes it bare
        assert accepts(f"<tool_call>find\nname: {value}\n</tool_call>") == plain_string(value), value
    for refused in ("<tool_call>find\nname: true\n</tool_call>", "<tool_call>find\nname: 12\n</tool_call>",
                    "<tool_call>find\nlimit: 3\n</tool_call>", "<tool_call>find\nname: Oslo\nlimit: three\n</tool_call>",
                    "<tool_call>find\nname: Oslo\ncity: Rome\n</tool_call>"):
        assert not accepts(refused), refused
