"""Literal-tensor tests of the train mask: every expected value written out by hand."""

from __future__ import annotations

import pytest

from tuneful.tokenization.masking import (
    IGNORE_INDEX,
    ConversationTokenizer,
    labels_from_mask,
    mask_from_offsets,
    special_token_offsets,
)
from tuneful.templates.registry import ChatTemplate, builtin
from tuneful.templates.spans import _generated_turn


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_single_turn_mask_is_reply_plus_end_of_turn(word_tok):
    ctok = ConversationTokenizer(word_tok, builtin("tuneful"))
    ex = ctok([{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi there"}])
    assert ex.input_ids == ids(word_tok, "<|user|>", "hello", "world", "<|end|>", "<|assistant|>", "hi", "there", "<|end|>")
    assert ex.train_mask == [0, 0, 0, 0, 0, 1, 1, 1]
    assert labels_from_mask(ex.input_ids, ex.train_mask) == [IGNORE_INDEX] * 5 + ids(word_tok, "hi", "there", "<|end|>")


def test_multi_turn_trains_every_reply_and_last_turn_only_option(word_tok):
    conv = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    ex = ConversationTokenizer(word_tok, builtin("tuneful"))(conv)
    assert ex.input_ids == ids(
        word_tok, "<|system|>", "sys", "<|end|>", "<|user|>", "a", "<|end|>", "<|assistant|>", "b", "<|end|>",
        "<|user|>", "c", "<|end|>", "<|assistant|>", "d", "<|end|>",
    )
    assert ex.train_mask == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    last = ConversationTokenizer(word_tok, builtin("tuneful"), last_turn_only=True)(conv)
    assert last.train_mask == [0] * 13 + [1, 1]


def test_template_text_identical_to_reply_is_not_trained(word_tok):
    """The user says exactly what the assistant says: only the assistant's copy is trained."""
    ex = ConversationTokenizer(word_tok, builtin("tuneful"))(
        [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hi there"}]
    )
    assert ex.train_mask == [0, 0, 0, 0, 0, 1, 1, 1]


def test_eos_terminated_template_trains_eos_even_when_pad_is_eos(word_tok):
    word_tok.pad_token = word_tok.eos_token
    template = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'user' %}<|user|> {{ m.content }} <|assistant|> "
        "{% else %}{{ m.content }} {{ eos_token }} {% endif %}{% endfor %}",
        "test:eos",
    )
    ex = ConversationTokenizer(word_tok, template)([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert ex.input_ids == ids(word_tok, "<|user|>", "a", "<|assistant|>", "b", "<eos>")
    assert ex.train_mask == [0, 0, 0, 1, 1]
    assert ex.rendered.turns[0].end_of_turn == " <eos>"


def test_mask_from_offsets_literal():
    spans = [(10, 20)]
    offsets = [(0, 5), (5, 10), (8, 12), (12, 20), (20, 21), (15, 15), (10, 10), (19, 25)]
    # inside-before, touching start, straddling start, inside, after, zero-width inside, zero-width at start, straddling end
    assert mask_from_offsets(offsets, spans) == [0, 0, 1, 1, 0, 1, 0, 1]


def test_special_token_offsets_narrow_swallowed_whitespace():
    text = "<|assistant|>\n\nHi<|end|>\n"
    offsets = [(0, 15), (15, 17), (17, 25)]  # the tokenizer reports the swallowed newlines
    narrowed = special_token_offsets(text, [7, 1, 8], offsets, {7: "<|assistant|>", 8: "<|end|>"})
    assert narrowed.tolist() == [[0, 13], [15, 17], [17, 24]]


def test_labels_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        labels_from_mask([1, 2, 3], [0, 1])


# Like Qwen3: the reasoning of an assistant turn is printed only while it is the last turn.
DROPS_EARLIER_REASONING = ChatTemplate(
    "{% for m in messages %}{% if m.role == 'assistant' %}<|assistant|> "
    "{% if loop.last and m.reasoning_content %}<think> {{ m.reasoning_content }} </think> {% endif %}"
    "{{ m.content }} <|end|> {% else %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}",
    "test:drops-earlier-reasoning",
)
REASONING_CONV = [
    {"role": "user", "content": "a"},
    {"role": "assistant", "reasoning_content": "b", "content": "c"},
    {"role": "user", "content": "d"},
    {"role": "assistant", "reasoning_content": "b", "content": "hi"},
]


def test_a_turn_whose_reasoning_history_drops_is_trained_in_its_own_example(word_tok):
    ex = ConversationTokenizer(word_tok, DROPS_EARLIER_REASONING)(REASONING_CONV)
    assert ex.input_ids == ids(word_tok, "<|user|>", "a", "<|end|>", "<|assistant|>", "c", "<|end|>", "<|user|>", "d",
                              "<|end|>", "<|assistant|>", "<think>", "b", "</think>", "hi", "<|end|>")
    assert ex.train_mask == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # every turn as printed (display)
    full, alone = ex.examples
    assert full.input_ids == ex.input_ids and full.train_mask == [0] * 10 + [1] * 5  # only the turn in context
    assert alone.input_ids == ids(word_tok, "<|user|>", "a", "<|end|>", "<|assistant|>", "<think>", "b", "</think>",
                                  "c", "<|end|>")
    assert alone.train_mask == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # with its reasoning, after exactly its inference prompt
    dropped = ConversationTokenizer(word_tok, DROPS_EARLIER_REASONING, reasoning="drop_earlier")(REASONING_CONV)
    assert [e.train_mask for e in dropped.examples] == [full.train_mask]


@pytest.mark.parametrize("tail, stops, turn, end_of_turn", [
    ("hi<|end|>\n<eos>", ["<|end|>", "<eos>"], "hi<|end|>", "<|end|>"),  # Phi-3: EOS once at the very end
    (" hi </s>", ["</s>"], " hi </s>", " </s>"),
    ("hi <|end|> <eos> ", ["<eos>", "<|end|>"], "hi <|end|>", " <|end|>"),
    ("<|end|>\n", ["<|end|>"], "<|end|>", "<|end|>"),  # an empty reply still ends its turn
    ("hi\n", ["<eos>"], "hi", ""),  # no stop string: nothing to learn to stop with (preflight error)
])
def test_a_turn_ends_at_the_first_stop_string_of_its_trailing_run(tail, stops, turn, end_of_turn):
    assert _generated_turn(tail, stops) == (turn, end_of_turn)
