"""GRPO on tiny in-process models: advantages and the surrogate as literal tensors, TRL's loss on the same
completions, a short run raises a verifiable reward, accumulation equals one big batch, exact resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import killed_at_step, save_tiny_model, tiny_llama
from tuneful.config import ConfigError, build
from tuneful.rl.config import GRPOConfig
from tuneful.rl.losses import clipped_policy_gradient, group_advantages
from tuneful.rl.rollout import Completion, CompletionLogps, completion_inputs
from tuneful.rl.trainer import GRPOTrainer, aggregate_token_losses, run_grpo

REWARDS = '''
def short(prompt, completion, record):
    """1 for an empty reply, falling with its length: learnable by any model that can stop."""
    return 1.0 - min(len(completion), 40) / 40


def has_reference(prompt, completion, record):
    return float(record.get("reference", "") in completion)


def half_flat(prompt, completion, record):
    """0 on every reply to the first six prompts (no signal there); elsewhere the parity of the reply's characters."""
    if record["answer"] in ("cats", "rivers", "taxes", "poems", "planets", "markets"):
        return 0.0
    return float(sum(map(ord, completion)) % 2)
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpo")
    save_tiny_model(root / "model")
    lines = [json.dumps({"prompt": f"Say something about {w}.", "answer": w}) for w in
             ("cats", "rivers", "taxes", "poems", "planets", "markets", "bridges", "songs", "laws", "clouds",
              "trains", "maps")]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (root / "rewards.py").write_text(REWARDS)
    return root


def config(workdir: Path, out: str, *extra: str) -> GRPOConfig:
    base = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'prompts.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={workdir / out}",
            "train.progress=false", f"grpo.rewards=python:{workdir / 'rewards.py'}:short", "grpo.group_size=4",
            "grpo.max_new_tokens=12", "train.micro_batch_size=2", "train.lr=2e-3", "train.resume=false"]
    return build(GRPOConfig, None, base + list(extra))


def test_group_advantages_literal():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # Bessel-corrected, as TRL
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # a group that all scored the same teaches nothing
    assert torch.allclose(group_advantages(rewards, 4, scale="none")[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_dynamic_sampling_swaps_prompts_without_signal_literal():
    import random

    from tuneful.rl.selection import WINDOW, SignalHistory

    history = SignalHistory([f"#{i}" for i in range(6)], revisit=0.0)
    history.record([(0, [1.0, 1.0]), (1, [0.0, 0.0]), (2, [0.0, 1.0])])  # 0 all passed, 1 all failed, 2 signal
    assert [history.rate(f"#{i}") for i in range(4)] == [0.0, 0.0, 1.0, 1.0]  # 3 not sampled yet: 1
    chosen, swapped = history.choose([[0, 2], [1, 3]], random.Random(0))
    assert swapped == [1, 1] and chosen[0][1] == 2 and chosen[1][1] == 3
    assert {chosen[0][0], chosen[1][0]} == {4, 5}  # unseen, not already in the step, never a repeat
    full = SignalHistory(["#0", "#1", "#2"], revisit=0.0)
    full.record([(0, [1.0, 1.0]), (1, [2.0, 2.0]), (2, [0.0, 1.0])])
    assert full.choose([[0, 2]], random.Random(0)) == ([[0, 2]], [0])  # nothing to accept: the plan stands
    always = SignalHistory(["#0", "#1"], revisit=1.0)
    always.record([(0, [1.0, 1.0])])
    assert always.choose([[0]], random.Random(0)) == ([[0]], [0])  # revisit 1: never swapped
    families = SignalHistory(["capital", "capital", "sort", "sort"], revisit=0.0)
    families.record([(0, [1.0, 1.0])] * (WINDOW - 1) + [(1, [0.0, 1.0])])  # capital: 1 group in WINDOW had signal
    assert families.rate("capital") == 1 / WINDOW
    families.record([(0, [1.0, 1.0])])  # the window slides: the signal is still in it
    assert families.rate("capital") == 1 / WINDOW
    draws = [families.choose([[1]], random.Random(seed))[0][0][0] for seed in range(400)]
    assert 0.80 < sum(d in (2, 3) for d in draws) / 400 < 0.94  # capital kept with p 1/8, else a sort prompt
    restored = SignalHistory(families.keys, revisit=0.0)
    restored.restore(families.state())
    assert restored.state() == families.state() and restored.rate("capital") == 1 / WINDOW


def test_dynamic_sampling_in_a_run_and_its_resume(workdir: Path, monkeypatch):
    """Prompts whose groups all scored the same are swapped out once seen (revisit 0; the second epoch plans every
    prompt again), the share is reported, and a resumed run restores each prompt's history and chooses exactly as
    the straight run."""
    reward = f"grpo.rewards=python:{workdir / 'rewards.py'}:half_flat"
    common = ("train.max_steps=12", "train.save_every=8", "train.resume=true", reward, "grpo.dynamic_sampling=true",
              "grpo.revisit=0")
    plain = run_grpo(config(workdir, "plain", "train.max_steps=12", reward))
    straight = run_grpo(config(workdir, "dynamic", *common))
    killed_at_step(monkeypatch, GRPOTrainer, 10, lambda: run_grpo(config(workdir, "dynamic-resumed", *common)))
    resumed = run_grpo(config(workdir, "dynamic-resumed", *common))
    rows = lambda result: [r for r in result.history if "loss" in r]  # noqa: E731
    assert sum(r["swapped_share"] for r in rows(straight)) > 0 == sum(r["swapped_share"] for r in rows(plain))
    mean = lambda result: sum(r["signal_share"] for r in rows(result)) / len(rows(result))  # noqa: E731
    assert mean(straight) > mean(plain), (mean(straight), mean(plain))
    same = lambda r: (r["step"], round(r["loss"], 6), r["reward_mean"], r["swapped_share"])  # noqa: E731
    assert [same(r) for r in rows(resumed)] == [same(r) for r in rows(straight)]
    with pytest.raises(ConfigError, match="revisit") as caught:
        config(workdir, "bad", "grpo.revisit=2", "grpo.signal_key=kind")
    assert "read only with dynamic_sampling=true" in str(caught.value)  # both problems, collected at once
    # keyed by a field that groups prompts, the first epoch (no prompt met twice) is steered too
    flat = ("cats", "rivers", "taxes", "poems", "planets", "markets")
    keyed = workdir / "keyed.jsonl"
    records = [json.loads(line) for line in (workdir / "prompts.jsonl").read_text().splitlines()]
    keyed.write_text("".join(json.dumps(r | {"kind": "flat" if r["answer"] in flat else "varied"}) + "\n"
                             for r in records))
    by_kind = run_grpo(config(workdir, "dynamic-keyed", "train.max_steps=6", reward, "grpo.dynamic_sampling=true",
                              "grpo.revisit=0", "grpo.signal_key=kind", f"data.train={keyed}"))
    assert sum(r["swapped_share"] for r in rows(by_kind)) > 0
    with pytest.raises(ValueError, match="signal_key=family: 12 of 12 prompt records have no field 'family'"):
        run_grpo(config(workdir, "dynamic-no-key", "train.max_steps=1", reward, "grpo.dynamic_sampling=true",
                        "grpo.signal_key=family"))


def test_clipped_surrogate_literal():
    logps = torch.tensor([0.0, 0.0, 0.0])
    old = torch.log(torch.tensor([1 / 1.5, 1 / 0.5, 1.0]))  # ratios 1.5, 0.5, 1
    adv = torch.tensor([1.0, -1.0, 2.0])
    terms = clipped_policy_gradient(logps, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # A>0 caps the ratio at 1.28; A<0 keeps the worse of 0.5 vs 0.8 => -0.8*(-1)... min(-0.5, -0.8) = -0.8
    assert torch.allclose(terms.token_losses, torch.tensor([-1.28, 0.8, -2.0]))
    assert terms.clipped.tolist() == [True, True, False]
    ref = torch.tensor([0.1, 0.0, -0.1])
    with_kl = clipped_policy_gradient(logps, logps, adv, reference_logps=ref, beta=0.5)
    k3 = torch.exp(ref) - ref - 1
    assert torch.allclose(with_kl.token_losses, -adv + 0.5 * k3) and torch.allclose(with_kl.kl, k3)


def test_shared_prompt_layout_literal():
    group = [Completion(0, [1, 2], [3, 4], "", True, 0.0, 0.5), Completion(0, [1, 2], [5], "", True, 0.0, -0.5),
             Completion(1, [6], [7], "", True, 0.0, 0.0)]
    inputs = completion_inputs(group, pad_id=0, shared_prompt=True)
    assert inputs.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert inputs.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    # the last prompt token (1) predicts both first tokens; 3 predicts 4; row 2 starts at flat position 5
    assert inputs.sources.tolist() == [1, 2, 1, 5] and inputs.targets.tolist() == [3, 4, 5, 7]
    assert inputs.sequence.tolist() == [0, 0, 1, 2] and inputs.lengths.tolist() == [2, 1, 1]
    mask = inputs.attention_mask[0, 0].int()
    assert mask[4].tolist() == [1, 1, 0, 0, 1]  # the second completion sees the prompt and itself, not the first
    assert mask[3].tolist() == [1, 1, 1, 1, 0]


def test_aggregation_normalises_by_the_step_not_the_micro_batch():
    losses, sequence, lengths = torch.tensor([1.0, 1.0, 1.0, 4.0]), torch.tensor([0, 0, 0, 1]), torch.tensor([3, 1])
    assert float(aggregate_token_losses(losses, sequence, lengths, loss="grpo", step_completions=4, step_tokens=8,
                                        max_new_tokens=5)) == pytest.approx((1.0 + 4.0) / 4)
    assert float(aggregate_token_losses(losses, sequence, lengths, loss="dapo", step_completions=4, step_tokens=8,
                                        max_new_tokens=5)) == pytest.approx(7.0 / 8)
    assert float(aggregate_token_losses(losses, sequence, lengths, loss="dr_grpo", step_completions=4,
                                        step_tokens=8, max_new_tokens=5)) == pytest.approx(7.0 / 20)


@pytest.mark.parametrize("loss_type,beta,temperature", [("grpo", 0.0, 1.0), ("dapo", 0.04, 0.7), ("dr_grpo", 0.0, 1.0),
                                                        ("dapo", 0.0, 1.0)])
def test_loss_on_a_fixed_batch_equals_trl(loss_type: str, beta: float, temperature: float, starter_tok, tmp_path: Path):
    pytest.importorskip("trl", reason="TRL is the peer this test compares against (pip install -e '.[dev]')")
    from datasets import Dataset
    from trl import GRPOConfig as TrlConfig, GRPOTrainer as TrlTrainer

    g = torch.Generator().manual_seed(0)
    prompt = starter_tok("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False)["input_ids"]
    lengths = [5, 3, 7, 2]
    completions = [Completion(0, prompt, torch.randint(5, len(starter_tok), (n,), generator=g).tolist(), "", True,
                              0.0, a) for n, a in zip(lengths, [1.2, -0.4, 0.3, -1.1])]
    policy, reference = tiny_llama(len(starter_tok), seed=1), tiny_llama(len(starter_tok), seed=2)
    inputs = completion_inputs(completions, starter_tok.pad_token_id)
    shared = completion_inputs(completions, starter_tok.pad_token_id, shared_prompt=True)
    assert shared.input_ids.shape[0] == 1  # one group, one row: the prompt encoded once
    with torch.no_grad():
        current = CompletionLogps(policy, temperature=temperature)(**inputs.model_args())
        ref = CompletionLogps(reference, temperature=temperature)(**inputs.model_args())
        # each completion sees exactly what it sees in its own row
        assert torch.allclose(CompletionLogps(policy, temperature=temperature)(**shared.model_args()), current,
                              atol=1e-5)
    old = current + 0.3 * torch.randn(current.shape, generator=g)  # as if sampled a few updates ago: the clip acts

    args = TrlConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, loss_type=loss_type,
                     beta=0.0, temperature=temperature, num_generations=4, per_device_train_batch_size=4,
                     max_completion_length=8, epsilon=0.2, epsilon_high=0.28)
    trl = TrlTrainer(model=policy, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                     processing_class=starter_tok, train_dataset=Dataset.from_list([{"prompt": "x"}] * 4))
    trl.current_gradient_accumulation_steps = 1
    trl.beta = beta  # set after construction: with beta > 0 TRL would load a reference from the hub by name
    width = max(lengths)
    completion_ids = torch.full((4, width), starter_tok.pad_token_id)
    completion_mask = torch.zeros((4, width), dtype=torch.long)
    per_token = lambda flat: torch.zeros((4, width)).masked_scatter(completion_mask.bool(), flat)  # noqa: E731
    for row, c in enumerate(completions):
        completion_ids[row, : len(c.ids)] = torch.tensor(c.ids)
        completion_mask[row, : len(c.ids)] = 1
    batch = {"prompt_ids": torch.tensor([prompt] * 4), "prompt_mask": torch.ones((4, len(prompt)), dtype=torch.long),
             "completion_ids": completion_ids, "completion_mask": completion_mask,
             "advantages": inputs.advantages, "old_per_token_logps": per_token(old),
             "num_items_in_batch": completion_mask.sum()}
    if beta:
        batch["ref_per_token_logps"] = per_token(ref)
    with torch.no_grad():
        trl_loss = float(trl._compute_loss(trl.model, batch))
        terms = clipped_policy_gradient(CompletionLogps(policy, temperature=temperature)(**inputs.model_args()), old,
                                        inputs.advantages[inputs.sequence], epsilon_low=0.2, epsilon_high=0.28,
                                        reference_logps=ref if beta else None, beta=beta)
        ours = aggregate_token_losses(terms.token_losses, inputs.sequence, inputs.lengths, loss=loss_type,
                                      step_completions=4, step_tokens=int(inputs.lengths.sum()), max_new_tokens=8)
    assert terms.clipped.any()
    assert abs(float(ours) - trl_loss) < 1e-5


def test_training_raises_the_reward_and_saves_a_chat_model(workdir: Path):
    # the engine samples from the whole distribution (no top-k), so a random model's end of turn is rarer to draw
    # than under transformers' default top-k 50, and learning to stop takes more steps
    result = run_grpo(config(workdir, "learn", "train.max_steps=40", "train.lr=1e-2", "data.eval_fraction=0.2"))
    rows = [r for r in result.history if "reward_mean" in r]
    first, last = sum(r["reward_mean"] for r in rows[:5]) / 5, sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert {"kl", "clip_fraction", "completion_length", "stop_rate", "reward_std"} <= set(rows[0])
    assert "eval_reward" in result.eval_metrics
    saved = json.loads((result.model_dir / "tuneful.json").read_text())
    assert saved["rewards"] == [f"python:{workdir / 'rewards.py'}:short"] and saved["end_of_turn_ids"]


def test_accumulation_2x2_equals_batch_4(workdir: Path, monkeypatch):
    """Same prompts, same samples; two micro-batches of 2 prompts give the gradient of one of 4 (compared
    before the optimizer: Adam's first step, g / (|g| + eps), would magnify float noise in tiny gradients)."""
    from tuneful.train.loop import Trainer

    def one_step(out: str, groups: list[list[int]], *extra: str):
        monkeypatch.setattr(Trainer, "micro_batches", lambda self, step: groups)
        trainer = GRPOTrainer(config(workdir, out, "train.max_steps=1", "train.max_grad_norm=0", *extra)).setup()
        grads: list[torch.Tensor] = []
        step = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, **k: (grads.extend(p.grad.clone() for p in trainer.model.parameters()
                                                               if p.grad is not None), step(*a, **k))[1]
        result = trainer.train()
        trainer.acc.end_training()
        return result.final_loss, grads

    for loss in ("grpo", "dapo"):
        big_loss, big = one_step(f"acc-big-{loss}", [[0, 1, 2, 3]], f"grpo.loss={loss}")
        small_loss, small = one_step(f"acc-small-{loss}", [[0, 1], [2, 3]], f"grpo.loss={loss}")
        assert abs(big_loss - small_loss) < 1e-6 and len(big) == len(small) > 0
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(big, small))


def test_resume_continues_exactly(workdir: Path, monkeypatch):
    common = ("train.max_steps=4", "train.save_every=2", "grpo.iterations=2", "train.resume=true", "grpo.beta=0.05")
    straight = run_grpo(config(workdir, "straight", *common))
    killed_at_step(monkeypatch, GRPOTrainer, 3, lambda: run_grpo(config(workdir, "resumed", *common)))
    resumed = run_grpo(config(workdir, "resumed", *common))
    rows = lambda result: [(r["step"], r["loss"], r["reward_mean"]) for r in result.history if "loss" in r]  # noqa: E731
    ours, theirs = rows(resumed), rows(straight)
    assert [s for s, *_ in ours] == [1, 2, 3, 4] == [s for s, *_ in theirs]
    assert all(abs(a[1] - b[1]) < 1e-6 and a[2] == b[2] for a, b in zip(ours, theirs)), (ours, theirs)
    clipped = [r["clip_fraction"] for r in straight.history if "clip_fraction" in r]
    assert clipped[0] == 0 and clipped[1] > 0  # μ = 2: the second update on a batch is off-policy, the clip acts


def test_cli_runs_with_a_reward_function_and_settings_are_checked(workdir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    for command, section in (("grpo", "grpo"), ("online-dpo", "online_dpo")):
        result = CliRunner().invoke(app, [command, f"model.name_or_path={workdir / 'model'}",
                                          f"data.train={workdir / 'prompts.jsonl'}", "data.template=chatml",
                                          "data.allow_template_change=true", "train.max_steps=1", "train.progress=false",
                                          f"{section}.group_size=2", f"{section}.max_new_tokens=4",
                                          f"train.output_dir={tmp_path / command}",
                                          "--reward-fn", f"{workdir / 'rewards.py'}:has_reference"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["steps"] == 1 and Path(summary["model_dir"], "tuneful.json").exists()
    bad = CliRunner().invoke(app, ["grpo", f"model.name_or_path={workdir / 'model'}",
                                   f"data.train={workdir / 'prompts.jsonl'}", f"train.output_dir={tmp_path / 'bad'}",
                                   "--reward-fn", "no_such_module_here:fn"])
    assert bad.exit_code == 2 and "cannot import no_such_module_here" in bad.output
    with pytest.raises(ConfigError) as err:
        build(GRPOConfig, None, ["model.name_or_path=x", "data.train=y", "grpo.group_size=1", "grpo.loss=ppo",
                                 "grpo.reference=adapters-off"])
    text = str(err.value)
    assert "rewards: required" in text and "group_size" in text and "ppo" in text and "adapters-off" in text


def test_online_dpo_pairs_and_a_run_that_raises_the_reward(workdir: Path):
    from tuneful.rl.online_dpo import OnlineDPOConfig, best_and_worst, run_online_dpo

    assert best_and_worst([0.1, 0.9, 0.5, 0.5, 1.0, 0.0, 0.3, 1.0], 2) == [(1, 0), (4, 5), (7, 6)]
    assert best_and_worst([0.2, 0.7, 0.7, 0.1], 4) == [(1, 3)]
    common = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'prompts.jsonl'}",
              "data.template=chatml", "data.allow_template_change=true", "train.progress=false",
              f"online_dpo.rewards=python:{workdir / 'rewards.py'}:short", "online_dpo.group_size=4",
              "online_dpo.max_new_tokens=12", "train.micro_batch_size=2", "train.resume=false", "train.lr=1e-2"]
    # full fine-tuning against a frozen copy: with the whole distribution sampled (no top-k), a random model's end
    # of turn is rare to draw, and LoRA r 8 does not learn to stop within a test's budget
    result = run_online_dpo(build(OnlineDPOConfig, None, common + [f"train.output_dir={workdir / 'online'}",
                                                                   "train.max_steps=40"]))
    rows = [r for r in result.history if "reward_mean" in r]
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3  # step 1: the policy is its reference
    first, last = sum(r["reward_mean"] for r in rows[:5]) / 5, sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert json.loads((result.model_dir / "tuneful.json").read_text())["reference"] == "frozen"
    lora = run_online_dpo(build(OnlineDPOConfig, None, common + [
        f"train.output_dir={workdir / 'online-lora'}", "train.max_steps=2", "lora.enabled=true", "lora.r=8",
        "online_dpo.dynamic_sampling=true"]))
    assert abs([r for r in lora.history if "loss" in r][0]["loss"] - 0.6931) < 1e-3  # adapters off: the reference
    assert "swapped_share" in [r for r in lora.history if "loss" in r][0]
    assert json.loads((lora.model_dir / "tuneful.json").read_text())["reference"] == "adapters-off"


def test_reward_sources_judge_and_rm_and_their_weighted_sum(workdir: Path, tmp_path: Path, monkeypatch):
    """A judge's [[N]] ratings scale to 0-1 (a reply without one scores 0 and is counted); the key is read
    from the environment and never lands in the request body; weights combine the sources."""
    from stub_openai import completion, stub_endpoint

    from tuneful.rl.rewards import CombinedReward, RewardSpecError, reward_source

    seen = []

    def answer(body, headers):
        seen.append((body, headers.get("Authorization")))
        text = body["messages"][-1]["content"]
        return 200, completion("Fine. [[8]]" if "[Answer]\ngood" in text else "No rating here.")

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    with stub_endpoint(answer) as url:
        combined = CombinedReward([f"judge:rater@{url}", f"python:{workdir / 'rewards.py'}:short"], [2.0, 1.0])
        prompts = [[{"role": "user", "content": "Say hi."}]] * 2
        scores = combined(prompts, ["good", "bad reply"], [{}, {}])
    assert combined.parts["judge:rater"] == [0.8, 0.0] and combined.sources[0].unparsed == 1
    assert scores == pytest.approx([2 * 0.8 + 1 - 4 / 40, 0.0 + 1 - 9 / 40])
    assert seen[0][1] == "Bearer sk-test-secret" and "sk-test-secret" not in json.dumps(seen[0][0])
    with pytest.raises(RewardSpecError, match="expected python:MODULE:FUNCTION"):
        reward_source("lambda:x")
    (tmp_path / "bad.py").write_text("def fn(prompt, completion, record):\n    return 'yes'\n")
    with pytest.raises(RewardSpecError, match="must return a number"):
        reward_source(f"python:{tmp_path / 'bad.py'}:fn")([[]], ["x"], [{}])


def test_shipped_recipe_runs_from_the_cli(workdir: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "grpo_lora_tiny.yaml"
    result = CliRunner().invoke(app, ["grpo", str(recipe), f"model.name_or_path={workdir / 'model'}",
                                      f"data.train={workdir / 'prompts.jsonl'}", "data.template=chatml",
                                      "data.allow_template_change=true", "train.max_steps=2", "train.grad_accum=1",
                                      "grpo.group_size=2", "grpo.max_new_tokens=4", "train.save_every=1",
                                      "train.eval_every=0", f"train.output_dir={workdir / 'recipe'}",
                                      "train.progress=false", "--reward-fn", f"{workdir / 'rewards.py'}:short"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["model_dir"], "adapter_config.json").exists()
    assert summary["eval"] is not None and "eval_reward" in summary["eval"]
