"""Format conversion, validation and detection on literal records."""

from __future__ import annotations

import pytest

from tuneful.data.formats import FORMATS, ConvertOptions, detect_format, parse_hh_transcript
from tuneful.data.types import Conversation, Message, PreferencePair, RecordError, make_conversation

OPTS = ConvertOptions()


def convert(record: dict, name: str | None = None):
    fmt = FORMATS[name] if name else detect_format(record)
    return fmt.name, fmt.convert(record, OPTS)


def roles(item: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in item.messages]


def test_alpaca_with_and_without_input():
    name, [c] = convert({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert name == "alpaca" and roles(c) == [("user", "Add.\n\n2 and 3"), ("assistant", "5")]
    _, [c] = convert({"instruction": "Say hi.", "input": "", "output": "Hi"})
    assert roles(c) == [("user", "Say hi."), ("assistant", "Hi")]


def test_alpaca_system_and_history():
    _, [c] = convert({"instruction": "q2", "output": "a2", "system": "be brief", "history": [["q1", "a1"]]})
    assert roles(c) == [("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]


def test_dolly():
    name, [c] = convert({"instruction": "Who?", "context": "Ann met Bo.", "response": "Ann", "category": "qa"})
    assert name == "dolly" and roles(c) == [("user", "Who?\n\nAnn met Bo."), ("assistant", "Ann")]
    assert c.meta == {"category": "qa"}


def test_sharegpt_roles_and_system_field():
    rec = {"system": "sys", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    name, [c] = convert(rec)
    assert name == "sharegpt" and roles(c) == [("system", "sys"), ("user", "hi"), ("assistant", "yo")]


def test_sharegpt_unsupported_role_is_a_named_error():
    rec = {"conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "{}"}]}
    with pytest.raises(RecordError) as err:
        convert(rec)
    assert err.value.rule == "unsupported_role"


def test_openai_messages_with_text_parts():
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}
    name, [c] = convert(rec)
    assert name == "messages" and roles(c) == [("user", "ab"), ("assistant", "c")]


def test_lima_alternating_strings():
    name, [c] = convert({"conversations": ["q1", "a1", "q2", "a2"], "source": "stackexchange"})
    assert name == "lima" and [m.role for m in c.messages] == ["user", "assistant", "user", "assistant"]


def test_self_instruct_one_conversation_per_instance():
    rec = {"id": "t1", "instruction": "Classify.", "instances": [{"input": "x", "output": "A"}, {"input": "", "output": "B"}],
           "is_classification": True}
    name, items = convert(rec)
    assert name == "self_instruct" and [roles(i) for i in items] == [
        [("user", "Classify.\n\nx"), ("assistant", "A")], [("user", "Classify."), ("assistant", "B")]]


def _tree():
    leaf = lambda mid, text, rank: {"message_id": mid, "text": text, "role": "assistant", "rank": rank, "replies": []}
    follow = {"message_id": "p2", "role": "prompter", "text": "more?", "replies": [leaf("a3", "yes", 0)]}
    a1 = {"message_id": "a1", "text": "first", "role": "assistant", "rank": 1, "replies": [follow]}
    a2 = leaf("a2", "second", 0)
    deleted = {**leaf("a4", "gone", 2), "deleted": True}
    return {"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "q", "replies": [a1, a2, deleted]}}


def test_oasst_all_paths_and_top_path():
    fmt = detect_format(_tree())
    assert fmt.name == "oasst"
    all_paths = fmt.convert(_tree(), ConvertOptions(oasst_paths="all"))
    assert [roles(c) for c in all_paths] == [
        [("user", "q"), ("assistant", "first"), ("user", "more?"), ("assistant", "yes")],
        [("user", "q"), ("assistant", "second")],
    ]
    top = fmt.convert(_tree(), ConvertOptions(oasst_paths="top"))
    assert [roles(c) for c in top] == [[("user", "q"), ("assistant", "second")]]


def test_preference_strings_and_message_lists_without_duplicated_prompt():
    name, [p] = convert({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert name == "preference" and p == PreferencePair((Message("user", "2+2?"),), "4", "5")
    # chosen/rejected repeating the whole conversation (UltraFeedback style): the prompt is removed
    rec = {"prompt": "2+2?",
           "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
           "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    _, [p] = convert(rec)
    assert p.chosen.content == "4" and p.rejected.content == "5" and len(p.prompt) == 1


def test_preference_whose_chosen_repeats_another_prompt_is_rejected():
    rec = {"prompt": "2+2?", "chosen": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}],
           "rejected": "5"}
    with pytest.raises(RecordError) as err:
        convert(rec)
    assert err.value.rule == "prompt_mismatch"


def test_hh_rlhf_transcripts():
    rec = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: five"}
    name, [p] = convert(rec)
    assert name == "hh_rlhf"
    assert [(m.role, m.content) for m in p.prompt] == [("user", "hi"), ("assistant", "hello"), ("user", "2+2?")]
    assert (p.chosen.content, p.rejected.content) == ("4", "five")
    with pytest.raises(RecordError):
        parse_hh_transcript("no markers here")


def test_sharegpt_preference():
    rec = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
           "rejected": {"from": "gpt", "value": "bad"}}
    name, [p] = convert(rec)
    assert name == "sharegpt_preference" and (p.chosen.content, p.rejected.content) == ("good", "bad")


@pytest.mark.parametrize(
    "messages, rule",
    [
        ([], "empty_conversation"),
        ([Message("user", "q")], "no_assistant_turn"),
        ([Message("user", "q"), Message("system", "s"), Message("assistant", "a")], "system_not_first"),
        ([Message("user", "q"), Message("assistant", "  ")], "empty_assistant"),
    ],
)
def test_validation_rules(messages, rule):
    with pytest.raises(RecordError) as err:
        make_conversation(messages)
    assert err.value.rule == rule


def test_empty_assistant_allowed_when_asked():
    conv = make_conversation([Message("user", "q"), Message("assistant", "")], allow_empty_assistant=True)
    assert conv.messages[-1].content == ""


def test_unknown_role_and_non_string_content():
    with pytest.raises(RecordError, match="unknown_role"):
        convert({"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(RecordError, match="content_not_string"):
        convert({"instruction": "q", "output": 5})


def test_ambiguous_record_names_fields_and_the_choice():
    rec = {"instruction": "q", "output": "a", "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(RecordError) as err:
        detect_format(rec)
    assert err.value.rule == "ambiguous_format"
    assert "alpaca" in str(err.value) and "messages" in str(err.value) and "--format" in str(err.value)


def test_unknown_record_lists_known_formats():
    with pytest.raises(RecordError) as err:
        detect_format({"question": "q", "answer": "a"})
    assert err.value.rule == "unknown_format" and "answer, question" in str(err.value)
