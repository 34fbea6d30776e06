"""IFEval checks on literal responses: each instruction type has a response that passes and one that fails."""

from __future__ import annotations

import json

import pytest

from tuneful.eval.ifeval import CHECKS, check_record, count_sentences, summarize

from conftest import FIXTURES, needs_fixtures

CASES = [
    ("punctuation:no_comma", {}, "No commas here at all.", "One, two."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Intro *first part* and **second part**.", "Only *one* highlight."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5},
     "one two three four five", "one two three four"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5},
     "one two three four", "one two three four five"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], I live at [address].", "Dear [name], hello."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi twice."},
     "Say hi twice. Hi hi.", "Hi hi. Say hi twice."),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Body text.\n\nP.S. Do not forget.", "Body text without a note."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Body.\nP.P.S see you", "Body.\nP.S. see you"),
    ("detectable_format:constrained_response", {}, "My answer is no.", "No way."),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', '{"a": [1, 2}'),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nAlpha.\nSection 2\nBeta.", "Section 1\nAlpha only."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* apples\n* pears", "* apples\n* pears\n- plums"),
    ("detectable_format:title", {}, "<<A Fine Title>>\nText.", "<<>> no title\nText."),
    ("keywords:existence", {"keywords": ["river", "stone"]}, "A stone by the river.", "A stone by the lake."),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A badge is fine.", "That is bad."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "Cat and cat.", "A cat and a catalogue."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "less than"},
     "zig zag", "zig zag zoo"),
    ("language:response_language", {"language": "de"},
     "Das ist ein kurzer Satz auf Deutsch, und er ist ganz einfach zu verstehen.",
     "This is a short sentence in English, and it is easy to understand."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First comes this.\n\nThen, that.", "First comes this.\n\nAfter that, more."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Para one.\n***\nPara two.",
     "Para one.\n***\n\n***\nPara two."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith came. He left.", "One. Two. Three."),
    ("change_case:english_lowercase", {}, "this whole answer is written in lower case letters only.",
     "This answer starts with a capital letter."),
    ("change_case:english_capital", {}, "THIS WHOLE ANSWER IS WRITTEN IN CAPITAL LETTERS ONLY.",
     "THIS ANSWER has some lower case."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The NASA and ESA teams met.", "The NASA team met."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?",
     "Any other questions? Done."),
    ("startend:quotation", {}, '"All of it quoted."', 'Half "quoted."'),
]


@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_check_passes_and_fails(instruction: str, kwargs: dict, good: str, bad: str) -> None:
    check = CHECKS[instruction]
    assert check(good, kwargs) is True
    assert check(bad, kwargs) is False


def test_every_instruction_type_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(CHECKS)


def test_sentence_counter_ignores_abbreviations_and_decimals() -> None:
    assert count_sentences("Dr. Who paid 3.5 dollars. Then he left! Did he?") == 3


def test_loose_forgives_a_preamble_strict_does_not() -> None:
    record = {"prompt": "p", "instruction_id_list": ["startend:quotation", "punctuation:no_comma"], "kwargs": [{}, {}]}
    result = check_record(record, 'Sure here it is:\n"Quoted answer."')
    assert result.strict == (False, True) and result.loose == (True, True)
    summary = summarize([result, check_record(record, '"Fine answer."')])
    assert summary["prompt_strict"] == 0.5 and summary["prompt_loose"] == 1.0
    assert summary["instruction_strict"] == 0.75 and summary["instruction_loose"] == 1.0


def test_empty_answer_follows_nothing_and_unknown_types_are_reported() -> None:
    record = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma", "made:up"], "kwargs": [{}, {}]}
    result = check_record(record, "")
    assert result.strict == (False,) and result.loose == (False,)
    assert summarize([result])["unsupported_instructions"] == ["made:up"]


@needs_fixtures
def test_every_instruction_in_the_real_ifeval_set_is_checkable() -> None:
    records = [json.loads(line) for line in (FIXTURES / "data" / "ifeval" / "input_data.jsonl").open()]
    assert len(records) == 541
    results = [check_record(r, "A plain short answer, with a comma.") for r in records]
    assert not any(r.unsupported for r in results)
    summary = summarize(results)
    assert summary["prompts"] == 541 and summary["unsupported_instructions"] == []
    # A comma-free, lower-case English answer fails no_comma nowhere and satisfies the lower-case type.
    lower = [check_record(r, "a plain short answer written in lower case english words") for r in records]
    by_type = summarize(lower)["by_instruction_strict"]
    assert by_type["punctuation:no_comma"] == 1.0 and by_type["change_case:english_lowercase"] == 1.0
