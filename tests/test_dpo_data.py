"""Preference pairs: one shared prompt, response-only masks, loud errors, one forward pass for both sides."""

from __future__ import annotations

import pytest
import torch

from tuneful.data.types import Message, PreferencePair
from tuneful.dpo.data import (PreferenceDataError, collate_pairs, preference_tokenizer, sequence_logps, tokenize_pair,
                              tokenize_pairs)
from tuneful.masking import special_tokens_of
from tuneful.templates.registry import builtin
from tuneful.templates.render import render

from tiny import tiny_llama

PROMPT = (Message("system", "Be brief."), Message("user", "Name a colour."), Message("assistant", "Red."),
          Message("user", "Another one, please, different from the first."))


@pytest.fixture()
def ctok(starter_tok):
    return preference_tokenizer(starter_tok, builtin("chatml"))


def test_prompt_is_shared_and_equals_the_inference_prompt(ctok, starter_tok):
    example = tokenize_pair(ctok, PreferencePair(PROMPT, "Blue.", "I like turtles very much indeed."))
    messages = [m.to_dict() for m in PROMPT]
    inference = render(messages, builtin("chatml").source, add_generation_prompt=True,
                       special_tokens=special_tokens_of(starter_tok))
    assert example.prompt_ids == starter_tok(inference, add_special_tokens=False)["input_ids"]
    trained = [t for t, m in zip(example.chosen_ids, example.chosen_mask) if m]
    assert starter_tok.decode(trained) == "Blue.<|im_end|>"  # the reply and its end-of-turn, nothing else
    assert starter_tok.decode(example.rejected_ids).startswith("I like turtles")
    assert "Be brief" not in starter_tok.decode(example.chosen_ids)  # no prompt text inside a response


def test_bad_pairs_are_all_reported_with_their_record(ctok):
    whole_conversation = "user: Another one, please, different from the first.\nassistant: Blue."
    pairs = [PreferencePair(PROMPT, "Blue.", "Green."),
             PreferencePair(PROMPT, whole_conversation, "Green."),
             PreferencePair(PROMPT, "Same.", " Same. "),
             PreferencePair(PROMPT, "", "Green.")]
    with pytest.raises(PreferenceDataError) as info:
        tokenize_pairs(ctok, pairs)
    message = str(info.value)
    assert "3 bad preference pair(s)" in message
    assert "record 1: chosen contains the prompt's user message" in message
    assert "record 2: chosen and rejected are the same text" in message
    assert "record 3: chosen is empty" in message


def test_a_tokenizer_training_every_turn_is_refused(starter_tok):
    from tuneful.masking import ConversationTokenizer

    with pytest.raises(ValueError, match="last_turn_only"):
        tokenize_pair(ConversationTokenizer(starter_tok, builtin("chatml")), PreferencePair(PROMPT, "a b", "c d"))


def test_chosen_and_rejected_go_through_one_forward_pass(ctok, starter_tok):
    pairs = [PreferencePair(PROMPT, "Blue.", "Purple and green."),
             PreferencePair((Message("user", "Say hi."),), "Hi!", "No.")]
    examples = tokenize_pairs(ctok, pairs)
    batch = collate_pairs(examples, starter_tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    model = tiny_llama(len(starter_tok)).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = sequence_logps(logits, batch["labels"])
    for row, (e, side) in enumerate([(examples[0], "chosen"), (examples[1], "chosen"),
                                     (examples[0], "rejected"), (examples[1], "rejected")]):
        ids = e.prompt_ids + getattr(e, f"{side}_ids")
        mask = [0] * len(e.prompt_ids) + getattr(e, f"{side}_mask")
        with torch.no_grad():
            alone = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(alone[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
        assert sums[row].item() == pytest.approx(expected, abs=1e-4)
        assert counts[row].item() == sum(mask)
