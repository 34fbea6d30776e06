"""FSDP2 on CPU with gloo, 2 processes through ``accelerate launch``: the same losses, held-out loss and final
weights as one process with the same global batch (full and LoRA), exact resume from a sharded run's
checkpoint, and a saved model that loads in transformers without FSDP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from launched import assert_same_steps, four_step_sft, launch_two, metrics
from tiny import model_and_data
from tuneful.config import build
from tuneful.sft.config import SFTConfig
from tuneful.sft.trainer import run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return model_and_data(tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_sharded_processes_match_one_process_and_resume_exactly(workdir: Path, lora: bool):
    kind = "lora" if lora else "full"
    extra = ["lora.enabled=true", "lora.r=4"] if lora else []
    one, two, resumed = workdir / f"{kind}-one", workdir / f"{kind}-two", workdir / f"{kind}-resumed"
    run_sft(build(SFTConfig, None, four_step_sft(workdir, *extra, "train.grad_accum=2", f"train.output_dir={one}")))
    launch_two("multi_gpu.yaml", "sft",
               four_step_sft(workdir, *extra, "train.grad_accum=1", "train.fsdp=true", f"train.output_dir={two}"))

    assert_same_steps(metrics(one), metrics(two), "loss")
    assert_same_steps(metrics(one), metrics(two), "eval_loss")
    assert json.loads((two / "model" / "tuneful.json").read_text())["distributed"] == {"processes": 2, "fsdp": True}
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    alone, sharded = load_file(str(one / "model" / weights)), load_file(str(two / "model" / weights))
    assert sorted(alone) == sorted(sharded)
    for name in alone:  # gathered to full tensors: the same shapes and values as the unsharded run's
        assert alone[name].shape == sharded[name].shape
        assert (alone[name] - sharded[name]).abs().max() < 1e-5, name

    # the sharded run's step-2 checkpoint, resumed by a new sharded run: steps 3 and 4 as uninterrupted
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    launch_two("multi_gpu.yaml", "sft",
               four_step_sft(workdir, *extra, "train.grad_accum=1", "train.fsdp=true", f"train.output_dir={resumed}"))
    continued = metrics(resumed)
    assert [r["step"] for r in continued if "loss" in r] == [3, 4]
    assert_same_steps([r for r in metrics(two) if r["step"] > 2], continued, "loss")

    if lora:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workdir / "model"), two / "model")
    else:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(two / "model")


def test_fsdp_refuses_what_it_cannot_shard(workdir: Path):
    from tuneful.config import ConfigError

    with pytest.raises(ConfigError, match="train.fsdp: lora.init=pissa"):
        build(SFTConfig, None, four_step_sft(workdir, "train.fsdp=true", "lora.enabled=true", "lora.init=pissa"))
