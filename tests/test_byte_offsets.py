"""Token offsets computed from token lengths (tuneful.tokenization.offsets) against the Rust tokenizer's own.

On every fixture tokenizer: where the computation is used, every text's offsets equal the Rust ones and
the tokenized conversations (ids, masks, offsets, merges) equal those built with it switched off; where it
is not used, the reason is named. Then the refusals, literally.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import FROZEN_NOW, needs_fixtures
from test_masks_real_tokenizers import FAMILIES
from tuneful.data.loader import load
from tuneful.templates.registry import resolve
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.tokenization.offsets import ByteLevelOffsets, byte_level_reason

NOT_BYTE_LEVEL = {"llama-2": "no ByteLevel", "mistral-v1": "no ByteLevel", "mistral-v3": "no ByteLevel",
                  "phi-3": "no ByteLevel"}


def _conversations(fixtures) -> list:
    sharegpt = load(str(fixtures / "data" / "sharegpt" / "dummy_conversation.json")).conversations[:60]
    own = [c["messages"] for c in json.loads((fixtures / "chat_templates" / "conversations.json").read_text())]
    return own + [c.to_dicts() for c in sharegpt]


@needs_fixtures
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_computed_offsets_equal_the_tokenizers_own(family: str, fixtures):
    template_name, _ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / family)
    template = resolve(template_name, tok, family)
    computing = ConversationTokenizer(tok, template, now=FROZEN_NOW)
    computing.byte_offsets.verify_first = 10**9  # compare every computed text with the Rust offsets
    reading = ConversationTokenizer(tok, template, now=FROZEN_NOW)
    reading.byte_offsets.why_not = "switched off by the test"
    if family in NOT_BYTE_LEVEL:
        assert NOT_BYTE_LEVEL[family] in computing.byte_offsets.why_not
    else:
        assert computing.byte_offsets.enabled, computing.byte_offsets.why_not
    compared = 0
    conversations = _conversations(fixtures)
    for messages, got in zip(conversations, computing.tokenize_many(conversations)):  # batched: offsets computed
        try:
            expected = reading(messages)
        except Exception:  # the template refuses the conversation (e.g. roles must alternate)
            assert isinstance(got, Exception)
            continue
        assert got.input_ids == expected.input_ids and got.train_mask == expected.train_mask, family
        assert np.array_equal(got.offsets, expected.offsets) and got.boundary_merges == expected.boundary_merges, family
        assert [e.train_mask for e in got.examples] == [e.train_mask for e in expected.examples], family
        compared += 1
    assert compared >= 40
    counts = computing.byte_offsets.counts
    if family in NOT_BYTE_LEVEL:
        assert counts["computed"] == 0
    else:  # every computed text was checked and none differed (a difference switches it off)
        assert computing.byte_offsets.enabled, computing.byte_offsets.why_not
        assert counts["computed"] >= 40 and counts["checked"] == counts["computed"], counts


def _byte_level_tokenizer(trim_offsets: bool = False) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE: every byte a token, plus "ab", an added "<|end|>" and an added non-ASCII "<｜bos｜>"."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["ab"] = len(vocab)
    core = Tokenizer(models.BPE(vocab, [("a", "b")]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"eos_token": "<|end|>", "bos_token": "<｜bos｜>"})
    return tok


def test_offsets_from_lengths_literal():
    tok = _byte_level_tokenizer()
    offsets = ByteLevelOffsets(tok.backend_tokenizer)
    text = "ab a<|end|>"
    ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.convert_ids_to_tokens(ids) == ["ab", "Ġ", "a", "<|end|>"]
    assert offsets.offsets(text, ids).tolist() == [[0, 2], [2, 3], [3, 4], [4, 11]]
    assert offsets.offsets("é ab", tok.backend_tokenizer.encode("é ab").ids) is None  # not ASCII: the Rust offsets
    assert offsets.offsets("ab", ids) is None  # lengths that do not add up to the text
    wide = "<｜bos｜>ab"  # non-ASCII only inside an added token: its characters are its length
    assert offsets.offsets(wide, tok.backend_tokenizer.encode(wide, add_special_tokens=False).ids).tolist() == [[0, 7], [7, 9]]
    assert offsets.offsets(wide + "é", tok.backend_tokenizer.encode(wide + "é", add_special_tokens=False).ids) is None
    assert offsets.counts == {"computed": 2, "rust": 3, "checked": 0}
    end_id = tok.convert_tokens_to_ids("<|end|>")
    assert ByteLevelOffsets(tok.backend_tokenizer, not_tiling=[end_id]).offsets(text, ids) is None


def test_refused_where_offsets_are_not_token_lengths():
    assert byte_level_reason(_byte_level_tokenizer(trim_offsets=True).backend_tokenizer) == "the post-processor trims offsets"
    lowered = _byte_level_tokenizer().backend_tokenizer
    from tokenizers import normalizers

    lowered.normalizer = normalizers.Lowercase()
    assert byte_level_reason(lowered) == "normalizer Lowercase may change ASCII text"
    lowered.normalizer = normalizers.NFC()
    assert byte_level_reason(lowered) == ""


def test_a_difference_switches_it_off_for_good(caplog):
    tok = _byte_level_tokenizer()
    offsets = ByteLevelOffsets(tok.backend_tokenizer)
    good = np.array([[0, 2], [2, 3]])
    assert offsets.check(good, good.copy())
    with caplog.at_level(logging.WARNING, logger="tuneful.tokenization.offsets"):
        assert not offsets.check(good, np.array([[0, 2], [3, 3]]))
    assert "differed" in caplog.text and not offsets.enabled
    ids = tok.backend_tokenizer.encode("ab", add_special_tokens=False).ids
    assert offsets.offsets("ab", ids) is None and offsets.counts["checked"] == 2


def test_checked_first_then_every_nth():
    offsets = ByteLevelOffsets(_byte_level_tokenizer().backend_tokenizer, verify_first=3, check_every=5)
    assert [offsets.wants_check() for _ in range(12)] == [True, True, True, False, True, False, False, False, False,
                                                            True, False, False]
