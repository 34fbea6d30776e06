"""DeepSpeed ZeRO-2 through accelerate on CPU (gloo), 2 processes launched with the shipped config: the same
losses, held-out loss and final weights as one process with the same global batch (full and LoRA), exact
resume from a ZeRO run's checkpoint (one optimizer partition per process), and refusals that name the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from launched import assert_same_steps, four_step_sft, launch_two, metrics
from tiny import model_and_data
from tuneful.config import build
from tuneful.sft.config import SFTConfig
from tuneful.sft.trainer import run_sft
from tuneful.train.checkpoint import OptimizerPartitions, load_checkpoint
from tuneful.train.zero import configure_zero

pytest.importorskip("deepspeed", reason="scripts/setup installs deepspeed; CI runs these tests")
pytestmark = pytest.mark.slow
CONFIG = "deepspeed_zero2.yaml"  # the shipped launch configuration, as the README says to use it


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return model_and_data(tmp_path_factory.mktemp("zero"))


def _common(workdir: Path, *extra: str) -> list[str]:
    return four_step_sft(workdir, "train.micro_batch_size=2", "train.max_grad_norm=0.5", *extra)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero2_on_two_processes_matches_one_process_and_resumes_exactly(workdir: Path, lora: bool):
    kind = "lora" if lora else "full"
    extra = ["lora.enabled=true", "lora.r=4"] if lora else []
    one, two, resumed = workdir / f"{kind}-one", workdir / f"{kind}-two", workdir / f"{kind}-resumed"
    # the same 4 micro-batches a step: 4 accumulated on one process, 2 on each of two (the boundary is the loop's)
    run_sft(build(SFTConfig, None, _common(workdir, *extra, "train.grad_accum=4", f"train.output_dir={one}")))
    printed = launch_two(CONFIG, "sft", _common(workdir, *extra, "train.grad_accum=2", f"train.output_dir={two}"))
    summaries = [json.loads(line) for line in printed.splitlines() if line.startswith('{"steps"')]
    assert len(summaries) == 1 and printed.strip().splitlines()[-1].startswith('{"steps"')  # the main process's only
    assert summaries[0]["model_dir"] == str(two / "model")

    assert_same_steps(metrics(one), metrics(two), "loss")
    assert_same_steps(metrics(one), metrics(two), "grad_norm")  # clipped by DeepSpeed to the recipe's max_grad_norm
    assert_same_steps(metrics(one), metrics(two), "eval_loss")
    assert json.loads((two / "model" / "tuneful.json").read_text())["distributed"] == {
        "processes": 2, "fsdp": False, "deepspeed_zero_stage": 2}
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    alone, zero = load_file(str(one / "model" / weights)), load_file(str(two / "model" / weights))
    assert sorted(alone) == sorted(zero)
    for name in alone:
        assert (alone[name] - zero[name]).abs().max() < 1e-5, name

    # one optimizer partition per process next to the full weights; resumed by a new ZeRO run: steps 3 and 4
    # as uninterrupted
    checkpoint = two / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in checkpoint.glob("optimizer*")) == ["optimizer-rank-00000.pt",
                                                                      "optimizer-rank-00001.pt"]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step-00000002")
    launch_two(CONFIG, "sft", _common(workdir, *extra, "train.grad_accum=2", f"train.output_dir={resumed}"))
    continued = metrics(resumed)
    assert [r["step"] for r in continued if "loss" in r] == [3, 4]
    assert_same_steps([r for r in metrics(two) if r["step"] > 2], continued, "loss")

    base = AutoModelForCausalLM.from_pretrained(workdir / "model" if lora else two / "model")  # without DeepSpeed
    if lora:
        from peft import PeftModel

        PeftModel.from_pretrained(base, two / "model")


def test_zero_refuses_stage_3_fsdp_and_a_checkpoint_split_another_way(workdir: Path):
    def accelerator(stage: int) -> SimpleNamespace:
        config = {"zero_optimization": {"stage": stage}}
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))

    train = build(SFTConfig, None, _common(workdir, "train.grad_accum=3")).train
    acc = accelerator(2)
    assert configure_zero(acc, train, world=2) == 2  # the recipe's settings, written into DeepSpeed's config
    assert {k: acc.state.deepspeed_plugin.deepspeed_config[k] for k in
            ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
             "gradient_clipping")} == {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3,
                                       "train_batch_size": 12, "gradient_clipping": 0.5}
    with pytest.raises(ValueError, match="zero_stage=3.*train.fsdp=true"):
        configure_zero(accelerator(3), train, world=2)
    train.fsdp = True
    with pytest.raises(ValueError, match="train.fsdp=true under a DeepSpeed launch"):
        configure_zero(accelerator(2), train, world=2)

    # a ZeRO checkpoint of 2 processes: neither a run without DeepSpeed nor a ZeRO run of 1 process resumes it
    src = workdir / "full-two" / "checkpoints" / "step-00000002"
    if not src.exists():
        pytest.skip("needs the full run of the test above")
    run = workdir / "split"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(src, run / "checkpoints" / "step-00000002")
    with pytest.raises(ValueError, match="train.grad_accum: 2 → 1"):  # written by two processes, with grad_accum 2
        run_sft(build(SFTConfig, None, _common(workdir, f"train.output_dir={run}")))
    with pytest.raises(RuntimeError, match="DeepSpeed ZeRO run .2 optimizer partitions"):
        run_sft(build(SFTConfig, None, _common(workdir, f"train.output_dir={run}", "train.resume_force=true")))
    with pytest.raises(RuntimeError, match="--num_processes 2"):
        load_checkpoint(src, AutoModelForCausalLM.from_pretrained(workdir / "model"), None, None,
                        partitions=OptimizerPartitions(0, 1, lambda: None))
