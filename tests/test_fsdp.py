"""FSDP2 on CPU with gloo, 2 processes through ``accelerate launch``: the same losses, held-out loss and final
weights as one process with the same global batch (full and LoRA), exact resume from a sharded run's
checkpoint, and a saved model that loads in transformers without FSDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tiny import model_and_data
from tuneful.config import build
from tuneful.sft.config import SFTConfig
from tuneful.sft.trainer import run_sft

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return model_and_data(tmp_path_factory.mktemp("fsdp"))


def _common(workdir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}", "train.max_steps=4",
            "train.save_every=2", "train.micro_batch_size=4", "train.progress=false", "data.max_length=256",
            "train.lr=1e-3", "data.eval_fraction=0.1", *extra]


def _launch(args: list[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the shipped launch configuration, as the README says to use it (on CPU accelerate falls back to gloo)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2",
              "--main_process_port", str(port), "-m", "tuneful.cli.main", "sft"]
    done = subprocess.run(launch + args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-4000:]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _close(a: list[dict], b: list[dict], key: str) -> None:
    left, right = [(r["step"], r[key]) for r in a if key in r], [(r["step"], r[key]) for r in b if key in r]
    assert [s for s, _ in left] == [s for s, _ in right] and left
    for (_, x), (_, y) in zip(left, right):
        assert abs(x - y) < 1e-5, (key, left, right)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_sharded_processes_match_one_process_and_resume_exactly(workdir: Path, lora: bool):
    kind = "lora" if lora else "full"
    extra = ["lora.enabled=true", "lora.r=4"] if lora else []
    one, two, resumed = workdir / f"{kind}-one", workdir / f"{kind}-two", workdir / f"{kind}-resumed"
    run_sft(build(SFTConfig, None, _common(workdir, *extra, "train.grad_accum=2", f"train.output_dir={one}")))
    _launch(_common(workdir, *extra, "train.grad_accum=1", "train.fsdp=true", f"train.output_dir={two}"))

    _close(_metrics(one), _metrics(two), "loss")
    _close(_metrics(one), _metrics(two), "eval_loss")
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
    _launch(_common(workdir, *extra, "train.grad_accum=1", "train.fsdp=true", f"train.output_dir={resumed}"))
    continued = _metrics(resumed)
    assert [r["step"] for r in continued if "loss" in r] == [3, 4]
    _close([r for r in _metrics(two) if r["step"] > 2], continued, "loss")

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
        build(SFTConfig, None, _common(workdir, "train.fsdp=true", "lora.enabled=true", "lora.init=pissa"))
