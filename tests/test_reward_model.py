"""Reward models on tiny in-process models: TRL's loss on the same batch (with margins and centring), a
short run learns the pairs, the saved folder loads in transformers and scores as tuneful does, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import save_tiny_model, write_pairs
from tuneful.config import ConfigError, build
from tuneful.data.loader import load
from tuneful.preference.pairs import COLLATORS, preference_tokenizer, tokenize_pairs
from tuneful.reward.config import RewardConfig
from tuneful.reward.losses import bradley_terry
from tuneful.preference.reward_model import RewardScores, reward_inputs
from tuneful.reward.trainer import run_reward
from tuneful.templates.registry import builtin


def tiny_reward_model(vocab_size: int, pad_token_id: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=pad_token_id, attn_implementation="sdpa")
    return LlamaForSequenceClassification(config)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    save_tiny_model(root / "model")
    # a tiny model cannot check sums: here every rejected reply rambles (learnable), none is just a wrong number
    pairs = [json.loads(line) for line in write_pairs(root / "pairs.jsonl", 48).read_text().splitlines()]
    for pair in pairs:
        pair["rejected"] = f"Well, let me think. It is {pair['chosen'].rstrip('.')}, I believe."
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


def config(workdir: Path, out: str, *extra: str) -> RewardConfig:
    base = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'pairs.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={workdir / out}",
            "train.progress=false", "data.max_length=128", "train.lr=3e-3", "train.micro_batch_size=8",
            "train.resume=false", "train.warmup_ratio=0"]
    return build(RewardConfig, None, base + list(extra))


def test_bradley_terry_literal():
    out = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), margin=torch.tensor([0.5, 0.0]),
                        center_coefficient=0.1)
    expected = torch.stack([-torch.nn.functional.logsigmoid(torch.tensor(0.5)) + 0.1 * 9.0,
                            -torch.nn.functional.logsigmoid(torch.tensor(-1.0)) + 0.1 * 1.0])
    assert torch.allclose(out.losses, expected) and out.margins.tolist() == [1.0, -1.0]


@pytest.mark.parametrize("layout", sorted(COLLATORS))
def test_loss_on_a_fixed_batch_equals_trl(layout: str, starter_tok, tmp_path: Path):
    pytest.importorskip("trl", reason="TRL is the peer this test compares against (pip install -e '.[dev]')")
    from datasets import Dataset
    from trl import RewardConfig as TrlConfig, RewardTrainer as TrlTrainer

    examples = tokenize_pairs(preference_tokenizer(starter_tok, builtin("chatml")),
                              load(write_pairs(tmp_path / "p.jsonl", 8)).preferences)
    margins = [0.25 * (k % 3) for k in range(len(examples))]
    model = tiny_reward_model(len(starter_tok), starter_tok.pad_token_id, seed=3)
    args = TrlConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                     per_device_train_batch_size=8, center_rewards_coefficient=0.05)
    trl = TrlTrainer(model=model, args=args, processing_class=starter_tok,
                     train_dataset=Dataset.from_list([{"chosen": "a", "rejected": "b"}]))
    trl_batch = trl.data_collator([{"chosen_ids": e.prompt_ids + e.chosen_ids, "rejected_ids": e.prompt_ids + e.rejected_ids,
                                    "margin": m} for e, m in zip(examples, margins)])
    with torch.no_grad():
        trl_loss = float(trl.compute_loss(trl.model, trl_batch))
        batch = COLLATORS[layout](examples, starter_tok.pad_token_id)
        rewards = RewardScores(model)(**reward_inputs(batch, examples, layout))
    chosen, rejected = rewards.chunk(2)
    ours = bradley_terry(chosen, rejected, margin=torch.tensor(margins), center_coefficient=0.05)
    assert abs(float(ours.losses.mean()) - trl_loss) < 1e-5


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_learns_the_pairs_and_the_folder_loads_in_transformers(workdir: Path, lora: bool):
    from transformers import AutoModelForSequenceClassification

    from tuneful.preference.reward_score import RewardScorer

    extra = ("lora.enabled=true", "lora.r=8", "train.lr=1e-2") if lora else ()
    result = run_reward(config(workdir, f"run-{lora}", "train.max_steps=30", "data.eval_fraction=0.25", *extra))
    assert result.eval_metrics["eval_accuracy"] >= 0.9, result.eval_metrics
    first, last = result.history[0], [r for r in result.history if "loss" in r][-1]
    assert last["loss"] < first["loss"]
    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir)  # no peft needed
    scorer = RewardScorer(result.model_dir)
    pairs = load(str(workdir / "pairs.jsonl")).preferences[:6]
    chosen, _ = scorer.score_pairs(pairs)
    from tuneful.data.types import Conversation

    for pair, ours in zip(pairs, chosen):  # transformers reads the last non-pad token of the unpadded row
        ids = scorer.token_ids(Conversation((*pair.prompt, pair.chosen)))
        with torch.no_grad():
            theirs = float(saved(input_ids=torch.tensor([ids])).logits[0, 0])
        assert abs(theirs - ours) < 1e-4
    assert json.loads((result.model_dir / "tuneful.json").read_text())["task"] == "reward-model"


def test_cli_trains_and_scores(workdir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    runner = CliRunner()
    trained = runner.invoke(app, ["rm", "train", f"model.name_or_path={workdir / 'model'}",
                                  f"data.train={workdir / 'pairs.jsonl'}", "data.template=chatml",
                                  "data.allow_template_change=true", "train.max_steps=2", "train.progress=false",
                                  f"train.output_dir={tmp_path / 'rm'}"])
    assert trained.exit_code == 0, trained.output
    model_dir = json.loads(trained.stdout.strip().splitlines()[-1])["model_dir"]
    scored = runner.invoke(app, ["rm", "score", model_dir, str(workdir / "pairs.jsonl"), "--out", str(tmp_path / "s.jsonl")])
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 48 and 0.0 <= summary["pair_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and {"chosen_reward", "rejected_reward"} <= set(rows[0])


def test_settings_are_checked(workdir: Path):
    with pytest.raises(ConfigError) as err:
        config(workdir, "bad", "reward.center_coefficient=-1", "lora.enabled=true", "lora.qlora=true")
    assert "center_coefficient" in str(err.value) and "qlora" in str(err.value)


def test_shipped_recipe_runs_from_the_cli(workdir: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "rm_lora_tiny.yaml"
    result = CliRunner().invoke(app, ["rm", "train", str(recipe), f"model.name_or_path={workdir / 'model'}",
                                      f"data.train={workdir / 'pairs.jsonl'}", "data.template=chatml",
                                      "data.allow_template_change=true", "train.max_steps=2",
                                      f"train.output_dir={workdir / 'recipe'}", "train.progress=false"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["eval"]["eval_accuracy"] >= 0.0
    assert Path(summary["model_dir"], "model.safetensors").exists()  # merged: no adapter files
