"""Task mixtures: allocation arithmetic on literals, templates for labelled data (zero/few-shot, CoT,
options), the ``tuneful data mix`` contract, and trainers reading ``data.train`` as weighted sources."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from tiny import save_tiny_model, write_data, write_pairs
from tuneful.config import ConfigError, build
from tuneful.data.mix_recipe import MixRecipe, RecipeError, SourceSpec, TaskTemplate, recipe_from_dict
from tuneful.data.mixture import largest_remainder, load_training, mix, source_counts, take, task_counts
from tuneful.data.types import RecordError

FIXTURES = Path(os.environ.get("TUNEFUL_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def labelled(path: Path, n: int = 30, rationale: bool = True) -> Path:
    rows = []
    for i in range(n):
        row = {"task": "parity" if i % 3 else "size", "text": f"number {i}", "label": "odd" if i % 2 else "even",
               "options": ["odd", "even"], "id": i}
        if rationale and i % 2:
            row["why"] = f"{i} leaves 1 when halved."
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chats(path: Path, n: int, tag: str) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{tag} {i}?"},
                                                     {"role": "assistant", "content": f"{tag} answer {i}."}]}) + "\n"
                            for i in range(n)))
    return path


# --- allocation ---------------------------------------------------------------------------------------


def test_largest_remainder_adds_up_and_is_proportional():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert largest_remainder(7, [3, 1]) == [5, 2]
    assert largest_remainder(0, [1, 2]) == [0, 0]
    assert sum(largest_remainder(1001, [0.3, 0.2, 0.5, 0.01])) == 1001


def test_counts_are_exact_and_weights_share_the_rest():
    recipe = MixRecipe(sources=[SourceSpec(path="a", weight=3.0), SourceSpec(path="b", weight=1.0),
                                SourceSpec(path="c", count=5)], total=45)
    assert source_counts(recipe, [100, 100, 2]) == [30, 10, 5]
    recipe.total = None  # default: the weighted sources' records, re-balanced
    assert source_counts(recipe, [10, 30, 2]) == [30, 10, 5]
    recipe.total = 3
    with pytest.raises(RecipeError, match="less than the sources' counts"):
        source_counts(recipe, [1, 1, 1])


def test_examples_proportional_mixing_with_cap_and_temperature():
    sizes = {"big": 9000, "mid": 1000, "small": 100}
    assert task_counts(1010, sizes, None, 1.0) == {"big": 900, "mid": 100, "small": 10}
    # FLAN's cap: a task counts as at most `cap` examples when the shares are set
    assert task_counts(2100, sizes, 1000, 1.0) == {"big": 1000, "mid": 1000, "small": 100}
    # temperature 2 takes square roots of the sizes: 9000, 1000, 100 -> ~94.9, ~31.6, 10
    flat = task_counts(1365, sizes, None, 2.0)
    assert flat["big"] == pytest.approx(1365 * 94.87 / 136.49, abs=1) and flat["small"] == pytest.approx(100, abs=1)
    assert task_counts(4, sizes, None, 1.0, task_weight=lambda t: 90.0 if t == "small" else 1.0)["small"] == 2


def test_take_repeats_whole_passes_before_sampling():
    rng = random.Random(0)
    picked = take(list(range(5)), 12, rng)
    assert len(picked) == 12 and Counter(picked[:10]) == Counter(list(range(5)) * 2)
    assert len(set(take(list(range(10)), 4, rng))) == 4


# --- templates -------------------------------------------------------------------------------------


def test_labelled_records_through_templates(tmp_path: Path):
    path = labelled(tmp_path / "tasks.jsonl")
    recipe = recipe_from_dict({
        "seed": 1, "template_types": {"zero_shot": 1, "few_shot": 1, "cot": 1}, "shots": 3,
        "sources": [{"path": str(path), "count": 60, "task_field": "task", "options_field": "options",
                     "options_rate": 0.5, "rationale_field": "why",
                     "templates": [{"input": "Is {text} odd or even?", "target": "{label}"},
                                   {"input": "{{ text | upper }}: parity?", "target": "It is {{ label }}."}]}]})
    result = mix(recipe)
    assert result.report["written"] == 60 and result.report["sources"][str(path)]["repeated"] == 30
    kinds = Counter(c.meta["template_type"] for c in result.items)
    assert set(kinds) == {"zero_shot", "few_shot", "cot"}
    for conv in result.items:
        user, reply = conv.messages[0].content, conv.messages[1].content
        assert conv.meta["task"] in ("parity", "size") and conv.meta["source"] == str(path)
        if conv.meta["template_type"] != "cot":
            assert user.startswith(("Is number", "NUMBER")) and reply.removeprefix("It is ").rstrip(".") in ("odd", "even")
        if conv.meta["template_type"] == "cot":
            assert "Think step by step" in user and "leaves 1 when halved" in reply and "So the answer is" in reply
        if conv.meta["template_type"] == "few_shot":
            blocks = user.split("\n\nOPTIONS:")[0].split("\n\n")
            question = blocks[-1]
            # the exemplars are other records of the same task, never the record itself
            assert conv.meta["shots"] == len(blocks) - 1 and 1 <= conv.meta["shots"] <= 3
            assert all(b.split("\n")[0] != question for b in blocks[:-1])
        assert ("OPTIONS:\n- odd\n- even" in user) == conv.meta["options"]
    assert 0 < sum(c.meta["options"] for c in result.items) < 60  # shown about half the time
    assert result.report["notes"].get("cot_without_rationale", 0) > 0  # even records have no rationale
    assert result.report["ignored_fields"] == {"id": 30}  # read by no template or setting: counted, never silent


def test_few_shot_exemplars_stay_within_the_budget(tmp_path: Path):
    path = labelled(tmp_path / "tasks.jsonl")
    recipe = recipe_from_dict({"template_types": {"few_shot": 1}, "shots": 5, "shot_budget": 6,
                               "sources": [{"path": str(path), "count": 10, "task": "all",
                                            "templates": [{"input": "Parity of {text}?", "target": "{label}"}]}]})
    result = mix(recipe)
    for conv in result.items:  # each exemplar is 4 words, the question 3: one exemplar at most fits 6 words
        assert len(conv.messages[0].content.split()) <= 6 or conv.meta["shots"] == 0
        assert conv.meta["shots"] <= 1
    assert result.report["notes"]["exemplars_pruned_for_budget"] >= 40


def test_missing_field_names_the_record_and_skip_counts_it(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"q": "a", "a": "b"}\n{"q": "c"}\n')
    spec = {"path": str(path), "count": 2, "templates": [{"input": "{q}", "target": "{a}"}]}
    with pytest.raises(RecordError, match=r"t\.jsonl:2.*\{a\}"):
        mix(recipe_from_dict({"sources": [spec]}))
    result = mix(recipe_from_dict({"sources": [{**spec, "count": 4}], "on_error": "skip"}))
    assert result.report["skipped_by_reason"] == {"missing_field": 2}  # the bad record, drawn twice
    assert result.report["written"] == 2


def test_recipe_problems_are_collected_at_once():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"sources": [{"path": "a", "weight": 1, "count": 2}, {"weight": 1},
                                      {"path": "b", "count": 1, "colour": "red"}],
                          "template_types": {"two_shot": 1}, "temperature": 0})
    text = str(info.value)
    for fragment in ("exactly one of weight or count", "exactly one of path or recipe", "colour: unknown key",
                     "'two_shot' is not one of", "temperature"):
        assert fragment in text, fragment


# --- mixing sources ---------------------------------------------------------------------------------


def test_weighted_sources_recipes_and_flan_rows(tmp_path: Path):
    a, b = chats(tmp_path / "a.jsonl", 40, "alpha"), chats(tmp_path / "b.jsonl", 10, "beta")
    flan = tmp_path / "flan.jsonl"
    flan.write_text("".join(json.dumps({"inputs": f"Q{i}", "targets": f"A{i}", "task_name": f"t{i % 2}",
                                        "template_type": "zs_opt"}) + "\n" for i in range(8)))
    inner = tmp_path / "inner.yaml"
    inner.write_text(f"sources:\n  - {{path: {b.name}, count: 4, name: beta}}\nseed: 2\n")
    recipe = recipe_from_dict({"seed": 5, "total": 30, "sources": [
        {"path": str(a), "weight": 2, "name": "alpha"}, {"path": str(flan), "weight": 1, "name": "flan"},
        {"recipe": str(inner), "count": 6, "name": "inner"}]})
    result = mix(recipe)
    assert result.report["by_source"] == {"alpha": 16, "flan": 8, "inner": 6}
    assert result.report["tasks"]["flan/t0"]["taken"] == 4 and result.report["tasks"]["flan/t1"]["taken"] == 4
    kinds = result.report["by_template_type"]
    assert kinds == {"conversation": 22, "zs_opt": 8}
    inner_items = [c for c in result.items if c.meta["source"] == "beta"]
    assert len(inner_items) == 6  # an inner recipe's items keep their own source name
    assert [c.to_json() for c in mix(recipe).items] == [c.to_json() for c in result.items]  # seeded
    recipe.seed = 6
    assert [c.to_json() for c in mix(recipe).items] != [c.to_json() for c in result.items]


def test_category_weights_from_the_flan_task_list(tmp_path: Path):
    info = FIXTURES / "data" / "flan" / "flan_collection_info.csv"
    if not info.exists():
        pytest.skip(f"fixture missing: {info}")
    import csv

    rows = list(csv.DictReader(info.open(newline="", encoding="utf-8")))
    first: dict[str, str] = {}
    for row in rows:
        first.setdefault(row["Dataset"], row["Generic Task Category"])
    tasks = list(first)[:2]
    assert first[tasks[0]] != first[tasks[1]] or len(first) > 2
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"inputs": f"q{i}", "targets": "a", "task_name": tasks[i % 2]}) + "\n"
                            for i in range(100)))
    recipe = recipe_from_dict({"categories": str(info), "category_weights": {first[tasks[0]]: 3.0},
                               "sources": [{"path": str(path), "count": 40}]})
    if first[tasks[0]] == first[tasks[1]]:
        pytest.skip("the first two tasks share a category")
    report = mix(recipe).report
    assert report["tasks"][f"{path}/{tasks[0]}"]["taken"] == 30 and report["tasks"][f"{path}/{tasks[1]}"]["taken"] == 10
    with pytest.raises(RecipeError, match="not categories"):
        mix(recipe_from_dict({"categories": str(info), "category_weights": {"No Such Category": 2.0},
                              "sources": [{"path": str(path), "count": 4}]}))


def test_cli_contract_last_line(tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    a, t = chats(tmp_path / "a.jsonl", 20, "alpha"), labelled(tmp_path / "tasks.jsonl")
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("seed: 3\ntotal: 50\ntemplate_types: {zero_shot: 0.6, few_shot: 0.4}\nsources:\n"
                      "  - {path: a.jsonl, weight: 1}\n"
                      "  - path: tasks.jsonl\n    count: 10\n"
                      "    templates: [{input: 'Parity of {text}?', target: '{label}'}]\n")
    out = tmp_path / "out" / "mixed.jsonl"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["data", "mix", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["written"] == 50 == len(out.read_text().splitlines())
    assert summary["by_source"] == {"a.jsonl": 40, "tasks.jsonl": 10}  # named by the path as the recipe writes it
    assert a.exists() and t.exists()
    assert sum(summary["by_template_type"].values()) == 50 and summary["by_template_type"]["conversation"] == 40
    report = json.loads((tmp_path / "out" / "mixed.mixture.json").read_text())
    assert report["sources"]["tasks.jsonl"]["share"] == pytest.approx(0.2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {path: a.jsonl}\n")
    result = CliRunner().invoke(app, ["data", "mix", str(bad), "--out", str(out)])
    assert result.exit_code != 0 and "exactly one of weight or count" in result.output


# --- trainers ------------------------------------------------------------------------------------------


def test_sft_reads_weighted_sources_from_yaml(tmp_path: Path):
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import run_sft

    save_tiny_model(tmp_path / "model")
    write_data(tmp_path / "starter.jsonl", copies=1)
    n_starter = len((tmp_path / "starter.jsonl").read_text().splitlines())
    chats(tmp_path / "extra.jsonl", 30, "extra")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"model: {{name_or_path: {tmp_path / 'model'}}}\n"
                      f"data:\n  max_length: 256\n  train:\n    - {{path: {tmp_path / 'starter.jsonl'}, weight: 1}}\n"
                      f"    - {{path: {tmp_path / 'extra.jsonl'}, count: 7}}\n"
                      f"train: {{output_dir: {tmp_path / 'out'}, max_steps: 2, progress: false}}\n")
    cfg = build(SFTConfig, recipe)
    assert isinstance(cfg.data.train, list) and cfg.data.train[1]["count"] == 7
    assert run_sft(cfg).steps == 2
    loaded = load_training(cfg.data.train, seed=cfg.train.seed)
    assert len(loaded.items) == n_starter + 7 and loaded.report.format == "mixture"
    assert Counter(c.meta["source"] for c in loaded.items)[str(tmp_path / "extra.jsonl")] == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {{name_or_path: {tmp_path / 'model'}}}\ndata:\n  train:\n    - {{path: x.jsonl}}\n")
    with pytest.raises(ConfigError, match=r"data\.train.*exactly one of weight or count"):
        build(SFTConfig, bad)


def test_dpo_pairs_from_weighted_sources(tmp_path: Path):
    write_pairs(tmp_path / "p1.jsonl", n=12, seed=1)
    write_pairs(tmp_path / "p2.jsonl", n=12, seed=2)
    loaded = load_training([{"path": str(tmp_path / "p1.jsonl"), "weight": 3},
                            {"path": str(tmp_path / "p2.jsonl"), "weight": 1}], seed=0)
    sources = Counter(p.meta["source"] for p in loaded.preferences)
    assert sources == {str(tmp_path / "p1.jsonl"): 18, str(tmp_path / "p2.jsonl"): 6}
    assert not loaded.conversations


def test_the_fields_a_source_reads():
    from tuneful.data.task_templates import template_fields, used_fields

    assert template_fields("Q: {question!r} {ctx.title} {items[0]}") == {"question", "ctx", "items"}
    assert template_fields("{{ text | upper }}{% for o in options %}{{ o }}{% endfor %}") == {"text", "options"}
    spec = SourceSpec(path="x", count=1, templates=[TaskTemplate("{q}", "{{ a }}")], rationale_field="why")
    assert used_fields(spec) == {"q", "a", "why"}


def test_the_source_spec_documents_every_key():
    # the recipe's keys are the dataclasses' fields: README lists them, the parser rejects any other
    assert {"path", "recipe", "weight", "count", "templates"} <= set(SourceSpec.__dataclass_fields__)
    assert {"input", "target"} == set(TaskTemplate.__dataclass_fields__)
