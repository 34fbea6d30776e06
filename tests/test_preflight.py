"""Each preflight check fires on a hand-made case, names its cause and fix, and all are reported together."""

from __future__ import annotations

import pytest

from tuneful.data.types import Conversation, Message
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.tokenization.preflight import PreflightError, preflight
from tuneful.samples import train_tokenizer
from tuneful.templates.registry import ChatTemplate, builtin


def conv(*pairs: tuple[str, str]) -> Conversation:
    return Conversation(tuple(Message(r, c) for r, c in pairs), {"id": f"c{len(pairs)}"})


QA = conv(("user", "What is two plus two?"), ("assistant", "Two plus two is four."))


@pytest.fixture(scope="module")
def tok():
    texts = ["What is two plus two?", "Two plus two is four.", "hello world"] * 5
    t = train_tokenizer(texts, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"])
    t.chat_template = builtin("chatml").source
    return t


def checks(report) -> dict[str, str]:
    return {f.check: f.severity for f in report.findings}


def test_clean_setup_has_no_findings(tok):
    report = preflight(tok, ConversationTokenizer(tok, builtin("chatml")), [QA])
    assert report.findings == [] and len(report.examples) == 1


def test_missing_end_of_turn_is_an_error_naming_the_fix(tok):
    no_eot = ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", "file:plain.jinja")
    report = preflight(tok, ConversationTokenizer(tok, no_eot), [QA], allow_template_change=True)
    [finding] = report.errors
    assert finding.check == "end_of_turn_not_trained"
    assert "never learn" in finding.message and "file:plain.jinja" in finding.message
    with pytest.raises(PreflightError, match="end_of_turn_not_trained"):
        report.raise_on_errors()


def test_pad_equals_eos_is_reported(tok):
    tok_same = train_tokenizer(["a b"], special_tokens=["<|im_start|>", "<|im_end|>"], pad_token="<|im_end|>")
    report = preflight(tok_same, ConversationTokenizer(tok_same, builtin("chatml")), [QA])
    assert checks(report)["pad_equals_eos"] == "warning"
    # ...and the EOS is still trained: padding is masked by position, never by id
    example = report.examples[0]
    assert example.input_ids[-2] == tok_same.eos_token_id and example.train_mask[-2] == 1


def test_double_bos_is_an_error(tok):
    tok.bos_token = "<s>"
    double = ChatTemplate("<s>{{ bos_token }}" + builtin("chatml").source, "file:double.jsonl")
    try:
        report = preflight(tok, ConversationTokenizer(tok, double), [QA], allow_template_change=True)
    finally:
        tok.bos_token = None
    assert checks(report)["double_bos"] == "error"


def test_zero_trained_tokens_and_overlong_policies(tok):
    ctok = ConversationTokenizer(tok, builtin("chatml"))
    user_only = conv(("user", "hello world"))
    long = conv(("user", "hello world " * 30), ("assistant", "Two plus two is four."))
    dropped = preflight(tok, ctok, [QA, user_only, long], max_length=40, overlong="drop")
    assert checks(dropped) == {"zero_trained_tokens": "error", "overlong": "warning"}
    assert dropped.dropped_overlong == 1 and len(dropped.examples) == 1
    truncated = preflight(tok, ctok, [long], max_length=40, overlong="truncate")
    # the reply lies beyond the limit: truncation leaves nothing to train, which is an error too
    assert truncated.truncated == 1 and checks(truncated)["zero_trained_tokens"] == "error"
    failed = preflight(tok, ctok, [long], max_length=40, overlong="fail")
    assert checks(failed)["overlong"] == "error"
    with pytest.raises(ValueError, match="overlong"):
        preflight(tok, ctok, [QA], overlong="cut")


def test_template_mismatch_with_tokenizers_own(tok):
    report = preflight(tok, ConversationTokenizer(tok, builtin("zephyr")), [QA])
    assert checks(report)["template_mismatch"] == "error"
    allowed = preflight(tok, ConversationTokenizer(tok, builtin("zephyr")), [QA], allow_template_change=True)
    assert checks(allowed)["template_mismatch"] == "warning"


def test_all_errors_are_reported_at_once(tok):
    no_eot = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", "file:bare.jinja")
    report = preflight(tok, ConversationTokenizer(tok, no_eot), [QA, conv(("user", "x"))])
    with pytest.raises(PreflightError) as err:
        report.raise_on_errors()
    names = {f.check for f in err.value.findings}
    assert names == {"template_mismatch", "end_of_turn_not_trained", "zero_trained_tokens"}


def test_template_error_records_are_counted(tok):
    strict = builtin("gemma")  # roles must alternate
    bad = conv(("user", "a"), ("user", "b"), ("assistant", "c"))
    report = preflight(tok, ConversationTokenizer(tok, strict), [QA, bad], allow_template_change=True)
    assert checks(report)["template_error"] == "error" and report.failed_records == 1
