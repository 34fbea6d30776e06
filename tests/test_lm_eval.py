"""``tuneful eval --lm-eval``: an lm-evaluation-harness task defined from local files, run on the shipped
sandbox base model through the same report; the base model knows its world's capitals, chance is 25 %."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest


def capital_task(folder: Path, n: int = 24) -> Path:
    """A 4-way multiple-choice task: "The government of X sits in the city of" → its capital among four."""
    from tuneful.sandbox.base import load_recipe, shipped_base_dir
    from tuneful.sandbox.world import make_world

    recipe = load_recipe(shipped_base_dir())
    world = make_world(recipe.seed, recipe.countries)
    rng = random.Random(0)
    rows = []
    for country in rng.sample(world, n):
        others = rng.sample([c.capital for c in world if c.capital != country.capital], 3)
        choices = others + [country.capital]
        rng.shuffle(choices)
        rows.append({"question": f"The government of {country.name} sits in the city of", "choices": choices,
                     "answer": choices.index(country.capital)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "sandbox_capitals.yaml").write_text(
        "task: sandbox_capitals\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: choices\n"
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


@pytest.mark.slow
def test_a_local_lm_eval_task_runs_in_the_eval_report(tmp_path: Path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness runs the task (pip install -e '.[dev]')")
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    tasks = capital_task(tmp_path / "tasks")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--models", "sandbox", "--prompts", str(prompts), "--out",
                                      str(tmp_path / "out"), "--lm-eval", "sandbox_capitals", "--lm-eval-include",
                                      str(tasks), "--lm-eval-raw", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    accuracy = summary["models"]["sandbox"]["lm_eval"]["sandbox_capitals"]["acc"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"]["sandbox"]["lm_eval"]["sandbox_capitals"]["acc"] == accuracy
    assert accuracy >= 0.6, accuracy  # the pretrained facts, well above the 25 % of a guess


def test_missing_lm_eval_names_the_fix(monkeypatch):
    import builtins

    from tuneful.eval.lm_harness import lm_eval_scores

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(RuntimeError, match="pip install lm-eval"):
        lm_eval_scores(object(), ["x"])
