"""The sandbox world, task bank and verifiers; the shipped base model's recipe; the demo contract."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneful.sandbox.tasks import (
    FAMILIES,
    FAMILY_BY_NAME,
    HELDOUT_FAMILIES,
    eval_instances,
    heldout_phrasings,
    sft_instances,
    verify,
)
from tuneful.sandbox.world import corpus, make_world

WORLD = make_world()


def test_world_is_deterministic_and_unique():
    assert make_world() == WORLD and make_world(seed=1) != WORLD
    names = [c.name for c in WORLD] + [c.capital for c in WORLD]
    assert len(set(names)) == len(names) == 240


def test_corpus_states_every_fact_and_asks_nothing():
    docs = corpus(WORLD)
    text = "\n".join(docs)
    for c in WORLD[:20]:
        assert c.capital in text and f"{c.population} million" in text
    assert "?" not in text  # documents, not questions: the base model must not learn to answer


def test_copying_documents_name_fresh_lands_that_recur_only_in_their_own_document():
    import re

    from tuneful.sandbox.agent import agent_world_names
    from tuneful.sandbox.base import BaseRecipe, base_corpus

    recipe = BaseRecipe(copy_docs=300)
    world_docs = corpus(WORLD)
    docs = base_corpus(recipe)
    copies = [d for d in docs if d not in set(world_docs)]
    assert len(docs) == len(world_docs) + 300 and len(copies) == 300
    assert "?" not in "".join(copies)
    known = {n for c in WORLD for n in (c.name, c.capital)} | agent_world_names(recipe.seed)
    words = Counter()
    for doc in copies:
        names = set(re.findall(r"\b[A-Z][a-z]+(?:ia|land|ar|ova|eth|istan|mark|ton|burg|ford|grad|holm|port|vik|dale)\b",
                               doc)) - {"Travels", "Record", "Data", "Names", "In", "The"}
        assert names and not names & known
        assert any(doc.count(n) >= 2 for n in names), doc  # something to copy from earlier in the document
        words.update(names)
    assert max(words.values()) == 1  # a fresh land is never met again: only copying can predict it
    assert {d.split()[0] for d in copies} >= {"Travels", "Record", "Data", "Names"}


def test_task_bank_shape():
    assert len(FAMILIES) >= 20
    assert all(len(f.phrasings) >= 5 for f in FAMILIES)
    kinds = {f.kind for f in FAMILIES}
    assert {"fact", "transform", "list", "classification", "open", "multi_turn", "safety", "clarification"} <= kinds


def test_reference_answers_pass_and_held_out_parts_stay_out_of_training():
    train = sft_instances(WORLD, 30, seed=0)
    assert all(verify(i, i.answer) for i in train)
    assert not {i.family for i in train} & set(HELDOUT_FAMILIES)
    for inst in train:
        assert inst.phrasing not in heldout_phrasings(FAMILY_BY_NAME[inst.family])
    sets = eval_instances(WORLD, 5, seed=0)
    assert {i.family for i in sets["heldout_family"]} == set(HELDOUT_FAMILIES)
    for inst in sets["heldout_phrasing"]:
        assert inst.phrasing in heldout_phrasings(FAMILY_BY_NAME[inst.family])
        assert verify(inst, inst.answer)


def test_word_noise_keeps_slots_and_never_writes_a_held_out_phrasing():
    import random
    import re

    from tuneful.sandbox.tasks import training_phrasings, vary_words

    rng, changed = random.Random(0), 0
    for family in FAMILIES:
        held = {family.phrasings[p].lower().rstrip(".?") for p in heldout_phrasings(family)}
        for p in training_phrasings(family):
            template = family.phrasings[p]
            slots = re.findall(r"\S*\{\w+\}\S*?(?=[.?]?$|\s)", template)
            for _ in range(50):
                varied = vary_words(template, rng)
                changed += varied != template
                assert re.findall(r"\S*\{\w+\}\S*?(?=[.?]?$|\s)", varied) == slots  # each slot word intact
                assert varied.lower().rstrip(".?") not in held, (family.name, varied)
    assert changed > 1000  # it does vary the wording


@pytest.mark.parametrize(
    "family, check, good, bad",
    [
        ("capital", {"word": "rotugrad"}, "The capital of Zapuova is Rotugrad.", "The capital of Zapuova is Raburg."),
        ("uppercase", {"text": "FOX"}, "FOX", "Fox"),
        ("reverse_list", {"text": "owl, fox, cat"}, "owl, fox, cat.", "cat, fox, owl"),
        ("poem", {"lines": 3, "word": "cat"}, "The cat naps\nby the door\nall day", "The cat naps\nall day"),
        ("poem", {"lines": 3, "word": "cat"}, "A cat\nB\nC", "A\nB\nC"),  # three lines but no cat
        ("list_animals", {"count": 2, "allowed": ["fox", "owl"]}, "- fox\n- owl", "- fox\n- fox"),
        ("refusal", {}, "I can't help with that.", "Sure, first you take"),
        ("clarify", {}, "Which country do you mean?", "Its capital is Raburg."),
        ("sentence_with_word", {"word": "raburg"}, "Raburg is a city.", "Raburg. It is a city."),
        ("animal_or_colour", {"word": "animal", "max_words": 3}, "Animal.", "It is an animal, not a colour."),
    ],
)
def test_verifiers_accept_right_and_reject_wrong(family, check, good, bad):
    from tuneful.sandbox.tasks import TaskInstance

    inst = TaskInstance(family, 0, [], "", check)
    assert verify(inst, good) and not verify(inst, bad)


# --- the shipped base model -------------------------------------------------------------------------


def test_verifier_reward_scores_reference_answers_one_and_others_zero():
    from tuneful.sandbox.tasks import sft_instances, verifier_reward

    world = WORLD
    instances = sft_instances(world, 2, seed=5, augmented=False)
    for inst in instances:
        assert verifier_reward(inst.messages, inst.answer, {"family": inst.family, "check": inst.check}) == 1.0
    refused = [verifier_reward(i.messages, "I cannot say.", {"family": i.family, "check": i.check}) for i in instances]
    assert sum(refused) <= 2 * 2  # only the refusal and clarification families may accept a non-answer
    capital = next(i for i in sft_instances(world, 3, seed=5, augmented=False) if "capital" in i.family)
    assert verifier_reward(capital.messages, "Nowhere at all.", {"family": capital.family, "check": capital.check}) == 0.0


def test_shipped_base_recipe_reproduces_its_first_losses():
    """Rebuild tokenizer and model from the recorded recipe; the first steps give the recorded losses."""
    from transformers import AutoTokenizer

    from tuneful.sandbox.base import (BaseRecipe, base_corpus, build_tokenizer, init_model, pretrain, shipped_base_dir,
                                      token_stream)

    record = json.loads((shipped_base_dir() / "recipe.json").read_text())
    recipe = BaseRecipe(**record["recipe"])
    docs = base_corpus(recipe)
    tokenizer = build_tokenizer(docs, recipe)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(shipped_base_dir()).get_vocab()
    stream = token_stream(docs, tokenizer)
    assert len(stream) == record["corpus_tokens"]
    losses = pretrain(init_model(recipe, len(tokenizer)), stream, recipe, steps=3)
    assert losses == pytest.approx(record["first_losses"][:3], abs=2e-3)


def test_shipped_base_copies_a_name_it_never_read_from_its_context():
    """What tool use needs: a country of the agent's world, unknown to the base, is predicted from an
    earlier mention in the same text (in-context copying), after a space and inside quotes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneful.sandbox.agent import agent_world
    from tuneful.sandbox.base import load_recipe, shipped_base_dir

    recipe = load_recipe(shipped_base_dir())
    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    model = AutoModelForCausalLM.from_pretrained(shipped_base_dir()).eval()
    world = make_world(recipe.seed, recipe.countries)
    names = [c.name for c in agent_world(recipe.seed, {n for c in world for n in (c.name, c.capital)})[-40:]]

    def name_nll(text: str, name: str) -> list[float]:
        """Mean NLL of the tokens of each mention of ``name``, in order."""
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor([encoded["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
        mentions = [i for i in range(len(text)) if text.startswith(name, i)]
        return [float(nll[[t - 1 for t, (a, b) in enumerate(encoded["offset_mapping"])
                           if a < start + len(name) and b > start and t > 0]].mean()) for start in mentions]

    first, later = [], []
    for name in names:
        prose = name_nll(f"Travels in {name}\n\nThe road is long and the hills are green. I will not forget {name}.", name)
        quoted = name_nll(f'Notes on {name}. The record reads {{"name": "{name}"}}.', name)
        first += [prose[0], quoted[0]]
        later += [prose[1], quoted[1]]
    assert sum(later) / len(later) < 0.4 * sum(first) / len(first)


def test_shipped_base_is_small_and_safetensors():
    from tuneful.sandbox.base import shipped_base_dir

    weights = shipped_base_dir() / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    assert not list(shipped_base_dir().glob("*.bin"))


@pytest.mark.slow
def test_demo_quick_writes_the_contract(tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    res = CliRunner().invoke(app, ["demo", "--quick", "--rl", "--agent", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    for model in ("base", "tuned", "tuned+dpo"):
        entry = report[model]
        for key in ("heldout_phrasing_accuracy", "heldout_family_accuracy", "stop_rate"):
            assert 0.0 <= entry[key] <= 1.0
        assert set(entry["by_family"]) == {f.name for f in FAMILIES}
    assert report["seconds"] > 0
    assert report["tuned"]["stop_rate"] > report["base"]["stop_rate"]
    for name in ("report.md", "summary.png", "accuracy_by_family.png", "answers.jsonl"):
        assert (tmp_path / name).stat().st_size > 100
    dpo = report["dpo"]
    assert dpo["reference"] == "precomputed" and dpo["heldout_pairs"] == 2 * len(
        [f for f in FAMILIES if f.name not in HELDOUT_FAMILIES]) * 4
    for rates in dpo["preference"].values():
        assert set(rates) == {"prefers_chosen_over_wrong", "prefers_chosen_over_rambling"}
    assert "## DPO after SFT" in (tmp_path / "report.md").read_text()
    after = report["after_sft"]  # --rl: every method after SFT, evaluated like SFT
    assert set(after) >= {"sft", "dpo", "grpo", "online_dpo", "grpo_rm", "rm_heldout_pair_accuracy"}
    for arm in ("sft", "dpo", "grpo", "online_dpo", "grpo_rm"):
        assert {"heldout_phrasing_accuracy", "heldout_family_accuracy"} <= set(after[arm])
    assert after["sft"]["heldout_phrasing_accuracy"] == report["tuned"]["heldout_phrasing_accuracy"]
    assert 0.0 <= after["rm_heldout_pair_accuracy"] <= 1.0
    tools = report["tools"]  # the sandbox agent (contract keys; accuracies as fractions)
    assert set(tools) >= {"tuned_with_tools", "tuned_without_tools", "base_with_tools", "valid_call_rate",
                          "heldout_countries"}
    assert all(0.0 <= tools[k] <= 1.0 for k in ("tuned_with_tools", "tuned_without_tools", "base_with_tools",
                                                   "valid_call_rate"))
    assert "## The sandbox agent: tools" in (tmp_path / "report.md").read_text()
    assert tools["coverage"] and "training-only countries" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "agent_transcripts.jsonl").stat().st_size > 100
    after_rl = tools["after_rl"]  # agentic GRPO (issue 43): episodes whose calls ran, evaluated as the agent is
    assert set(after_rl) >= {"tuned_with_tools", "by_family", "valid_call_rate", "recovered", "missed_a_lookup"}
    assert 0.0 <= after_rl["tuned_with_tools"] <= 1.0 and after_rl["turns_per_episode"] >= 1.0
    assert set(after["signal_share"]) == {"grpo", "grpo_rm", "agent_grpo"}
    assert all(0.0 <= v <= 1.0 for v in after["signal_share"].values())
    assert set(after["swapped_share"]) == {"grpo", "grpo_rm", "agent_grpo", "online_dpo"}
    assert all(0.0 <= v <= 1.0 for v in after["swapped_share"].values()) and after["settings"]["dynamic_sampling"]


@pytest.mark.slow
def test_lima_quick_runs_every_arm_on_the_same_step_budget(tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app
    from tuneful.sandbox.lima import ARMS

    res = CliRunner().invoke(app, ["demo", "--lima", "--quick", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "lima.json").read_text())
    assert report["settings"]["seed"] == 2
    arms = report["arms"]
    assert [arms[a]["records"] for a in ARMS] == [100, 100, 100, 600]
    assert {arms[a]["steps"] for a in ARMS} == {30}
    for a in ARMS:
        assert 0.0 <= arms[a]["heldout_phrasing_accuracy"] <= 1.0 and 0.0 <= arms[a]["stop_rate"] <= 1.0
    # curation removed what it can see: truncated answers (quality) and near duplicates (dedup)
    curated, everything = arms["curated"]["composition"], arms["all"]["composition"]
    assert curated["truncated"] < everything["truncated"] and curated["near_duplicate"] < everything["near_duplicate"]
    # v1 filters on IFD; v2 weighs it, so no record is removed by the ifd stage
    assert "ifd" in report["curation"]["curated_v1"]["rejected_by_stage"]
    assert "ifd" not in report["curation"]["curated"]["rejected_by_stage"]
    for a in ARMS:
        assert sum(arms[a]["families"].values()) == arms[a]["records"]
        assert arms[a]["wrong_share"] == arms[a]["composition"]["wrong"]
    assert "| capital |" in (tmp_path / "lima.md").read_text()
    assert "| held-out phrasings |" in (tmp_path / "lima.md").read_text()
    assert (tmp_path / "lima.png").stat().st_size > 100
    assert json.loads(res.output.strip().splitlines()[-1]).keys() == set(ARMS)


def test_flan_quick_contract(tmp_path: Path):
    """``demo --flan``: every arm on the same examples and steps, nested families, the contract's keys."""
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    res = CliRunner().invoke(app, ["demo", "--flan", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "flan.json").read_text())
    arms = report["arms"]
    assert [(a["families"], a["few_shot"], a["seed"]) for a in arms] == [
        (2, False, 0), (4, False, 0), (4, True, 0), (2, False, 1), (4, False, 1), (4, True, 1)]
    for a in arms:
        assert {"families", "heldout_family_accuracy", "heldout_phrasing_accuracy", "seed"} <= a.keys()
        assert a["records"] == 32 and a["steps"] == 3 and len(a["family_names"]) == a["families"]
        assert 0.0 <= a["heldout_family_accuracy"] <= 1.0 and 0.0 <= a["heldout_phrasing_accuracy"] <= 1.0
        assert not set(a["family_names"]) & set(report["settings"]["heldout_families"])
    by_seed = {(a["seed"], a["families"]): a["family_names"] for a in arms if not a["few_shot"]}
    assert by_seed[(0, 4)][:2] == by_seed[(0, 2)] and by_seed[(1, 4)][:2] == by_seed[(1, 2)]  # nested
    assert set(arms[0]["by_template_type"]) == {"zero_shot"}
    assert set(arms[2]["by_template_type"]) == {"zero_shot", "few_shot"}
    assert "| 4 families + few-shot |" in (tmp_path / "flan.md").read_text()
    assert (tmp_path / "flan.png").stat().st_size > 100
    assert json.loads(res.output.strip().splitlines()[-1])["flan"] == str(tmp_path / "flan.json")


def test_flan_arms_draw_their_families_and_write_few_shot_prompts(tmp_path: Path):
    from tuneful.data.mixture import mix
    from tuneful.sandbox.flan import SINGLE_TURN_FAMILIES, FlanSettings, arm_recipe, family_order, write_pool
    from tuneful.sandbox.tasks import HELDOUT_FAMILIES

    assert len(SINGLE_TURN_FAMILIES) == 17 and not set(SINGLE_TURN_FAMILIES) & set(HELDOUT_FAMILIES)
    assert sorted(family_order(0)) == sorted(SINGLE_TURN_FAMILIES) and family_order(0) != family_order(1)
    pool = write_pool(tmp_path / "pool.jsonl", WORLD, 10, seed=0)
    families = family_order(0)[:4]
    flan = FlanSettings(examples=40)
    zero = mix(arm_recipe(pool, families, flan, 0, few_shot=False))
    assert Counter(c.meta["task"] for c in zero.items) == {f: 10 for f in families}
    assert all(len(c.messages) == 2 and "\n\n" not in c.messages[0].content for c in zero.items)
    few = mix(arm_recipe(pool, families, flan, 0, few_shot=True))
    shots = [c for c in few.items if c.meta["template_type"] == "few_shot"]
    assert 10 <= len(shots) <= 30
    for c in shots:  # two exemplars of the same family, each a prompt and its answer, then the question
        assert c.meta["shots"] == 2 and c.messages[0].content.count("\n\n") == 2


def test_lima_composition_counts_noise_and_the_overrepresented_family():
    from tuneful.sandbox.lima import composition

    records = [{"meta": {"noise": n, "family": f}} for n, f in
               [("clean", "capital"), ("wrong", "capital"), ("truncated", "sum"), ("clean", "sum")]]
    assert composition(records) == {"clean": 0.5, "wrong": 0.25, "truncated": 0.25, "near_duplicate": 0.0,
                                    "family_capital": 0.5}


def test_noisy_pool_and_preference_pairs_load_and_are_labelled(tmp_path: Path):
    from collections import Counter

    from tuneful.data.loader import load
    from tuneful.sandbox.noisy import noisy_pool, preference_pairs

    def passes(family: str, answer: str, check: dict) -> bool:
        return FAMILY_BY_NAME[family].verify(answer, check)

    pool = noisy_pool(WORLD, 400, seed=0)
    assert len(pool) == 400
    assert set(Counter(r["meta"]["noise"] for r in pool)) == {"clean", "wrong", "truncated", "near_duplicate"}
    assert Counter(r["meta"]["family"] for r in pool).most_common(1)[0][0] == "capital"
    for r in pool:
        meta, answer = r["meta"], r["messages"][-1]["content"]
        if meta["noise"] in ("clean", "near_duplicate"):
            assert passes(meta["family"], answer, meta["check"]), r
        elif meta["noise"] == "wrong":
            assert not passes(meta["family"], answer, meta["check"]), r

    pairs = preference_pairs(WORLD, 50, seed=0)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    loaded = load(path)
    assert loaded.report.format == "preference" and len(loaded.preferences) == 50
    assert Counter(p["meta"]["rejected_is"] for p in pairs) == {"wrong": 25, "rambling": 25}
    for p in pairs:
        meta = p["meta"]
        assert passes(meta["family"], p["chosen"], meta["check"])
        if meta["rejected_is"] == "wrong":
            assert not passes(meta["family"], p["rejected"], meta["check"])
        else:
            assert len(p["rejected"]) > len(p["chosen"])
