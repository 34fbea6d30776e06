"""Preference pairs: one shared prompt, response-only masks, loud errors, one forward pass for both sides."""

from __future__ import annotations

import pytest
import torch

from tuneful.data.types import Message, PreferencePair
from tuneful.preference.pairs import (COLLATORS, PreferenceDataError, PreferenceExample, collate_shared_prompt,
                              preference_tokenizer, tokenize_pair, tokenize_pairs)
from tuneful.preference.reference import ResponseLogps
from tuneful.tokenization.masking import special_tokens_of
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
    from tuneful.tokenization.masking import ConversationTokenizer

    with pytest.raises(ValueError, match="last_turn_only"):
        tokenize_pair(ConversationTokenizer(starter_tok, builtin("chatml")), PreferencePair(PROMPT, "a b", "c d"))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", sorted(COLLATORS))
def test_each_reply_scores_as_if_it_ran_alone(ctok, starter_tok, layout: str, attention: str):
    """Both layouts, both attention kernels: every reply's log-prob sum equals running prompt+reply alone.

    With a shared prompt a leak from chosen into rejected (or a wrong position or predicting state)
    would change the rejected sums; with eager attention a boolean mask added to the scores would.
    """
    pairs = [PreferencePair(PROMPT, "Blue.", "Purple and green."),
             PreferencePair((Message("user", "Say hi."),), "Hi!", "No, I will not be saying that today.")]
    examples = tokenize_pairs(ctok, pairs)
    batch = COLLATORS[layout](examples, starter_tok.pad_token_id)
    assert batch.input_ids.shape[0] == (2 if layout == "shared-prompt" else 4)
    assert batch.tokens == sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    model = tiny_llama(len(starter_tok)).eval()
    model.config._attn_implementation = attention
    with torch.no_grad():
        sums, counts = ResponseLogps(model)(**batch.inputs())
    for score, (e, side) in enumerate([(examples[0], "chosen"), (examples[1], "chosen"),
                                       (examples[0], "rejected"), (examples[1], "rejected")]):
        ids = e.prompt_ids + getattr(e, f"{side}_ids")
        mask = [0] * len(e.prompt_ids) + getattr(e, f"{side}_mask")
        with torch.no_grad():
            alone = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(alone[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
        assert sums[score].item() == pytest.approx(expected, abs=1e-4)
        assert counts[score].item() == sum(mask)


def test_shared_prompt_mask_keeps_the_replies_apart():
    """Literal check of one pair's row: prompt [5, 6], chosen [7, 8], rejected [9]."""
    e = PreferenceExample([5, 6], [7, 8], [1, 1], [9], [1])
    batch = collate_shared_prompt([e], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2]]  # rejected continues from the prompt
    assert batch.attention_mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                                         [1, 1, 0, 0, 0],
                                                         [1, 1, 1, 0, 0],
                                                         [1, 1, 1, 1, 0],
                                                         [1, 1, 0, 0, 1]]  # rejected never sees chosen
    # chosen 7 from position 1, chosen 8 from 2; rejected 9 from the last prompt position (1)
    assert batch.sources.tolist() == [1, 2, 1]
    assert batch.targets.tolist() == [7, 8, 9]
    assert batch.scores.tolist() == [0, 0, 1]
    assert (batch.tokens, batch.computed) == (2 * 2 + 2 + 1, 5)
