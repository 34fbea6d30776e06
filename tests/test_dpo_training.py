"""DPO on tiny in-process models: TRL's loss on the same batch, the three reference policies agree,
accumulation equals one big batch, the cached reference survives a resume, every recipe runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import killed_at_step, save_tiny_model, tiny_llama, write_pairs
from tuneful.config import ConfigError, build
from tuneful.data.loader import load
from tuneful.dpo.config import DPOConfig, ObjectiveSettings
from tuneful.preference.pairs import COLLATORS, preference_tokenizer, tokenize_pairs
from tuneful.dpo.losses import OBJECTIVES, pair_terms
from tuneful.preference.reference import ResponseLogps
from tuneful.dpo.trainer import DPOTrainer, run_dpo
from tuneful.templates.registry import builtin

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    save_tiny_model(root / "model")
    write_pairs(root / "pairs.jsonl", 32)
    return root


def config(workdir: Path, out: str, *extra: str, recipe: Path | None = None) -> DPOConfig:
    base = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'pairs.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={workdir / out}",
            "train.progress=false", "data.max_length=128", "train.lr=1e-3", "train.micro_batch_size=4"]
    return build(DPOConfig, recipe, base + list(extra))


def _history(result) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in result.history if "loss" in r]


@pytest.mark.parametrize("layout", sorted(COLLATORS))
@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_loss_on_a_fixed_batch_equals_trl(loss: str, layout: str, starter_tok, tmp_path: Path):
    pytest.importorskip("trl", reason="TRL is the peer this test compares against (pip install -e '.[dev]')")
    from datasets import Dataset
    from trl import DPOConfig as TrlConfig, DPOTrainer as TrlTrainer

    examples = tokenize_pairs(preference_tokenizer(starter_tok, builtin("chatml")),
                              load(write_pairs(tmp_path / "p.jsonl", 8)).preferences)
    policy, reference = tiny_llama(len(starter_tok), seed=1), tiny_llama(len(starter_tok), seed=2)
    # bf16=False: TRL's default autocasts to bf16 even on a CPU; the comparison is in fp32
    args = TrlConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss], report_to=[], use_cpu=True,
                     bf16=False, per_device_train_batch_size=8)
    trl = TrlTrainer(model=policy, ref_model=reference, args=args, processing_class=starter_tok,
                     train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    trl_batch = trl.data_collator([{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids,
                                    "rejected_ids": e.rejected_ids} for e in examples])
    with torch.no_grad():
        trl_loss = float(trl.compute_loss(trl.model, trl_batch))
        batch = COLLATORS[layout](examples, starter_tok.pad_token_id).inputs()
        sums, counts = ResponseLogps(policy)(**batch)
        ref_sums, _ = ResponseLogps(reference)(**batch)
    ours = pair_terms(OBJECTIVES[loss], ObjectiveSettings(loss=loss, beta=0.1), sums, counts, ref_sums)
    assert abs(float(ours.pair_loss_sum) / len(examples) - trl_loss) < 1e-5


def test_frozen_adapters_off_and_precomputed_references_agree(workdir: Path):
    common = ("train.max_steps=3", "lora.enabled=true", "lora.r=4", "train.resume=false", "data.eval_fraction=0.25")
    runs = {ref: run_dpo(config(workdir, f"ref-{ref}", *common, f"dpo.reference={ref}"))
            for ref in ("frozen", "adapters-off", "precomputed")}
    histories = {ref: _history(r) for ref, r in runs.items()}
    assert abs(histories["frozen"][0][1] - 0.6931) < 1e-3  # step 1: policy == reference, loss = log 2
    for ref in ("adapters-off", "precomputed"):
        for (s1, a), (s2, b) in zip(histories["frozen"], histories[ref]):
            assert s1 == s2 and abs(a - b) < 1e-5, (ref, histories)
        assert abs(runs[ref].eval_metrics["eval_loss"] - runs["frozen"].eval_metrics["eval_loss"]) < 1e-5


def test_accumulation_2x2_equals_batch_4(workdir: Path, monkeypatch):
    def one_step(out: str, micro: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
        trainer = DPOTrainer(config(workdir, out, "train.max_steps=1", "train.resume=false",
                                    "train.max_grad_norm=0", "dpo.reference=frozen")).setup()
        monkeypatch.setattr(trainer, "micro_batches", lambda step: micro)
        result = trainer.train()
        trainer.acc.end_training()
        return result.final_loss, [p.detach().clone() for p in trainer.model.parameters()]

    big_loss, big = one_step("acc-big", [[0, 1, 2, 3]])
    small_loss, small = one_step("acc-small", [[0, 1], [2, 3]])
    assert abs(big_loss - small_loss) < 1e-6
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(big, small))


def test_resume_reuses_the_cached_reference_and_continues_exactly(workdir: Path, monkeypatch):
    common = ("train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2", "train.grad_accum=2",
              "dpo.reference=precomputed")
    straight = run_dpo(config(workdir, "straight", *common))
    assert straight.details["reference"] == "precomputed" and not straight.details["reference_cached"]

    killed_at_step(monkeypatch, DPOTrainer, 5, lambda: run_dpo(config(workdir, "resumed", *common)))

    computed = []
    import tuneful.preference.policy as trainer_module

    real = trainer_module.reference_logps
    monkeypatch.setattr(trainer_module, "reference_logps", lambda *a, **k: computed.append(1) or real(*a, **k))
    resumed = run_dpo(config(workdir, "resumed", *common))
    assert resumed.details["reference_cached"] and not computed  # no reference pass on resume
    assert _history(resumed) == _history(straight)
    assert len(list((workdir / "resumed" / "reference_logps").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("loss", list(OBJECTIVES))
def test_every_objective_learns_the_preference(workdir: Path, loss: str):
    """Loss and margin on the pairs (as eval data), before and after 6 steps."""
    extra = ["dpo.label_smoothing=0.1"] if loss == "robust" else []
    trainer = DPOTrainer(config(workdir, f"loss-{loss}", f"dpo.loss={loss}", "train.max_steps=6", "train.resume=false",
                                f"data.eval={workdir / 'pairs.jsonl'}", *extra)).setup()
    before = trainer.evaluate()
    result = trainer.train()
    trainer.acc.end_training()
    assert result.details["reference"] == ("none" if loss in ("simpo", "orpo") else "precomputed")
    after = result.eval_metrics
    assert after["eval_loss"] < before["eval_loss"] and after["eval_margin"] > before["eval_margin"], (before, after)


def test_output_folder_loads_with_template_and_stop_tokens(workdir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    result = run_dpo(config(workdir, "output", "train.max_steps=1", "train.resume=false"))
    folder = result.model_dir
    AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == builtin("chatml").source
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in GenerationConfig.from_pretrained(folder).eos_token_id
    summary = json.loads((folder / "tuneful.json").read_text())
    assert summary["reference"] == "precomputed" and summary["train_pairs"] == 32


def test_config_errors_are_collected_with_their_fix():
    with pytest.raises(ConfigError) as info:
        build(DPOConfig, None, ["data.train=x", "model.name_or_path=m", "dpo.reference=adapters-off",
                                "dpo.loss=simpo", "dpo.reference_model=other", "data.overlong=truncate"])
    text = str(info.value)
    assert "reference-free" in text and "reference_model" in text and "overlong" in text
    with pytest.raises(ConfigError, match="needs lora.enabled=true"):
        build(DPOConfig, None, ["data.train=x", "model.name_or_path=m", "dpo.reference=adapters-off"])
    with pytest.raises(ConfigError, match="compares against a reference"):
        build(DPOConfig, None, ["data.train=x", "model.name_or_path=m", "dpo.reference=none"])
    with pytest.raises(ConfigError, match="shared-prompt needs a custom attention mask"):
        build(DPOConfig, None, ["data.train=x", "model.name_or_path=m", "train.pair_layout=shared-prompt",
                                "model.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="pair_layout: 'packed' is not one of"):
        build(DPOConfig, None, ["data.train=x", "model.name_or_path=m", "train.pair_layout=packed"])


def test_both_pair_layouts_train_the_same(workdir: Path):
    """The shared prompt is a cheaper layout of the same computation: same losses, step by step."""
    runs = {layout: run_dpo(config(workdir, f"layout-{layout}", "train.max_steps=3", "train.resume=false",
                                   f"train.pair_layout={layout}")) for layout in ("shared-prompt", "two-rows")}
    shared, rows = (_history(runs[k]) for k in ("shared-prompt", "two-rows"))
    assert len(shared) == 3 and [s for s, _ in shared] == [s for s, _ in rows]
    for (_, a), (_, b) in zip(shared, rows):
        assert abs(a - b) < 1e-4
    tokens = {k: [r["tokens"] for r in v.history if "tokens" in r] for k, v in runs.items()}
    assert tokens["shared-prompt"] == tokens["two-rows"]  # throughput counts the same work in both


def test_conversations_are_refused_as_preference_data(workdir: Path, tmp_path: Path):
    from tiny import write_data

    with pytest.raises(ValueError, match="not preference pairs"):
        run_dpo(build(DPOConfig, None, [f"model.name_or_path={workdir / 'model'}",
                                        f"data.train={write_data(tmp_path / 'convs.jsonl')}",
                                        f"train.output_dir={tmp_path / 'out'}"]))


@pytest.mark.parametrize("recipe", sorted(p for p in (REPO / "recipes").glob("*.yaml")
                                          if p.stem.split("_")[0] in ("dpo", "orpo")), ids=lambda p: p.stem)
def test_shipped_recipe_runs_from_the_cli(workdir: Path, recipe: Path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app

    args = ["dpo", str(recipe), f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'pairs.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", "train.max_steps=2", "train.save_every=1",
            f"train.output_dir={workdir / ('recipe-' + recipe.stem)}", "train.progress=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["model_dir"], "tuneful.json").exists()
