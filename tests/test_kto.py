"""KTO on tiny in-process models: TRL's loss on the same batch, the reference policies agree, accumulation
equals one big batch, mismatched replies are assigned as documented, bad data and settings are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import save_tiny_model, tiny_llama, write_labeled, write_pairs
from tuneful.config import ConfigError, build
from tuneful.data.loader import load
from tuneful.preference.pairs import COLLATORS, PreferenceDataError, preference_tokenizer
from tuneful.preference.reference import ResponseLogps
from tuneful.kto.config import KTOConfig, KTOSettings
from tuneful.kto.data import LabeledReply, tokenize_labeled, with_mismatched_replies
from tuneful.kto.losses import kto, kto_reference_point
from tuneful.kto.trainer import KTOTrainer, run_kto, unpaired_loss
from tuneful.templates.registry import builtin


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kto")
    save_tiny_model(root / "model")
    write_labeled(root / "labeled.jsonl", 32)
    return root


def config(workdir: Path, out: str, *extra: str) -> KTOConfig:
    base = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'labeled.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={workdir / out}",
            "train.progress=false", "data.max_length=128", "train.lr=1e-3", "train.micro_batch_size=4"]
    return build(KTOConfig, None, base + list(extra))


def test_kto_loss_literal():
    policy, reference = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    desirable = torch.tensor([True, False])
    point = kto_reference_point(torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -4.1]))
    assert abs(float(point) - 0.3) < 1e-6  # mean of 0.5 and 0.1
    out = kto(policy, reference, desirable, point, beta=0.5, desirable_weight=2.0, undesirable_weight=1.0)
    expected_d = 2.0 * (1 - torch.sigmoid(torch.tensor(0.5 * (0.5 - 0.3))))
    expected_u = 1.0 * (1 - torch.sigmoid(torch.tensor(0.5 * (0.3 - (-1.0)))))
    assert torch.allclose(out.losses, torch.stack([expected_d, expected_u]))
    assert torch.allclose(out.rewards, torch.tensor([0.25, -0.5]))
    # the reference point never goes below zero (a policy closer to the reference than its own estimate)
    assert float(kto_reference_point(torch.tensor([-5.0]), torch.tensor([-1.0]))) == 0.0


def test_mismatched_replies_come_from_other_prompts():
    items = [LabeledReply([1, 2], [10], [1], True), LabeledReply([1, 2], [11], [1], False),
             LabeledReply([3], [12, 13], [1, 1], True)]
    out = with_mismatched_replies(items, max_length=16, split="training")
    # item 0 cycles back to item 2; item 1 skips item 0 (same prompt) and wraps to item 2; item 2 takes item 1
    assert [e.rejected_ids for e in out] == [[12, 13], [12, 13], [11]]
    with pytest.raises(PreferenceDataError, match="at least 2"):
        with_mismatched_replies(items[:1], 16, "training")


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("layout", sorted(COLLATORS))
def test_loss_on_a_fixed_batch_equals_trl(loss_type: str, layout: str, starter_tok, tmp_path: Path):
    pytest.importorskip("trl", reason="TRL is the peer this test compares against (pip install -e '.[dev]')")
    from datasets import Dataset
    from trl import KTOConfig as TrlConfig, KTOTrainer as TrlTrainer

    records = load(write_labeled(tmp_path / "l.jsonl", 8)).labeled
    items = tokenize_labeled(preference_tokenizer(starter_tok, builtin("chatml")), records)
    examples = with_mismatched_replies(items, 128, "training")
    labels = [x.desirable for x in items]
    # seeds chosen so the mismatched replies give a reference point above its clamp (0.149): it is compared too
    policy, reference = tiny_llama(len(starter_tok), seed=2), tiny_llama(len(starter_tok), seed=1)
    args = TrlConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=loss_type, report_to=[], use_cpu=True,
                     bf16=False, per_device_train_batch_size=8, desirable_weight=1.3, undesirable_weight=0.7)
    trl = TrlTrainer(model=policy, ref_model=reference, args=args, processing_class=starter_tok,
                     train_dataset=Dataset.from_list([{"prompt": "a", "completion": "b", "label": True},
                                                      {"prompt": "c", "completion": "d", "label": False}]))
    trl_batch = trl.data_collator([{"prompt_ids": e.prompt_ids, "completion_ids": e.chosen_ids,
                                    "KL_completion_ids": e.rejected_ids, "label": d} for e, d in zip(examples, labels)])
    settings = KTOSettings(loss=loss_type, beta=0.1, desirable_weight=1.3, undesirable_weight=0.7)
    with torch.no_grad():
        trl_loss = float(trl.compute_loss(trl.model, trl_batch))
        batch = COLLATORS[layout](examples, starter_tok.pad_token_id).inputs()
        sums, _ = ResponseLogps(policy)(**batch)
        ref_sums, _ = ResponseLogps(reference)(**batch)
    ours = unpaired_loss(settings, sums, ref_sums, torch.tensor(labels))
    assert abs(float(ours.losses.mean()) - trl_loss) < 1e-5
    assert loss_type != "kto" or float(ours.reference_point) > 0.1


def test_references_agree_and_training_moves_rewards_apart(workdir: Path):
    common = ("train.max_steps=3", "lora.enabled=true", "lora.r=4", "train.resume=false", "data.eval_fraction=0.25")
    runs = {ref: run_kto(config(workdir, f"ref-{ref}", *common, f"kto.reference={ref}"))
            for ref in ("frozen", "adapters-off", "precomputed")}
    histories = {ref: [(r["step"], r["loss"]) for r in run.history if "loss" in r] for ref, run in runs.items()}
    assert abs(histories["frozen"][0][1] - 0.5) < 1e-3  # step 1: policy == reference, every loss is 1 - σ(0)
    for ref in ("adapters-off", "precomputed"):
        for (s1, a), (s2, b) in zip(histories["frozen"], histories[ref]):
            assert s1 == s2 and abs(a - b) < 1e-5, (ref, histories)
        assert abs(runs[ref].eval_metrics["eval_loss"] - runs["frozen"].eval_metrics["eval_loss"]) < 1e-5
    long_run = run_kto(config(workdir, "long", "train.max_steps=20", "train.resume=false", "kto.reference=precomputed",
                              "train.lr=3e-3", "train.warmup_ratio=0"))
    last = [r for r in long_run.history if "rewards_desirable" in r][-1]
    assert last["margin"] > 0 and last["loss"] < 0.5
    saved = json.loads((long_run.model_dir / "tuneful.json").read_text())
    assert saved["train_desirable"] + saved["train_undesirable"] == 32 and saved["label_balance"] == 1.0


def test_accumulation_2x2_equals_batch_4(workdir: Path, monkeypatch):
    """With z_ref estimated per micro-batch, 2x2 equals 4 when the micro-batches' estimates agree: the
    reference point is clamped at 0 at the start (policy == reference), so both give the same step."""
    def one_step(out: str, micro: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
        trainer = KTOTrainer(config(workdir, out, "train.max_steps=1", "train.resume=false",
                                    "train.max_grad_norm=0", "kto.reference=frozen")).setup()
        monkeypatch.setattr(trainer, "micro_batches", lambda step: micro)
        result = trainer.train()
        trainer.acc.end_training()
        return result.final_loss, [p.detach().clone() for p in trainer.model.parameters()]

    big_loss, big = one_step("acc-big", [[0, 1, 2, 3]])
    small_loss, small = one_step("acc-small", [[0, 1], [2, 3]])
    assert abs(big_loss - small_loss) < 1e-6
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(big, small))


def test_wrong_data_and_settings_are_named(workdir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="preference pairs"):
        run_kto(config(workdir, "pairs", f"data.train={write_pairs(tmp_path / 'p.jsonl', 8)}"))
    with pytest.raises(ConfigError) as err:
        config(workdir, "bad", "train.micro_batch_size=1", "kto.reference=none", "kto.reference=adapters-off")
    assert "micro_batch_size" in str(err.value) and "adapters-off needs lora" in str(err.value)


def test_shipped_recipe_runs_from_the_cli(workdir: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    args = ["kto", str(Path(__file__).resolve().parents[1] / "recipes" / "kto_lora_tiny.yaml"),
            f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'labeled.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", "train.max_steps=2", "train.save_every=1",
            f"train.output_dir={workdir / 'recipe'}", "train.progress=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["reference"] == "adapters-off"
    assert Path(summary["model_dir"], "adapter_config.json").exists()


def test_the_llamafactory_kto_demo_prepares_with_a_real_tokenizer(fixtures: Path):
    """150 of the demo's 300 replies are undesirable; every record tokenizes, each with a reply to another prompt."""
    from transformers import AutoTokenizer

    from tuneful.kto.config import LabeledDataSettings
    from tuneful.kto.data import prepare_labeled

    tokenizer = AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "qwen2.5")
    settings = LabeledDataSettings(train=str(fixtures / "data" / "llamafactory" / "kto_en_demo.json"),
                                   max_length=4096)
    data = prepare_labeled(settings, tokenizer, seed=0)
    assert len(data.train) + data.dropped_overlong == 300
    assert data.balance(1.0, 1.0) == pytest.approx(sum(data.train_desirable) / (len(data.train) - sum(data.train_desirable)))
    assert all(e.prompt_ids and e.chosen_ids and e.rejected_ids != e.chosen_ids for e in data.train[:50])
