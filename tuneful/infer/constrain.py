"""Constrained decoding for ``tool_choice: "required"`` or a named function: the reply *is* a call.

Boundary: knows token ids, the tokenizer and the call syntaxes of ``tool_parsers``; nothing of HTTP.
For a request it builds a grammar — one or more calls (exactly one when ``parallel_tool_calls`` is
false) of the offered functions (or the named one), each ``{"name": ..., "arguments": ...}`` valid
against that function's JSON schema (or, in tuneful's own syntax, the name and one ``key: value`` line per
argument), in the syntax the model's template prints — and a transformers
``LogitsProcessor`` that, at every decoding step, masks each constrained row of a batch to the tokens
the grammar allows (other rows are untouched, so constrained and free requests share batches). When
a call is complete the grammar allows only the model's end-of-turn tokens, so the row stops there.

The grammar engine is llguidance (the one llama.cpp, vLLM and SGLang use: Lark grammars with JSON
schemas, matched against the tokenizer's vocabulary). What is written here is each syntax's grammar
and the per-row bookkeeping. JSON is constrained to the separators ``json.dumps`` writes (no free
whitespace: a model could otherwise emit newlines forever inside an object).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data.tool_parsers import plain_string

_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class CallSyntax:
    """How a parser's syntax wraps calls: ``open`` + call (+ ``between`` + call ...) + ``close``;
    ``as_list``: the calls are one JSON array; ``arguments_key``: the key holding the arguments;
    ``key_value``: a call is the function's name then one ``\nkey: value`` line per argument (tuneful's own)
    instead of a JSON object."""
    open: str
    close: str = ""
    between: str = "\n"
    as_list: bool = False
    arguments_key: str = "arguments"
    key_value: bool = False


# each block is what the template prints and what tool_parsers.PARSERS[name] reads back
SYNTAXES = {
    "hermes": CallSyntax("<tool_call>\n", "\n</tool_call>", between="\n</tool_call>\n<tool_call>\n"),
    "tuneful": CallSyntax("<tool_call>", "\n</tool_call>", between="\n</tool_call>\n<tool_call>", key_value=True),
    "llama3_json": CallSyntax("", between="; ", arguments_key="parameters"),
    "mistral": CallSyntax("[TOOL_CALLS] ", as_list=True),
    "granite": CallSyntax("<|tool_call|>", as_list=True),
}


def call_schema(tools: Sequence[dict], arguments_key: str = "arguments") -> dict:
    """JSON schema of one call of any of ``tools`` (OpenAI function tools), name first. Arguments the
    function does not declare are not allowed unless its schema says otherwise (as OpenAI's strict mode)."""
    variants = []
    for tool in tools:
        function = tool["function"]
        parameters = {"additionalProperties": False,
                      **(function.get("parameters") or {"type": "object", "properties": {}})}
        variants.append({"type": "object", "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
                         "required": ["name", arguments_key], "additionalProperties": False})
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def _literal(text: str, tokenizer: Any) -> str:
    """A grammar literal for ``text``: a special token by id when the tokenizer has it as one (llguidance
    matches quoted strings against ordinary text only)."""
    if not text:
        return ""
    stripped = text.strip()
    token_id = tokenizer.convert_tokens_to_ids(stripped) if stripped else None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if token_id is not None and token_id != getattr(tokenizer, "unk_token_id", None) and token_id in special:
        head, tail = text.split(stripped, 1)
        return " ".join(part for part in (json.dumps(head) if head else "", f"<[{token_id}]>",
                                          json.dumps(tail) if tail else "") if part)
    return json.dumps(text)


def plain_string_regex() -> str:
    """Strings the tuneful template writes as they are (``tool_parsers.plain_string``) as one regex: an ASCII letter
    first (other cased letters qualify too, but the grammar needs only a subset: it may write any string as JSON),
    a non-space last, no line break — and not ``true``, ``false`` or ``null`` (spelt out as the strings that
    differ from each: llguidance's ``&~`` negation makes its lexer give up on this grammar)."""
    body, end = r"[^\n]", r"[^\s]"
    ways = [f"[A-Za-z&&[^tfn]]({body}*{end})?"]
    for word in ("true", "false", "null"):
        for k in range(1, len(word)):
            ways += [word[:k], f"{word[:k]}([^\\s{word[k]}]|[^\\n{word[k]}]{body}*{end})"]  # a prefix; differs at k
        ways.append(f"{word}{body}*{end}")  # longer
    return "/" + "|".join(ways) + "/"


def _key_value_calls(tools: Sequence[dict]) -> list[str]:
    """Grammar rules for one call in the tuneful syntax (``call``): a function's name, then its declared
    arguments in schema order (each required one present, each optional one at most once), each on its own
    ``\nkey: value`` line, the value valid against its schema: JSON, or for a plain string the string as it is."""
    rules, alternatives = [f"plain: {plain_string_regex()}"], []
    for i, tool in enumerate(tools):
        function = tool["function"]
        parameters = function.get("parameters") or {}
        required = set(parameters.get("required") or [])
        parts = [json.dumps(function["name"])]
        for j, (key, spec) in enumerate((parameters.get("properties") or {}).items()):
            rules.append(f"json_{i}_{j}: %json {json.dumps({'x-guidance': _COMPACT_JSON, **spec})}")
            values = [f"json_{i}_{j}"]
            if "enum" in spec:
                values += [json.dumps(v) for v in spec["enum"] if isinstance(v, str) and plain_string(v)]
            elif spec.get("type") in ("string", None) and not set(spec) & {"pattern", "format", "minLength", "maxLength", "const"}:
                values.append("plain")
            rules.append(f"argument_{i}_{j}: {json.dumps(chr(10) + key + ': ')} ({' | '.join(values)})")
            parts.append(f"argument_{i}_{j}" if key in required else f"argument_{i}_{j}?")
        rules.append(f"call_{i}: {' '.join(parts)}")
        alternatives.append(f"call_{i}")
    return [f"call: {' | '.join(alternatives)}"] + rules


def call_grammar(syntax_name: str, tools: Sequence[dict], tokenizer: Any, *, parallel: bool = True) -> str:
    """A Lark grammar (llguidance dialect) for the calls a constrained reply may be."""
    syntax = SYNTAXES[syntax_name]
    if syntax.key_value:
        more = f' ({_literal(syntax.between, tokenizer)} call)*' if parallel else ""
        start = f"start: {_literal(syntax.open, tokenizer)} call{more} {_literal(syntax.close, tokenizer)}"
        return "\n".join([start, *_key_value_calls(tools)]) + "\n"
    schema = {"x-guidance": _COMPACT_JSON, **call_schema(tools, syntax.arguments_key)}
    if syntax.as_list:
        array = {"x-guidance": _COMPACT_JSON, "type": "array", "items": call_schema(tools, syntax.arguments_key),
                 "minItems": 1, **({} if parallel else {"maxItems": 1})}
        body = f"%json {json.dumps(array)}"
        rules = f"start: {_literal(syntax.open, tokenizer)} calls\ncalls: {body}\n"
    else:
        more = f' ({_literal(syntax.between, tokenizer)} call)*' if parallel else ""
        parts = [p for p in (_literal(syntax.open, tokenizer), f"call{more}", _literal(syntax.close, tokenizer)) if p]
        rules = f"start: {' '.join(parts)}\ncall: %json {json.dumps(schema)}\n"
    return rules


class CallConstraints:
    """Per-model grammar machinery: the tokenizer as llguidance sees it (built once: it walks the
    vocabulary) and a matcher per constrained request."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]):
        import llguidance
        import llguidance.hf

        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._llg = llguidance
        self._ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids))
        self._lock = threading.Lock()

    def matcher(self, syntax_name: str, tools: Sequence[dict], *, parallel: bool = True) -> Any:
        """A fresh matcher for one reply; ValueError when the grammar does not compile."""
        grammar = self._llg.LLMatcher.grammar_from_lark(call_grammar(syntax_name, tools, self.tokenizer, parallel=parallel))
        problem = self._llg.LLMatcher.validate_grammar(grammar, self._ll_tokenizer)  # '' when it compiles
        if problem:
            raise ValueError(f"the call grammar does not compile: {problem}")
        with self._lock:
            return self._llg.LLMatcher(self._ll_tokenizer, grammar)


class RowConstraint:
    """One reply's constraint during decoding: ``restrict`` masks its next-token scores, ``advance``
    feeds it the token chosen. While the grammar runs, the allowed tokens are the grammar's; once the
    call is complete, only ``stop_ids`` (the reply ends with the call)."""

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: Sequence[int]):
        import llguidance.torch as llg_torch

        self.matcher = matcher
        self.stop_ids = list(stop_ids)
        self._torch = llg_torch
        self._mask = llg_torch.allocate_token_bitmask(1, vocab_size)
        self.complete = False

    def restrict(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (vocab,) with every token the constraint forbids at -inf (a new tensor)."""
        if self.complete:
            out = torch.full_like(scores, float("-inf"))
            out[self.stop_ids] = scores[self.stop_ids]
            return out
        self._torch.fill_next_token_bitmask(self.matcher, self._mask, 0)
        out = scores.float().unsqueeze(0).clone()
        self._torch.apply_token_bitmask_inplace(out, self._mask)
        return out[0].to(scores.dtype)

    def advance(self, token: int) -> None:
        if self.complete or token in self.stop_ids:
            return
        self.matcher.consume_token(token)
        if self.matcher.is_stopped() or self.matcher.is_error():
            self.complete = True


class ConstrainedRows:
    """The same constraints as a transformers logits processor for one batched ``generate``: row ``i``
    follows ``matchers[i]`` (None: unconstrained). Each call first feeds the token chosen at the previous
    step, then masks; a row that chose an end-of-turn token is left alone (``generate`` pads it)."""

    def __init__(self, matchers: Sequence[Any | None], vocab_size: int, stop_ids: Sequence[int]):
        self.rows = [None if m is None else RowConstraint(m, vocab_size, stop_ids) for m in matchers]
        self.stop_ids = list(stop_ids)
        self._started = False
        self._done = [False] * len(self.rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row, constraint in enumerate(self.rows):
            if constraint is None or self._done[row]:
                continue
            if self._started:
                token = int(input_ids[row, -1])
                if token in self.stop_ids:
                    self._done[row] = True
                    continue
                constraint.advance(token)
            scores[row] = constraint.restrict(scores[row])
        self._started = True
        return scores
