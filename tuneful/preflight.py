"""Checks run before any training, all at once, each naming its cause and its fix.

They cover the field's known silent failures: EOS/end-of-turn never trained, pad == eos, double
BOS, examples with zero trained tokens, truncation that cuts into replies, a template that differs
from the tokenizer's own, and templates that render a turn's context differently at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from .data.types import Conversation
from .masking import ConversationTokenizer, TokenizedConversation
from .templates.registry import from_tokenizer
from .templates.render import render

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
    def __init__(self, findings: list[Finding]):
        self.findings = findings
        lines = "\n".join(f"  - {f}" for f in findings)
        super().__init__(f"{len(findings)} preflight check(s) failed before training:\n{lines}")


@dataclass
class PreflightReport:
    findings: list[Finding] = field(default_factory=list)
    examples: list[TokenizedConversation] = field(default_factory=list)
    truncated: int = 0
    dropped_overlong: int = 0
    failed_records: int = 0

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


def _truncate(example: TokenizedConversation, max_length: int) -> TokenizedConversation:
    return TokenizedConversation(
        example.input_ids[:max_length], example.train_mask[:max_length], example.rendered, example.offsets[:max_length]
    )


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
    report.findings += check_tokenizer(tokenizer)
    report.findings += check_template_choice(tokenizer, ctok, allow_template_change)

    problems: dict[str, list[str]] = {
        k: [] for k in ("render", "no_eot", "zero", "double_bos", "overlong", "rewrite", "merge")
    }
    bos = getattr(tokenizer, "bos_token_id", None)
    for index, conv in enumerate(conversations):
        name = _record_name(conv, index)
        try:
            example = ctok(conv.to_dicts())
        except Exception as exc:  # template errors (incl. TemplateRewriteError) are per-record problems
            problems["render"].append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if bos is not None and example.input_ids[:2] == [bos, bos]:
            problems["double_bos"].append(name)
        if not example.all_turns_end:
            problems["no_eot"].append(name)
        if not all(t.prompt_matches_inference for t in example.rendered.turns):
            problems["rewrite"].append(name)
        if example.boundary_merges:
            problems["merge"].append(name)
        if max_length is not None and len(example.input_ids) > max_length:
            lost = sum(example.train_mask[max_length:])
            problems["overlong"].append(f"{name} ({len(example.input_ids)} tokens, {lost} trained beyond the limit)")
            if overlong == "drop":
                report.dropped_overlong += 1
                continue
            if overlong == "truncate":
                report.truncated += 1
                example = _truncate(example, max_length)
        if example.trained_tokens == 0:
            problems["zero"].append(name)
            continue
        report.examples.append(example)

    _add(report, "template_error", "error", problems["render"],
         "the template failed on these records (or rewrites replies). Fix: repair or drop them "
         "(data convert --on-error skip) or choose another template.")
    _add(report, "end_of_turn_not_trained", "error", problems["no_eot"],
         f"no end-of-turn token follows the reply in {ctok.template.origin}, so the model would never learn "
         f"to stop. Stop strings known to this tokenizer: {', '.join(ctok.stop_strings[:6]) or 'none'}. Fix: "
         "choose a template whose turns end with the tokenizer's EOS, or add the template's end marker to "
         "the tokenizer as a special token.")
    _add(report, "double_bos", "error", problems["double_bos"],
         "the sequence starts with two BOS tokens (the template prints BOS and the text already had one). "
         "Fix: remove the BOS from the data or the template.")
    _add(report, "zero_trained_tokens", "error", problems["zero"],
         "these examples have no trained tokens (no assistant turn, or all replies cut off). Fix: drop them "
         "or raise max_length.")
    severity = "error" if overlong == "fail" else "warning"
    _add(report, "overlong", severity, problems["overlong"],
         f"longer than max_length={max_length}; policy overlong={overlong!r} "
         f"({report.dropped_overlong} dropped, {report.truncated} truncated). Fix: raise max_length or "
         "choose overlong=drop|truncate explicitly.")
    _add(report, "history_rewrite", "warning", problems["rewrite"],
         "the template renders an earlier turn's context differently from what add_generation_prompt gives "
         "at inference (e.g. it moves the system prompt to the last user turn). Masks stay exact; the "
         "model just sees slightly different prompts in training and in use.")
    _add(report, "boundary_merge", "warning", problems["merge"],
         "a token spans the end of the prompt and the start of a reply (BPE merged them, e.g. ']<'); it is "
         "trained, but at inference the prompt is tokenized alone and splits there differently. Fix: a "
         "template that ends the prompt with whitespace or a special token (e.g. a newline after the header).")
    report.failed_records = len(problems["render"])
    return report


def _add(report: PreflightReport, check: str, severity: str, names: list[str], message: str) -> None:
    if names:
        report.findings.append(Finding(check, severity, f"{len(names)} record(s): {message}", len(names), names[:5]))
