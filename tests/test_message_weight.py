"""``weight: 0`` on an assistant message (OpenAI's fine-tuning format): the turn stays in the context and is
never trained — read by the loader, kept through every file the data passes, honoured by the one place
that picks trained turns, and a conversation left with nothing to train is an error naming the weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_masks_literal import ids
from tuneful.cli.main import app
from tuneful.data.formats import FORMATS
from tuneful.data.types import Conversation, Message, RecordError, make_conversation
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.tokenization.preflight import preflight
from tuneful.templates.registry import builtin

RECOVERY = {"messages": [
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b", "weight": 0},  # a mistake the next turn recovers from: context only
    {"role": "user", "content": "c"},
    {"role": "assistant", "content": "d", "weight": 1},
]}


def test_the_loader_reads_weight_and_refuses_it_where_it_means_nothing():
    [conv] = FORMATS["messages"].convert(RECOVERY)
    assert [m.weight for m in conv.messages] == [None, 0, None, 1]
    assert "weight" not in conv.messages[1].to_dict()  # the template never sees it
    assert Conversation.from_json(json.loads(json.dumps(conv.to_json()))) == conv  # kept through prepared data
    for bad, rule in (({"role": "user", "content": "a", "weight": 0}, "only assistant"),
                      ({"role": "assistant", "content": "b", "weight": 0.5}, "must be 0")):
        with pytest.raises(RecordError, match=rule):
            FORMATS["messages"].convert({"messages": [{"role": "user", "content": "q"}, bad]})


def test_a_weight_zero_turn_is_rendered_but_not_trained(word_tok):
    ctok = ConversationTokenizer(word_tok, builtin("tuneful"))
    [conv] = FORMATS["messages"].convert(RECOVERY)
    ex = ctok(conv)
    assert ex.input_ids == ids(word_tok, "<|user|>", "a", "<|end|>", "<|assistant|>", "b", "<|end|>",
                               "<|user|>", "c", "<|end|>", "<|assistant|>", "d", "<|end|>")
    assert ex.train_mask == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert [t.message_index for t in ex.trained_turns] == [3]
    assert [e.train_mask for e in ex.examples] == [ex.train_mask]
    # the same through a list of dicts (how `tuneful template mask` may pass them) and in a batch
    assert ctok(RECOVERY["messages"]).train_mask == ex.train_mask
    assert ctok.tokenize_many([conv, conv])[1].train_mask == ex.train_mask
    # without the weights both replies are trained
    plain = ctok([{k: v for k, v in m.items() if k != "weight"} for m in RECOVERY["messages"]])
    assert plain.train_mask == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert plain.rendered.text == ctok(RECOVERY["messages"]).rendered.text  # the template never sees the key


def test_nothing_left_to_train_is_an_error_that_names_the_weight(word_tok):
    ctok = ConversationTokenizer(word_tok, builtin("tuneful"))
    only_context = make_conversation([Message("user", "a"), Message("assistant", "b", weight=0)])
    report = preflight(word_tok, ctok, [only_context], allow_template_change=True)
    [finding] = [f for f in report.findings if f.severity == "error"]
    assert finding.check == "all_turns_weight_zero" and "weight 1" in finding.message and not report.examples
    # the last turn only, and that one has weight 0: nothing either
    last = ConversationTokenizer(word_tok, builtin("tuneful"), last_turn_only=True)
    [conv] = FORMATS["messages"].convert({"messages": RECOVERY["messages"][:2]})
    assert "all_turns_weight_zero" in {f.check for f in preflight(word_tok, last, [conv], allow_template_change=True).findings}


def test_seq2seq_makes_no_example_of_a_weight_zero_turn():
    from tuneful.tokenization.masking import starter_tokenizer
    from tuneful.tokenization.seq2seq import Seq2SeqTokenizer, seq2seq_template

    tok = starter_tokenizer()
    [conv] = FORMATS["messages"].convert(RECOVERY)
    [only] = Seq2SeqTokenizer(tok, seq2seq_template("plain", tok)).examples(conv)
    assert only.target_ids == tok("d", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_data_convert_keeps_the_weight_and_no_longer_calls_it_ignored(tmp_path: Path):
    source = tmp_path / "w.jsonl"
    source.write_text(json.dumps(RECOVERY) + "\n")
    res = CliRunner().invoke(app, ["data", "convert", str(source), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["ignored_fields"] == {}
    written = json.loads((tmp_path / "o.jsonl").read_text())
    assert [m.get("weight") for m in written["messages"]] == [None, 0, None, 1]


def test_the_reply_a_preference_or_a_label_is_about_cannot_have_weight_zero():
    reply = {"role": "assistant", "content": "b", "weight": 0}
    with pytest.raises(RecordError, match="weight 0"):
        FORMATS["unpaired"].convert({"messages": [{"role": "user", "content": "q"}, reply], "label": True})
    with pytest.raises(RecordError, match="weight 0"):
        FORMATS["preference"].convert({"prompt": [{"role": "user", "content": "q"}], "chosen": reply,
                                       "rejected": {"role": "assistant", "content": "c"}})
