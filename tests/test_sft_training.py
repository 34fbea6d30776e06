"""SFT on tiny in-process models: the objective is the same however the tokens are batched,
runs resume exactly, LoRA merges faithfully, and every shipped recipe runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import free_port, killed_at_step, model_and_data, tiny_llama
from tuneful.config import build
from tuneful.tokenization.batching import Example, collate_packed, collate_padded
from tuneful.sft.config import SFTConfig
from tuneful.sft.losses import SelectedTokenLoss
from tuneful.sft.trainer import SFTTrainer, run_sft

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return model_and_data(tmp_path_factory.mktemp("sft"))


def config(workdir: Path, out: str, *extra: str, recipe: Path | None = None) -> SFTConfig:
    base = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}",
            f"train.output_dir={workdir / out}", "train.progress=false", "data.max_length=256"]
    return build(SFTConfig, recipe, base + list(extra))


def examples(n: int = 5) -> list[Example]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = 6 + 3 * i
        ids = torch.randint(3, 90, (length,), generator=g).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]  # later half trained, different counts per example
        out.append(Example(ids, labels))
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_grads_equal_unpacked_sum(attention: str):
    """Eager attention adds its mask to the scores: a boolean block mask must be converted, or packed
    examples attend to each other (this test fails for eager without that conversion)."""
    model = tiny_llama(96)
    model.config._attn_implementation = attention
    loss = SelectedTokenLoss(model)
    exs = examples(3)
    packed_sum, packed_n = loss(**collate_packed([exs], pad_id=0))
    packed_sum.backward()
    grads_packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total, count = 0.0, 0
    for e in exs:
        s, n = loss(**collate_padded([e], pad_id=0))
        s.backward()
        total, count = total + s.item(), count + int(n)
    assert int(packed_n) == count
    assert abs(packed_sum.item() - total) < 1e-4
    for gp, p in zip(grads_packed, model.parameters()):
        assert torch.allclose(gp, p.grad, atol=1e-5)


def test_padding_does_not_change_the_loss():
    model = tiny_llama(96)
    loss = SelectedTokenLoss(model)
    a, b = examples(2)
    alone, _ = loss(**collate_padded([a], pad_id=0))
    together, _ = loss(**collate_padded([a, b], pad_id=0))
    b_alone, _ = loss(**collate_padded([b], pad_id=0))
    assert abs(together.item() - (alone.item() + b_alone.item())) < 1e-4


def _one_step(workdir: Path, out: str, micro: list[list[Example]]) -> tuple[float, list[torch.Tensor]]:
    trainer = SFTTrainer(config(workdir, out, "data.packing=false", "train.max_grad_norm=0", "train.warmup_ratio=0",
                                "train.resume=false")).setup()
    batches = [(collate_padded(m, pad_id=0), sum(len(e) for e in m)) for m in micro]
    loss, *_ = trainer._optimizer_step(batches)
    return loss, [p.detach().clone() for p in trainer.model.parameters()]


def test_accumulation_4x2_equals_batch_8(workdir: Path):
    exs = examples(8)
    loss_big, params_big = _one_step(workdir, "acc-big", [exs])
    loss_acc, params_acc = _one_step(workdir, "acc-small", [exs[i : i + 2] for i in range(0, 8, 2)])
    assert abs(loss_big - loss_acc) < 1e-5
    for a, b in zip(params_big, params_acc):  # Adam's step is ~lr (2e-4); summation order moves it by ~2e-6
        assert torch.allclose(a, b, atol=5e-6)
    # and the per-micro-batch mean that other tools used would have given another number
    loss = SelectedTokenLoss(tiny_llama(96))
    with torch.no_grad():
        means = [float(s) / int(n) for s, n in (loss(**collate_padded(exs[i : i + 2], 0)) for i in range(0, 8, 2))]
        s, n = loss(**collate_padded(exs, 0))
    assert abs(sum(means) / 4 - float(s) / int(n)) > 1e-4


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_resume_after_interruption_continues_exactly(workdir: Path, monkeypatch):
    common = ("train.max_steps=6", "train.save_every=2", "train.micro_batch_size=4", "train.grad_accum=2",
              "lora.enabled=true", "lora.dropout=0.1", "train.lr=1e-3")
    run_sft(config(workdir, "straight", *common))
    straight = _losses(workdir / "straight")

    killed_at_step(monkeypatch, SFTTrainer, 5, lambda: run_sft(config(workdir, "resumed", *common)))
    assert (workdir / "resumed" / "checkpoints" / "step-00000004").is_dir()
    run_sft(config(workdir, "resumed", *common))
    assert _losses(workdir / "resumed") == straight
    assert [s for s, _ in straight] == [1, 2, 3, 4, 5, 6]


def test_resume_with_other_settings_is_refused_by_name(workdir: Path, monkeypatch, capsys):
    """A run folder resumed with another learning rate and data is refused, naming both (it used to continue the old
    run silently); a longer run continues; train.resume_force=true continues with the new settings."""
    common = ("train.max_steps=4", "train.save_every=2", "train.micro_batch_size=4", "train.lr=1e-3")
    killed_at_step(monkeypatch, SFTTrainer, 3, lambda: run_sft(config(workdir, "changed", *common)))
    other = workdir / "other.jsonl"
    other.write_text((workdir / "train.jsonl").read_text())
    with pytest.raises(ValueError) as err:
        run_sft(config(workdir, "changed", *common, "train.lr=5e-2", f"data.train={other}"))
    message = str(err.value)
    assert "train.lr: 0.001 → 0.05" in message and f"data.train: '{workdir / 'train.jsonl'}' → '{other}'" in message
    assert "train.resume_force=true" in message and "train.max_steps" not in message
    capsys.readouterr()
    run_sft(config(workdir, "changed", *common, "train.lr=5e-2", "train.resume_force=true"))
    printed = capsys.readouterr().out
    assert "continuing" in printed and "train.lr: 0.001 → 0.05" in printed and "step-00000002 at step 2" in printed
    longer = run_sft(config(workdir, "changed", *common, "train.max_steps=6"))  # the checkpoint's settings, longer
    assert longer.steps == 6


def test_lora_merged_model_matches_adapter(workdir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneful.train.output import merge_adapter

    result = run_sft(config(workdir, "lora", "lora.enabled=true", "train.max_steps=3", "train.lr=1e-2"))
    merged_dir = merge_adapter(result.model_dir, workdir / "merged")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    base = AutoModelForCausalLM.from_pretrained(workdir / "model")
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, result.model_dir).eval()
        adapter_logits = adapted(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-4)  # training changed something
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)


def test_output_folder_has_template_and_stop_tokens(workdir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    result = run_sft(config(workdir, "full", "train.max_steps=2", "train.loss_chunk_size=16", "data.eval_fraction=0.2"))
    folder = result.model_dir
    tok = AutoTokenizer.from_pretrained(folder)
    from tuneful.templates.registry import builtin

    assert tok.chat_template == builtin("chatml").source
    gen = GenerationConfig.from_pretrained(folder)
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen.eos_token_id
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    AutoModelForCausalLM.from_pretrained(folder)
    assert (workdir / "full" / "loss.png").stat().st_size > 1000
    assert result.eval_loss is not None and result.eval_loss > 0


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("sft_*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipe_runs(workdir: Path, recipe: Path):
    result = run_sft(config(workdir, f"recipe-{recipe.stem}", "train.max_steps=2", "train.save_every=1",
                            recipe=recipe))
    assert result.steps == 2 and result.final_loss is not None and (result.model_dir / "tuneful.json").exists()


def test_preflight_stops_training_before_it_starts(workdir: Path):
    from tuneful.tokenization.preflight import PreflightError

    bad = workdir / "plain.jinja"
    bad.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    with pytest.raises(PreflightError, match="end_of_turn_not_trained"):
        run_sft(config(workdir, "bad", f"data.template={bad}", "data.allow_template_change=true"))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(workdir: Path):
    """accelerate launch, 2 CPU processes (gloo), micro-batch 4 each == 1 process accumulating 2 x 4."""
    import subprocess
    import sys

    common = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}", "train.max_steps=3",
              "train.micro_batch_size=4", "train.progress=false", "data.max_length=256", "train.lr=1e-3"]
    run_sft(build(SFTConfig, None, common + ["train.grad_accum=2", f"train.output_dir={workdir / 'ddp-one'}"]))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "tuneful.cli.main", "sft"]
    done = subprocess.run(launch + common + ["train.grad_accum=1", f"train.output_dir={workdir / 'ddp-two'}"],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                           "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(workdir / "ddp-one"), _losses(workdir / "ddp-two")
    assert [s for s, _ in two] == [1, 2, 3]
    for (_, a), (_, b) in zip(one, two):
        assert abs(a - b) < 1e-5


def _kill_9_and_rerun(workdir: Path, name: str, max_steps: int, save_every: int, caught) -> Path:
    """Run ``tuneful sft`` in a process, SIGKILL it as soon as ``caught(output_dir)`` holds (polled without a
    pause), then rerun the same command to its end. Returns the run folder; its losses must equal those of the
    same settings run without a kill (``<name>-straight``)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    common = [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}",
              f"train.max_steps={max_steps}", f"train.save_every={save_every}", "train.micro_batch_size=2",
              "train.progress=false", "data.max_length=256", "data.packing=false", "train.lr=1e-3"]
    run_sft(build(SFTConfig, None, common + [f"train.output_dir={workdir / (name + '-straight')}"]))
    out = workdir / name
    cmd = [sys.executable, "-m", "tuneful.cli.main", "sft", *common, f"train.output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, hit = time.time() + 180, False
    while not hit and time.time() < deadline and proc.poll() is None:
        hit = caught(out)
    if hit:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert hit and proc.returncode == -signal.SIGKILL, "the run was not caught in the state to kill it in"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert _losses(out) == _losses(workdir / (name + "-straight"))
    return out


@pytest.mark.slow
def test_resume_after_kill_9_matches_uninterrupted_run(workdir: Path):
    """A real SIGKILL of the CLI process between checkpoints, then a rerun of the same command."""
    _kill_9_and_rerun(workdir, "kill", 40, 3, lambda out: (out / "checkpoints" / "step-00000006").exists())


@pytest.mark.slow
def test_a_kill_9_while_a_checkpoint_is_written_resumes_from_the_last_whole_one(workdir: Path):
    """SIGKILL while a checkpoint's files are being written (its temporary folder exists): the rerun ignores the
    partial folder, resumes from the last complete checkpoint and ends with the uninterrupted run's losses."""
    import os

    partial: list[str] = []

    def writing(out: Path) -> bool:  # a tiny model's checkpoint takes milliseconds to write: look without pausing
        folder = out / "checkpoints"
        partial[:] = [p.name for p in os.scandir(folder) if p.name.startswith(".tmp-")] if folder.is_dir() else []
        return bool(partial)

    _kill_9_and_rerun(workdir, "ckpt", 30, 1, writing)
    assert partial  # the kill came while that folder was being written


def test_gradient_checkpointing_gives_the_same_loss(workdir: Path):
    plain = run_sft(config(workdir, "gc-off", "train.max_steps=2", "data.packing=false"))
    checkpointed = run_sft(config(workdir, "gc-on", "train.max_steps=2", "data.packing=false",
                                  "model.gradient_checkpointing=true"))
    assert abs(plain.final_loss - checkpointed.final_loss) < 1e-5


def test_qlora_without_gpu_is_refused_with_the_fix(workdir: Path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: QLoRA is allowed here")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*lora.qlora=false"):
        run_sft(config(workdir, "qlora", "lora.enabled=true", "lora.qlora=true", "train.max_steps=1"))


def test_metrics_log_survives_a_line_cut_by_a_kill(tmp_path: Path):
    from tuneful.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    log = MetricsLog(path, start_step=2, enabled=True)
    assert log.rows == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert path.read_text().splitlines() == ['{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}']
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.5}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1: corrupt metrics line"):
        MetricsLog(path, start_step=2, enabled=True)
