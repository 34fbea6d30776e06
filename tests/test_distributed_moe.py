"""An MoE model (tiny Mixtral, router loss on) under FSDP2 and DeepSpeed ZeRO-2 on CPU with gloo, 2 processes: the
FSDP unit is the model's own decoder-layer class (its experts inside it), and the loss, the MoE load-balancing
term (``aux_loss``, per micro-batch by trained-token share) and the final weights — routers included — equal one
process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from launched import assert_same_steps, four_step_sft, launch_two, metrics
from tiny import save_tiny_moe, write_data
from tuneful.config import build
from tuneful.sft.config import SFTConfig
from tuneful.sft.trainer import run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moe")
    save_tiny_moe(root / "model")
    write_data(root / "train.jsonl")
    return root


def _same_runs(one: Path, two: Path) -> None:
    assert_same_steps(metrics(one), metrics(two), "loss")
    assert_same_steps(metrics(one), metrics(two), "aux_loss")
    assert all(r["aux_loss"] > 0 for r in metrics(one) if "aux_loss" in r)
    alone, spread = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert any(".gate." in name or "router" in name for name in alone)
    for name in alone:
        assert (alone[name] - spread[name]).abs().max() < 1e-5, name


def test_fsdp_shards_the_moe_model_by_its_decoder_layers_and_matches_one_process(workdir: Path):
    one, two = workdir / "fsdp-one", workdir / "fsdp-two"
    run_sft(build(SFTConfig, None, four_step_sft(workdir, "train.grad_accum=2", f"train.output_dir={one}")))
    launch_two("multi_gpu.yaml", "sft",
               four_step_sft(workdir, "train.grad_accum=1", "train.fsdp=true", f"train.output_dir={two}"))
    _same_runs(one, two)


def test_zero2_trains_the_moe_model_as_one_process_does(workdir: Path):
    pytest.importorskip("deepspeed", reason="scripts/setup installs deepspeed; CI runs these tests")
    one, two = workdir / "zero-one", workdir / "zero-two"
    common = ["train.micro_batch_size=2", "train.max_grad_norm=0.5"]
    run_sft(build(SFTConfig, None, four_step_sft(workdir, *common, "train.grad_accum=4", f"train.output_dir={one}")))
    launch_two("deepspeed_zero2.yaml", "sft",
               four_step_sft(workdir, *common, "train.grad_accum=2", f"train.output_dir={two}"))
    _same_runs(one, two)
