"""``tuneful demo --self-instruct``: the teacher's three prompts, the seeds, family attribution, the statistics,
what the curation sees, and the quick run's contract."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneful.sandbox.selfinstruct import (SelfInstructSettings, classification_example, copied_errors, family_of,
                                          instance_example, list_example, pearson, seed_tasks,
                                          stderr_points)
from tuneful.sandbox.tasks import (FAMILIES, HELDOUT_FAMILIES, SINGLE_TURN_TRAINING_FAMILIES, heldout_phrasings,
                                   sft_instances)
from tuneful.sandbox.world import make_world
from tuneful.selfinstruct.prompts import parse_instances, parse_instructions, parse_yes_no

WORLD = make_world(0, 120)


def test_the_teachers_examples_parse_back_with_the_generators_own_parsers():
    """The teacher learns replies in exactly the shape `tuneful generate` parses: a list continued from item 9, a
    Yes/No, an instance with no input (label first for a classification task)."""
    rng, families = random.Random(3), SINGLE_TURN_TRAINING_FAMILIES
    for _ in range(50):
        record = list_example(rng, WORLD, families)
        assert record["messages"][0]["content"].endswith("\n9.")
        items = parse_instructions(record["messages"][-1]["content"])
        assert len(items) == 3 and all(family_of(i) != "other" for i in items)
        record = classification_example(rng, WORLD, families)
        asked = record["messages"][0]["content"].rsplit("Task: ", 1)[1].removesuffix("\nClassification task:")
        expected = FAMILIES[[f.name for f in FAMILIES].index(family_of(asked))].kind == "classification"
        assert parse_yes_no(record["messages"][-1]["content"]) == expected
        record = instance_example(rng, WORLD, families)
        asked = record["messages"][0]["content"].rsplit("Task: ", 1)[1].strip()
        clf = FAMILIES[[f.name for f in FAMILIES].index(family_of(asked))].kind == "classification"
        [instance] = parse_instances(record["messages"][-1]["content"], output_first=clf)
        assert instance.input == "" and instance.output and "Output" not in instance.output


def test_the_teacher_and_the_seeds_never_hold_a_held_out_family_or_phrasing():
    import re

    from tuneful.sandbox.selfinstruct import _pattern

    held = [_pattern(f.phrasings[k]) for f in SINGLE_TURN_TRAINING_FAMILIES for k in heldout_phrasings(f)]
    rng, families = random.Random(5), SINGLE_TURN_TRAINING_FAMILIES
    requests = [s["instruction"] for s in seed_tasks(WORLD, SelfInstructSettings(), 0)[0]]
    for _ in range(200):
        record = list_example(rng, WORLD, families)
        listed = record["messages"][0]["content"].split("\n\n", 1)[1]
        requests += re.findall(r"^\d+\. (.+)$", listed, flags=re.M)
        requests += parse_instructions(record["messages"][-1]["content"])
    assert len(requests) > 2000
    assert not [r for r in requests if any(p.fullmatch(r) for p in held)]
    assert not any(family_of(r) in HELDOUT_FAMILIES for r in requests)


def test_seed_tasks_are_175_distinct_training_phrasings_of_12_families(tmp_path: Path):
    from tuneful.selfinstruct.seeds import load_seeds

    seeds, families = seed_tasks(WORLD, SelfInstructSettings(), 1)
    assert len(seeds) == 175 and len({s["instruction"] for s in seeds}) == 175 and len(families) == 12
    assert {family_of(s["instruction"]) for s in seeds} == set(families)
    assert sum(s["is_classification"] for s in seeds) == sum(
        family_of(s["instruction"]) in ("animal_or_colour", "region_options") for s in seeds)
    assert seed_tasks(WORLD, SelfInstructSettings(), 2)[1] != families  # each seed draws its own families
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in seeds))
    assert len(load_seeds(str(path))) == 175  # the format `tuneful generate --seeds` reads


def test_family_of_names_every_single_turn_request_and_nothing_else():
    rng = random.Random(0)
    for family in SINGLE_TURN_TRAINING_FAMILIES:
        for phrasing in range(len(family.phrasings)):
            for _ in range(3):
                assert family_of(family.instance(rng, WORLD, phrasing).messages[-1]["content"]) == family.name
    augmented = [i for i in sft_instances(WORLD, 40, 0) if i.family in {f.name for f in SINGLE_TURN_TRAINING_FAMILIES}]
    right = sum(family_of(i.messages[-1]["content"]) == i.family for i in augmented)
    assert right / len(augmented) > 0.97  # greetings, closings, a dropped word (9 of 680 missed when written)
    assert family_of("Summarise the plot of a film you like.") == "other"
    assert family_of("Where is it?") == "clarify" and family_of("Where is Dovaiia?") == "region"


def test_fact_answers_of_generated_records_are_checked_against_the_world():
    from tuneful.sandbox.selfinstruct import fact_answer_accuracy

    land = WORLD[0]
    other = next(c for c in WORLD if c.capital != land.capital and c.region != land.region)

    def record(request: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}],
                "meta": {"source": "self-instruct", "is_classification": False}}

    records = [record(f"What is the capital of {land.name}?", f"The capital of {land.name} is {land.capital}."),
               record(f"Capital of {land.name}?", f"The capital of {land.name} is {other.capital}."),
               record(f"In which region is {land.name}?", f"{land.name} lies in the {land.region}."),
               record(f"Where is {land.name}?", f"The capital of {land.name} is {land.capital}."),  # another family's
               record("What is the capital of Nowhereland?", "The capital of Nowhereland is X."),  # not in the world
               record("Reverse this list: a, b, c", "c, b, a")]
    counts = fact_answer_accuracy(records, WORLD)
    assert counts["capital"] == {"checked": 2, "correct": 1} and counts["region"] == {"checked": 2, "correct": 1}
    assert counts["colour"] == counts["animal"] == counts["population"] == {"checked": 0, "correct": 0}


def test_statistics_on_literal_numbers():
    assert pearson([0.1, 0.5, 0.9], [0.2, 0.6, 1.0]) == pytest.approx(1.0)
    assert pearson([0.1, 0.5, 0.9], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert pearson([0.5, 0.5], [0.1, 0.9]) is None
    assert stderr_points(0.5, 1100) == pytest.approx(100 * (0.25 / 1100) ** 0.5)
    teacher = [{"family": "a", "correct": False, "answer": "X"}, {"family": "a", "correct": False, "answer": "Y"},
               {"family": "b", "correct": True, "answer": "Z"}]
    student = [{"family": "a", "correct": False, "answer": " X"}, {"family": "a", "correct": True, "answer": "Y"},
               {"family": "b", "correct": False, "answer": "Z"}]
    assert copied_errors(teacher, student) == {"a": 0.5}


def test_the_generator_cannot_read_the_sandbox_answer_key():
    """`tuneful generate` is the public loop: like the curation, it must not import the sandbox or its verifiers."""
    import ast

    import tuneful.selfinstruct

    for source in Path(tuneful.selfinstruct.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("sandbox" in n or "verif" in n for n in names), (source.name, names)


@pytest.mark.slow
def test_self_instruct_quick_contract(tmp_path: Path):
    """The contract keys, every student on the same steps, and what the curation was given: the generated records
    with Self-Instruct's own meta only — no family, check or noise label."""
    from typer.testing import CliRunner

    from tuneful.cli.main import app
    from tuneful.sandbox.selfinstruct import ARMS, STUDENTS

    res = CliRunner().invoke(app, ["demo", "--self-instruct", "--quick", "--seed", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "selfinstruct.json").read_text())
    assert set(report["arms"]) == set(ARMS)
    for arm in report["arms"].values():
        assert {"heldout_phrasing_accuracy", "heldout_family_accuracy", "by_family"} <= set(arm)
        assert set(arm["by_family"]) == {f.name for f in FAMILIES}
    assert {"inherited_correlation", "generated_kept", "filtered_by_reason", "seconds", "stderr_points"} <= set(report)
    assert report["generated_kept"] == 40 and set(report["stderr_points"]) == set(ARMS)
    assert {report["arms"][s]["steps"] for s in STUDENTS} == {10}
    generated = report["generated_instances"]
    assert [report["arms"][s]["records"] for s in STUDENTS] == [generated, generated, 20, 20]
    pool = [json.loads(line) for line in (tmp_path / "data" / "generated.jsonl").read_text().splitlines()]
    assert len(pool) == generated
    assert all(set(r) == {"messages", "meta"} and set(r["meta"]) == {"source", "is_classification"} for r in pool)
    assert sum(report["generated_families"].values()) == generated
    checked = sum(v["checked"] for v in report["generated_fact_accuracy"].values())
    assert report["arms"]["generated"]["fact_answers_checked"] == checked
    assert all(0 <= report["arms"][s]["fact_answers_right"] <= report["arms"][s]["fact_answers_checked"]
               for s in STUDENTS)
    assert "| held-out phrasings |" in (tmp_path / "selfinstruct.md").read_text()
    assert (tmp_path / "selfinstruct.png").stat().st_size > 100
    assert set(json.loads(res.output.strip().splitlines()[-1])["arms"]) == set(ARMS)
