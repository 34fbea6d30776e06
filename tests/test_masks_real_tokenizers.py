"""Masks on the real tokenizers in the shared fixtures, with their real chat templates.

For every fixture conversation: each trained run decodes to the reply plus the family's known
end-of-turn marker (whitespace-insensitive, NFC: the tokenizer quirks listed in the fixtures
README), untrained runs hold no reply text, and the token ids equal transformers'
``apply_chat_template(tokenize=True)`` — what inference will feed the model.
"""

from __future__ import annotations

import unicodedata

import pytest
from transformers import AutoTokenizer

from conftest import FIXTURES, FROZEN_NOW, needs_fixtures
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.templates.registry import resolve

# family -> (template: None = the tokenizer's own, end-of-turn string the template must put after replies)
FAMILIES = {
    "llama-2": (None, "</s>"),
    "llama-3": (None, "<|eot_id|>"),
    "qwen2.5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "phi-3": (None, "<|end|>"),
    "mistral-v1": (None, "</s>"),
    "mistral-v3": (None, "</s>"),
    "deepseek-llm": (None, "<｜end▁of▁sentence｜>"),
    # base vocabularies ship no template: built-ins whose turns end with the tokenizer's EOS
    "deepseek-coder": ("alpaca", "<｜end▁of▁sentence｜>"),
    "gpt-2": ("zephyr", "<|endoftext|>"),
    "falcon": ("alpaca", "<|endoftext|>"),
    "starcoder2": ("llama-2", "<|endoftext|>"),
    "mpt": ("mistral", "<|endoftext|>"),
}
# Qwen3 prints an empty think block before a reply written as the last turn (the final one, or an
# earlier one trained on its own); the generation prompt does not, so the model must produce it at
# inference and it is trained with the reply.
INJECTED = {"qwen3": "<think>\n\n</think>\n\n"}


def _squash(text: str) -> str:
    return "".join(unicodedata.normalize("NFC", text).split())


def _runs(ids: list[int], mask: list[int], value: int) -> list[list[int]]:
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@needs_fixtures
def test_every_fixture_tokenizer_is_covered():
    folders = {p.name for p in (FIXTURES / "tokenizers").iterdir() if (p / "tokenizer.json").exists()}
    assert folders == set(FAMILIES)


@needs_fixtures
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_masks_on_real_tokenizer(family: str, fixtures, fixture_conversations):
    template_name, eot = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / family)
    template = resolve(template_name, tok, family)
    ctok = ConversationTokenizer(tok, template, now=FROZEN_NOW)
    checked = 0
    for conv in fixture_conversations:
        messages = conv["messages"]
        try:
            example = ctok(messages)
        except Exception as exc:  # the template itself refuses (e.g. roles must alternate)
            assert "alternate" in str(exc) and conv["id"] == "non_alternating_users", (family, conv["id"], exc)
            continue
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        trained = _runs(example.input_ids, example.train_mask, 1)
        assert len(trained) == len(replies), (family, conv["id"])
        in_full = any(t.in_context for t in example.rendered.turns)  # then the full rendering is example 0
        own_examples = iter(example.examples[1:] if in_full else example.examples)
        for k, (run, reply, turn) in enumerate(zip(trained, replies, example.rendered.turns)):
            assert turn.end_of_turn.strip() == eot, (family, conv["id"], turn.end_of_turn)
            if not turn.in_context:  # shown as the template prints it in history; trained on its own, as generated
                assert family == "qwen3", (family, conv["id"])
                own = next(own_examples)
                [run] = _runs(own.input_ids, own.train_mask, 1)
            written_last = not turn.in_context or (k == len(replies) - 1 and messages[-1]["role"] == "assistant")
            injected = INJECTED.get(family, "") if written_last and "<think>" not in reply else ""
            decoded, wanted = _squash(tok.decode(run)), _squash(injected + reply + eot)
            if example.boundary_merges:  # a counted BPE merge may carry a template character or two
                assert decoded.endswith(wanted) and len(decoded) - len(wanted) <= 2, (family, conv["id"], decoded)
            else:
                assert decoded == wanted, (family, conv["id"], tok.decode(run))
        for run in _runs(example.input_ids, example.train_mask, 0):
            text = _squash(tok.decode(run))
            for reply in replies:
                if len(reply.strip()) >= 12:
                    assert _squash(reply) not in text, (family, conv["id"], reply)
        if template_name is None:
            reference = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            if "strftime_now" not in template.source:  # the reference call reads today's clock
                assert example.input_ids == list(reference), (family, conv["id"])
        checked += 1
    assert checked >= 11


@needs_fixtures
def test_qwen3_trains_each_reasoning_turn_in_its_inference_context(fixtures, fixture_conversations):
    """Qwen3 drops the reasoning of earlier turns from history: the earlier turn is trained in an
    example of its own (its think block included, as the model writes it), the last in the full
    rendering; nothing is trained in a context the model never sees."""
    tok = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "qwen3")
    ctok = ConversationTokenizer(tok, resolve(None, tok, "qwen3"))
    messages = next(c for c in fixture_conversations if c["id"] == "reasoning_in_assistant")["messages"]
    example = ctok(messages)
    first, last = example.rendered.turns
    assert not first.in_context and last.in_context
    assert "<think>" not in example.rendered.text[first.start:first.end]  # history shows the reply only
    full, alone = example.examples
    assert full.input_ids == example.input_ids and sum(full.train_mask) < sum(example.train_mask)
    prompt = tok.apply_chat_template(messages[:2 - 1], tokenize=False, add_generation_prompt=True)
    upto = tok.apply_chat_template(messages[:2], tokenize=False)
    assert tok.decode(alone.input_ids) == upto.rstrip("\n")
    [run] = _runs(alone.input_ids, alone.train_mask, 1)
    assert tok.decode(run) == upto[len(prompt):].rstrip("\n")
    assert tok.decode(run).startswith("<think>\n91 = 7 * 13.\n</think>") and tok.decode(run).endswith("<|im_end|>")
    dropped = ConversationTokenizer(tok, resolve(None, tok, "qwen3"), reasoning="drop_earlier")(messages)
    assert [e.train_mask for e in dropped.examples] == [full.train_mask]
