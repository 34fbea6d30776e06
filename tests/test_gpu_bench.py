"""bench/gpu.py's dry run: every configuration's code path — tuneful's and TRL's trainers, the packing check, the
loss kernels, the summary — on the CPU with a tiny model, so the one GPU run a lent device allows succeeds the
first time (docs/benchmarks.md, "The prepared GPU run")."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.slow
def test_the_gpu_bench_runs_every_path_on_the_cpu(tmp_path: Path):
    from gpu import CONFIGS

    done = subprocess.run([sys.executable, "bench/gpu.py", "--dry-run", "--workdir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows = {row["config"]: row for row in lines if "config" in row}
    summary = lines[-1]
    assert list(rows) == list(CONFIGS) and summary["summary"] and summary["dry_run"]
    assert {name: row["failed"][-800:] for name, row in rows.items() if "failed" in row} == {}
    assert {name for name, row in rows.items() if "skipped" in row} == {"sft-qlora-tuneful"}  # NF4 needs CUDA
    for name in ("sft-full", "sft-lora", "dpo"):
        for framework in ("tuneful", "trl"):
            row = rows[f"{name}-{framework}"]
            assert row["trained_tok_s"] > 0 and row["steps"] == 3 and row["peak_gb"] > 0
            assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
    assert rows["grpo-tuneful"]["completion_tok_s"] > 0 and rows["grpo-trl"]["completion_tok_s"] > 0
    for key in ("device", "sft_full_ratio", "sft_lora_ratio", "dpo_ratio", "grpo_ratio", "qlora_peak_gb",
                "peak_memory_share_vs_trl"):
        assert key in summary
    assert summary["device"] == "cpu" and summary["sft_full_ratio"] > 0 and summary["dpo_ratio"] > 0
    # the same random model and data: both frameworks start from the same loss (random init: about log(vocab))
    assert summary["sft_first_loss_relative_gap"] < 0.05
    # packing keeps examples apart (bf16 autocast on the CPU); the loss kernels compute the same sum
    assert rows["packing-check"]["sdpa_relative_loss_diff"] < 1e-2
    assert rows["packing-check"]["flash_varlen"].startswith("not run")
    kernels = rows["loss-kernels"]
    assert kernels["tuneful_chunked"]["loss"] == pytest.approx(kernels["full_logits"]["loss"], rel=1e-4)
    assert kernels["liger_fused"].startswith("not run")


def test_the_gpu_bench_lists_what_the_device_needs():
    done = subprocess.run([sys.executable, "bench/gpu.py", "--wheels"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = json.loads(done.stdout.strip().splitlines()[-1])
    assert listed["missing"] == {}  # the test environment has all the run needs (TRL: the dev extra)
    assert "flash_attn" in listed["optional_missing"] and "scripts/gpu-wheels" in listed["download"]
