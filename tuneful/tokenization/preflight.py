"""Checks run before any training, all at once, each naming its cause and its fix.

They cover the field's known silent failures: EOS/end-of-turn never trained, pad == eos, double
BOS, examples with zero trained tokens, truncation that cuts into replies, a template that differs
from the tokenizer's own, templates that render a turn's context differently at inference, and
for agentic data: tool definitions or calls the template does not print, reasoning it drops.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Sequence

from ..data.messages import reasoning_trace
from ..data.types import Conversation, tool_names
from .masking import ConversationTokenizer, TokenizedConversation, TrainingExample, token_ids_of
from ..templates.registry import from_tokenizer
from ..templates.render import render
from ..templates.spans import TurnSpan

OVERLONG_POLICIES = ("drop", "truncate", "fail")
_PROBE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "Bye."},
    {"role": "assistant", "content": "Goodbye."},
]


@dataclass
class Finding:
    check: str
    severity: str  # "error" stops training; "warning" is reported
    message: str
    count: int = 1
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = f" (e.g. {', '.join(self.examples[:3])})" if self.examples else ""
        return f"[{self.severity}] {self.check}: {self.message}{where}"


class PreflightError(RuntimeError):
    def __init__(self, findings: list[Finding], when: str = "before training"):
        self.findings = findings
        lines = "\n".join(f"  - {f}" for f in findings)
        super().__init__(f"{len(findings)} preflight check(s) failed {when}:\n{lines}")


@dataclass
class PreflightReport:
    findings: list[Finding] = field(default_factory=list)
    examples: list[TokenizedConversation] = field(default_factory=list)
    truncated: int = 0
    dropped_overlong: int = 0
    failed_records: int = 0
    end_of_turn: set[str] = field(default_factory=set)  # the end-of-turn strings of every rendered turn
    tally: "PreflightTally | None" = None

    def end_of_turn_ids(self, tokenizer: Any) -> list[int]:
        """The token ids that end assistant turns in the rendered training data (they become stop tokens)."""
        return token_ids_of(tokenizer, self.end_of_turn)

    @property
    def training_examples(self) -> list[TrainingExample]:
        """What a trainer learns from: every usable conversation's training examples, in order."""
        return [t for e in self.examples for t in e.examples]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def raise_on_errors(self) -> None:
        if self.errors:
            raise PreflightError(self.errors)


def _record_name(conv: Conversation, index: int) -> str:
    return str(conv.meta.get("where") or conv.meta.get("id") or f"record {index}")


def check_tokenizer(tokenizer: Any) -> list[Finding]:
    """Findings about the tokenizer alone."""
    findings = []
    pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if pad is not None and pad == eos:
        findings.append(
            Finding(
                "pad_equals_eos",
                "warning",
                "the pad token is the EOS token. Tools that build labels by masking pad ids then never train "
                "EOS, and the model never learns to stop. tuneful masks padding by position, so its own "
                "training is unaffected; fix for other tools: set a distinct pad token "
                "(tokenizer.pad_token = <an unused special token>).",
            )
        )
    return findings


def check_template_choice(tokenizer: Any, ctok: ConversationTokenizer, allow_template_change: bool) -> list[Finding]:
    """The chosen template against the tokenizer's own, rendered on the same probe conversation."""
    try:
        own = from_tokenizer(tokenizer)
    except ValueError:
        return []
    if own.source == ctok.template.source:
        return []
    # one clock for both renders: templates that print the date must not differ across a minute boundary
    kw = dict(special_tokens=ctok.special_tokens, now=ctok.now or datetime.now())
    try:
        same = render(_PROBE, own.source, **kw) == render(_PROBE, ctok.template.source, **kw)
    except Exception:
        same = False
    if same:
        return []
    return [
        Finding(
            "template_mismatch",
            "warning" if allow_template_change else "error",
            f"the chosen template ({ctok.template.origin}) renders differently from the tokenizer's own. "
            "A model trained with one and served with the other loses much of what it learned. Fix: use "
            "--template tokenizer, or confirm the change (allow_template_change); tuneful saves the chosen "
            "template into the trained model's tokenizer so inference uses it.",
        )
    ]


TOOL_TEMPLATES = ("the model family's own template (Qwen2.5/Qwen3, Llama-3.1/3.2/3.3, Mistral v0.3, Granite 3) "
                  "or the built-in --template chatml")


def _truncate(example: TrainingExample, max_length: int) -> TrainingExample:
    return TrainingExample(example.input_ids[:max_length], example.train_mask[:max_length])


NAMED_EXAMPLES = 5  # records named per finding; the counts are exact


@dataclass
class PreflightTally:
    """What the checks found, counted over conversations in one pass: per check the records hit (exact) and
    the first few named, the turns hit, the token costs and the end-of-turn strings seen. Tallies of parts
    of the data (batches, worker processes) merge into the tally of the whole."""

    records: Counter = field(default_factory=Counter)
    names: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    turns: Counter = field(default_factory=Counter)
    extra_tokens: int = 0
    full_tokens: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    kept: int = 0  # conversations with at least one usable training example
    end_of_turn: set[str] = field(default_factory=set)
    _last: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, check: str, name: str, turns: int = 1) -> None:
        if self._last.get(check) != name:  # a record counts once per check, however many of its turns hit it
            self._last[check] = name
            self.records[check] += 1
            if len(self.names[check]) < NAMED_EXAMPLES:
                self.names[check].append(name)
        self.turns[check] += turns

    def merge(self, other: "PreflightTally") -> "PreflightTally":
        self.records.update(other.records)
        self.turns.update(other.turns)
        for check, names in other.names.items():
            self.names[check] = (self.names[check] + names)[:NAMED_EXAMPLES]
        self.extra_tokens += other.extra_tokens
        self.full_tokens += other.full_tokens
        self.truncated += other.truncated
        self.dropped_overlong += other.dropped_overlong
        self.kept += other.kept
        self.end_of_turn |= other.end_of_turn
        return self

    def to_json(self) -> dict:
        return {"records": dict(self.records), "names": dict(self.names), "turns": dict(self.turns),
                "extra_tokens": self.extra_tokens, "full_tokens": self.full_tokens, "truncated": self.truncated,
                "dropped_overlong": self.dropped_overlong, "kept": self.kept, "end_of_turn": sorted(self.end_of_turn)}

    @classmethod
    def from_json(cls, data: dict) -> "PreflightTally":
        return cls(Counter(data["records"]), defaultdict(list, data["names"]), Counter(data["turns"]),
                   data["extra_tokens"], data["full_tokens"], data["truncated"], data["dropped_overlong"],
                   data["kept"], set(data["end_of_turn"]))


def _check_agentic(conv: Conversation, example: TokenizedConversation, turns: Sequence[TurnSpan], name: str,
                   problems: PreflightTally) -> None:
    """Tool definitions, and in the trained ``turns`` tool calls and reasoning: rendered where given,
    and in the context they train in."""
    for tool in tool_names(conv.inputs.tools):
        if tool not in example.rendered.text:
            problems.add("tools_not_rendered", name)
            break
    for turn in turns:
        message = conv.messages[turn.message_index]
        if any(call.name not in turn.generated for call in message.tool_calls):
            problems.add("calls_not_rendered", name)
        reasoning = reasoning_trace(message)
        if reasoning and reasoning not in turn.generated:
            problems.add("reasoning_not_rendered", name)
        if message.tool_calls and message.content.strip() and message.content.strip() not in turn.generated:
            problems.add("content_not_rendered", name)
        if not turn.in_context:
            problems.add("reasoning_dropped" if reasoning else "turn_rewritten", name)
        if not turn.prompt_matches_inference:
            problems.add("rewrite", name)


def check_conversation(
    conv: Conversation,
    name: str,
    example: TokenizedConversation | Exception,
    ctok: ConversationTokenizer,
    problems: PreflightTally,
    *,
    max_length: int | None,
    overlong: str,
) -> TokenizedConversation | None:
    """Every per-record check on one tokenized conversation (or the error its tokenization raised), counted
    in ``problems``; the conversation with the training examples it keeps, or None when none is usable."""
    if isinstance(example, Exception):  # template errors (incl. TemplateRewriteError) are per-record problems
        hint = " (the conversation has tools or tool calls: is the template tool-capable?)" if (
            conv.inputs.tools or any(m.tool_calls or m.role == "tool" for m in conv.messages)) else ""
        problems.add("render", f"{name}: {type(example).__name__}: {str(example)[:200]}{hint}")
        return None
    bos = getattr(ctok.tokenizer, "bos_token_id", None)
    if bos is not None and example.input_ids[:2] == [bos, bos]:
        problems.add("double_bos", name)
    if not example.all_turns_end:
        problems.add("no_eot", name)
    if example.boundary_merges:
        problems.add("merge", name)
    trained_turns = example.trained_turns
    _check_agentic(conv, example, trained_turns, name, problems)
    problems.full_tokens += len(example.input_ids)
    kept = []
    for position, training in enumerate(example.examples):
        alone = position > 0 or not any(t.in_context for t in trained_turns)
        problems.extra_tokens += len(training.input_ids) if alone else 0
        if max_length is not None and len(training.input_ids) > max_length:
            lost = sum(training.train_mask[max_length:])
            problems.add("overlong", f"{name} ({len(training.input_ids)} tokens, {lost} trained beyond the limit)")
            if overlong == "drop":
                problems.dropped_overlong += 1
                continue
            if overlong == "truncate":
                problems.truncated += 1
                training = _truncate(training, max_length)
        kept.append(training)
    if not kept and example.examples:
        return None  # every example dropped as overlong: counted there
    example = replace(example, examples=tuple(kept))
    if example.trained_tokens == 0 and example.turns_out_of_context and ctok.reasoning == "drop_earlier":
        problems.add("nothing_left", name)  # the policy at work, not a broken record
        return None
    if example.trained_tokens == 0:
        problems.add("weight_zero" if example.rendered.turns and not trained_turns else "zero", name)
        return None
    problems.kept += 1
    problems.end_of_turn.update(t.end_of_turn.strip() for t in example.rendered.turns if t.end_of_turn.strip())
    return example


def preflight(
    tokenizer: Any,
    ctok: ConversationTokenizer,
    conversations: Sequence[Conversation],
    *,
    max_length: int | None = None,
    overlong: str = "drop",
    allow_template_change: bool = False,
) -> PreflightReport:
    """Tokenize every conversation and run every check; the report holds the usable examples."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    report = PreflightReport()
    problems = PreflightTally()
    for index, (conv, example) in enumerate(zip(conversations, ctok.tokenize_many(conversations))):
        kept = check_conversation(conv, _record_name(conv, index), example, ctok, problems,
                                  max_length=max_length, overlong=overlong)
        if kept is not None:
            report.examples.append(kept)
    return finish_report(report, problems, tokenizer, ctok, max_length=max_length, overlong=overlong,
                         allow_template_change=allow_template_change)


def finish_report(report: PreflightReport, problems: PreflightTally, tokenizer: Any, ctok: ConversationTokenizer, *,
                  max_length: int | None, overlong: str, allow_template_change: bool) -> PreflightReport:
    """The findings of the whole data from its tally, with the checks on the tokenizer and template choice."""
    report.findings += check_tokenizer(tokenizer)
    report.findings += check_template_choice(tokenizer, ctok, allow_template_change)
    report.truncated, report.dropped_overlong = problems.truncated, problems.dropped_overlong
    report.end_of_turn = set(problems.end_of_turn)
    report.tally = problems
    _add(report, problems, "template_error", "error", "render",
         "the template failed on these records. Fix: repair or drop them "
         "(data convert --on-error skip) or choose another template.")
    _add(report, problems, "end_of_turn_not_trained", "error", "no_eot",
         f"no end-of-turn token follows the reply in {ctok.template.origin}, so the model would never learn "
         f"to stop. Stop strings known to this tokenizer: {', '.join(ctok.stop_strings[:6]) or 'none'}. Fix: "
         "choose a template whose turns end with the tokenizer's EOS, or add the template's markers to the "
         "tokenizer as special tokens (tuneful sft --add-template-tokens, i.e. data.add_template_tokens=true).")
    _add(report, problems, "double_bos", "error", "double_bos",
         "the sequence starts with two BOS tokens (the template prints BOS and the text already had one). "
         "Fix: remove the BOS from the data or the template.")
    _add(report, problems, "zero_trained_tokens", "error", "zero",
         "these examples have no trained tokens (no assistant turn, or all replies cut off). Fix: drop them "
         "or raise max_length.")
    _add(report, problems, "all_turns_weight_zero", "error", "weight_zero",
         "every assistant message that would be trained has weight 0 (context only), so nothing is trained. "
         "Fix: set weight 1 (or remove the key) on the replies to learn, or drop these records.")
    severity = "error" if overlong == "fail" else "warning"
    _add(report, problems, "overlong", severity, "overlong",
         f"longer than max_length={max_length}; policy overlong={overlong!r} "
         f"({report.dropped_overlong} dropped, {report.truncated} truncated). Fix: raise max_length or "
         "choose overlong=drop|truncate explicitly.")
    _add(report, problems, "tool_calls_not_rendered", "error", "calls_not_rendered",
         f"{ctok.template.origin} does not print the tool calls of assistant turns (the function name is missing "
         "from the turn as rendered), so the model would learn to answer without calling. Fix: a template that "
         f"renders tool calls: {TOOL_TEMPLATES}.")
    _add(report, problems, "tools_not_rendered", "error", "tools_not_rendered",
         f"{ctok.template.origin} does not print the conversation's tool definitions (a tool's name is missing from "
         f"the rendering), so the model would call functions it was never shown. Fix: {TOOL_TEMPLATES}.")
    _add(report, problems, "reasoning_not_rendered", "warning", "reasoning_not_rendered",
         f"{problems.turns['reasoning_not_rendered']} assistant turn(s) carry reasoning (reasoning_content, or a "
         f"<think> block opening the reply) that {ctok.template.origin} does not print for that turn, so the traces "
         "are not trained. Fix: a template that renders reasoning (Qwen3, the built-in chatml), or drop the traces "
         "knowingly.")
    _add(report, problems, "content_not_rendered", "warning", "content_not_rendered",
         f"{problems.turns['content_not_rendered']} assistant turn(s) say something and call a tool, and "
         f"{ctok.template.origin} prints only the call (e.g. Llama 3.1), so their text is not trained. Fix: a "
         "template that prints both (Qwen2.5/Qwen3, the built-in chatml), or move the text to its own turn.")
    alone = ("each is trained in an example of its own, in exactly the context the model sees at inference "
             f"(reasoning=keep: +{problems.extra_tokens} tokens on top of {problems.full_tokens} in the full "
             "renderings)") if ctok.reasoning == "keep" else "they are not trained (reasoning=drop_earlier)"
    _add(report, problems, "reasoning_dropped_from_history", "warning", "reasoning_dropped",
         f"{problems.turns['reasoning_dropped']} assistant turn(s) with reasoning are printed without it once a later "
         f"turn follows ({ctok.template.origin} drops earlier reasoning), so a trace trained in one turn is "
         f"invisible in the next; {alone}.")
    _add(report, problems, "turn_rewritten_in_history", "warning", "turn_rewritten",
         f"{problems.turns['turn_rewritten']} assistant turn(s) are printed in history differently from how the model "
         f"writes them (e.g. an empty think block dropped); {alone}.")
    _add(report, problems, "no_turn_left_to_train", "warning", "nothing_left",
         "every assistant turn of these conversations is rewritten in history, so with reasoning=drop_earlier "
         "nothing is left to train in them; they are left out. Fix: reasoning=keep trains each such turn alone.")
    _add(report, problems, "history_rewrite", "warning", "rewrite",
         "the template renders an earlier turn's context differently from what add_generation_prompt gives "
         "at inference (e.g. it moves the system prompt or the tool list to the last user turn). These turns "
         "are trained after the history as the template renders it with the turn; the model sees slightly "
         "different prompts in training and in use.")
    _add(report, problems, "boundary_merge", "warning", "merge",
         "a token spans the end of the prompt and the start of a reply (BPE merged them, e.g. ']<'); it is "
         "trained, but at inference the prompt is tokenized alone and splits there differently. Fix: a "
         "template that ends the prompt with whitespace or a special token (e.g. a newline after the header).")
    report.failed_records = problems.records["render"]
    return report


def _add(report: PreflightReport, problems: PreflightTally, check: str, severity: str, key: str, message: str) -> None:
    """A finding for ``check`` when the tally counted records under ``key``: how many, and the first few named."""
    count = problems.records[key]
    if count:
        report.findings.append(Finding(check, severity, f"{count} record(s): {message}", count,
                                       problems.names[key][:NAMED_EXAMPLES]))
