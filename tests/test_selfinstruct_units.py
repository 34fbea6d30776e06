"""Self-Instruct pieces on literal inputs: ROUGE-L decisions, parsers, filters, retries, journal."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from tuneful.selfinstruct.filters import clean_instances, instruction_problem
from tuneful.selfinstruct.loop import read_journal
from tuneful.selfinstruct.prompts import (Instance, parse_alpaca, parse_instances, parse_instructions,
                                          parse_yes_no)
from tuneful.selfinstruct.rouge import RougeFilter, f1_from_lcs, rouge_tokens
from tuneful.selfinstruct.seeds import load_seeds

from conftest import REPO, needs_fixtures
from stub_openai import completion, stub_endpoint


def test_rouge_tokens_follow_rouge_score_without_stemming():
    assert rouge_tokens("Write a Haiku -- about cats' whiskers (2 lines)!") == \
        ["write", "a", "haiku", "about", "cats", "whiskers", "2", "lines"]
    assert rouge_tokens("Ünïcode café") == ["n", "code", "caf"]


def test_f1_matches_the_hand_computed_value():
    # candidate "the cat sat" (3 tokens) vs kept "the cat sat down" (4 tokens): LCS 3
    # p = 3/4, r = 3/3, f = 2*0.75*1/(1.75) = 0.857142...
    assert f1_from_lcs(np.array([3]), np.array([4.0]), 3.0)[0] == pytest.approx(6 / 7)
    assert f1_from_lcs(np.array([0]), np.array([4.0]), 0.0)[0] == 0.0


def test_filter_keeps_novel_drops_near_duplicates_in_stream_order():
    rouge = RougeFilter()
    rouge.add(["Give three tips for staying healthy."])
    decisions = rouge.filter(["Give three tips for staying healthy today.",  # near-duplicate of the seed
                              "Name the capital city of Peru.",
                              "Name the capital city of Chile.",  # near-duplicate of the previous candidate
                              "Translate the sentence into German.", ""])
    assert decisions == [False, True, False, True, True]


def _reference_decisions(seeds: list[str], candidates: list[str]) -> list[bool]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept = [scorer._tokenizer.tokenize(s) for s in seeds]
    out = []
    for text in candidates:
        tokens = scorer._tokenizer.tokenize(text)
        keep = all(rouge_scorer._score_lcs(tokens, k).fmeasure <= 0.7 for k in kept)
        if keep:
            kept.append(tokens)
        out.append(keep)
    return out


def _synthetic_stream(n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(1)
    verbs = ["Write", "Explain", "List", "Describe", "Summarize", "Compare", "Name", "Give"]
    nouns = ["cats", "rivers", "taxes", "poems", "planets", "recipes", "markets", "bridges", "songs", "laws"]
    def make():
        return f"{rng.choice(verbs)} {rng.randint(2, 5)} {' '.join(rng.sample(nouns, rng.randint(1, 4)))} " \
               f"{rng.choice(['briefly', 'for a child', 'in detail', 'with examples', ''])}".strip()
    return [make() for _ in range(20)], [make() for _ in range(n)]


def test_same_decisions_as_rouge_score_on_a_synthetic_stream():
    seeds, candidates = _synthetic_stream(600)
    rouge = RougeFilter(block=64)
    rouge.add(seeds)
    assert rouge.filter(candidates) == _reference_decisions(seeds, candidates)


@needs_fixtures
@pytest.mark.slow
def test_same_decisions_as_rouge_score_on_1000_real_looking_instructions():
    sys.path.insert(0, str(REPO / "bench"))
    from instruction_stream import stream

    from conftest import FIXTURES

    seeds, candidates = stream(1000, fixtures=FIXTURES / "data")
    rouge = RougeFilter()
    rouge.add(seeds)
    ours = rouge.filter(candidates)
    assert ours == _reference_decisions(seeds, candidates)
    assert 0 < sum(ours) < len(ours)  # the stream exercises both outcomes


def test_list_reply_parsing_takes_the_open_item_first():
    reply = "Plan a picnic menu for six people.\n10. Explain how tides work.\n11) Rate this joke.\n12."
    assert parse_instructions(reply) == ["Plan a picnic menu for six people.", "Explain how tides work.",
                                         "Rate this joke."]


def test_instance_parsing_input_first_output_first_and_direct_answers():
    reply = "Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nInput: <none>\nOutput: zero\nTask: next task"
    assert parse_instances(reply, output_first=False) == [Instance("2 + 2", "4"), Instance("", "zero")]
    clf = "Example 1\nClass label: spam\nInput: Win a prize now!\nExample 2\nClass label: not spam\nInput: Lunch?"
    assert parse_instances(clf, output_first=True) == [Instance("Win a prize now!", "spam"),
                                                       Instance("Lunch?", "not spam")]
    assert parse_instances("Roses are red.", output_first=False) == [Instance("", "Roses are red.")]


def test_alpaca_reply_parsing():
    reply = (" Name a fruit.\n4. Input:\n<none>\n4. Output:\nApple.\n###\n5. Instruction: Add the numbers.\n"
             "5. Input:\n3 and 4\n5. Output:\n7\n###\n6. Instruction: broken")
    tasks = parse_alpaca(reply)
    assert [(t.instruction, t.instances[0]) for t in tasks] == [("Name a fruit.", Instance("", "Apple.")),
                                                                ("Add the numbers.", Instance("3 and 4", "7"))]


def test_yes_no():
    assert parse_yes_no(" Yes.") and parse_yes_no("y") and not parse_yes_no("No") and not parse_yes_no("")


@pytest.mark.parametrize("text,reason", [
    ("Do it now", "too_short"),
    (" ".join(["word"] * 151), "too_long"),
    ("Draw a picture of a horse for me", "blacklisted_word:draw"),
    ("Describe the map of the old town please", "blacklisted_word:map"),
    ("Please go to the shop and buy milk", "blacklisted_word:go to"),
    ("Écris un poème sur la mer", "starts_non_ascii"),
    ("- List five animals that hibernate", "starts_with_punctuation"),
    ("Write a program that sorts numbers fast", "write_a_program"),
    ("Explain why leaves change colour in autumn", None),
    ("Summarize the mapping between the two tables", None),  # 'mapping' is not 'map'
])
def test_instruction_filters(text: str, reason):
    assert instruction_problem(text) == reason


def test_instance_filters_count_every_drop():
    kept, reasons = clean_instances([
        Instance("a", "a"), Instance("", ""), Instance("x", "Here it is:"), Instance("q", "1"), Instance("q", "2"),
        Instance("k1", "v"), Instance("k1", "v"), Instance("k2", "v"), Instance("k3", "v"), Instance("k4", "v"),
        Instance("k5", "v"), Instance("k6", "v")])
    assert [i.input for i in kept] == ["k1", "k2", "k3", "k4", "k5"]
    assert reasons == {"input_equals_output": 1, "empty_output": 1, "output_ends_with_colon": 1,
                       "same_input_different_outputs": 2, "duplicate_instance": 1, "over_max_instances": 1}


def test_journal_drops_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps({"round": 0, "accepted": [], "rejected": []}) + "\n" + '{"round": 1, "acc')
    assert [r["round"] for r in read_journal(path)] == [0]
    assert path.read_text().endswith("\n") and '"round": 1' not in path.read_text()


def test_builtin_seeds_and_bad_seed_lines(tmp_path: Path):
    seeds = load_seeds()
    assert len(seeds) >= 20 and any(t.is_classification for t in seeds) and all(t.instances for t in seeds)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "ok", "instances": []}\n{"instances": []}\nnot json\n')
    with pytest.raises(ValueError, match=r"2 bad seed line\(s\)[\s\S]*seeds.jsonl:2[\s\S]*seeds.jsonl:3"):
        load_seeds(str(bad))


@needs_fixtures
def test_reads_self_instructs_own_seed_file():
    from conftest import FIXTURES

    seeds = load_seeds(str(FIXTURES / "data" / "self_instruct" / "seed_tasks.jsonl"))
    assert len(seeds) == 175 and sum(t.is_classification for t in seeds) > 0


@pytest.mark.parametrize("script,expected,retries,failed", [
    ([429, 503], "fine", 2, 0),  # retried with backoff, then answered
    ([500, 500, 500, 500], None, 3, 1),  # retries are bounded (max_retries=3 → 4 attempts)
    ([400], None, 0, 1),  # a bad request is not retried
])
def test_endpoint_teacher_retries_only_transient_errors_and_counts_them(script, expected, retries, failed):
    from tuneful.selfinstruct.teacher import EndpointSettings, EndpointTeacher

    statuses = list(script)

    def scripted(body, headers):  # fails as scripted, then answers
        status = statuses.pop(0) if statuses else 200
        return status, completion("fine") if status == 200 else {"error": {"message": f"status {status}"}}

    waits: list[float] = []
    with stub_endpoint(scripted) as url:
        teacher = EndpointTeacher(EndpointSettings("m", url, max_retries=3, backoff_s=1.0, concurrency=1),
                                  sleep=waits.append)
        try:
            [reply] = teacher.complete([[{"role": "user", "content": "hi"}]], max_tokens=4, temperature=0.0)
        finally:
            teacher.close()
    assert reply == expected
    assert teacher.stats.retries == retries and teacher.stats.failed == failed
    assert len(waits) == retries and all(0.5 * 2 ** k <= w <= 2 ** k for k, w in enumerate(waits))


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_key_or_model_stops_the_run_by_name(status):
    """Every call of a teacher that refuses the key fails the same way: the run stops at the first, naming the fix
    (it used to skip every request and exit 0)."""
    from tuneful.selfinstruct.teacher import EndpointSettings, EndpointTeacher, TeacherRefused

    with stub_endpoint(lambda body, headers: (status, {"error": {"message": "Incorrect API key provided"}})) as url:
        teacher = EndpointTeacher(EndpointSettings("m", url, api_key_env="TUNEFUL_TEST_TEACHER_KEY", concurrency=2),
                                  sleep=lambda s: None)
        try:
            with pytest.raises(TeacherRefused, match=r"refused the request: .*TUNEFUL_TEST_TEACHER_KEY"):
                teacher.complete([[{"role": "user", "content": "hi"}]] * 4, max_tokens=4, temperature=0.0)
        finally:
            teacher.close()
    assert teacher.stats.retries == 0
