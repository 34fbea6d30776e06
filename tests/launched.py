"""Helpers for the tests that run tuneful under ``accelerate launch`` with 2 CPU processes (gloo) and compare
the run with one process: the launch with a shipped accelerate config, and the metrics compared step by step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch_two(config: str, command: str, args: list[str]) -> str:
    """``accelerate launch --config_file recipes/accelerate/CONFIG --num_processes 2 -m tuneful.cli.main COMMAND
    ARGS`` as the README says to run it, with no GPU visible; fails the test with the run's stderr. Its stdout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate" / config), "--num_processes", "2",
              "--main_process_port", str(port), "-m", "tuneful.cli.main", command]
    done = subprocess.run(launch + args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(a: list[dict], b: list[dict], key: str, tolerance: float = 1e-5) -> None:
    """Both runs logged ``key`` at the same steps (at least one), with values within ``tolerance``."""
    left, right = [(r["step"], r[key]) for r in a if key in r], [(r["step"], r[key]) for r in b if key in r]
    assert [s for s, _ in left] == [s for s, _ in right] and left
    for (_, x), (_, y) in zip(left, right):
        assert abs(x - y) < tolerance, (key, left, right)


def four_step_sft(workdir: Path, *extra: str) -> list[str]:
    """Overrides for 4 SFT steps of the tiny model on the starter data (``tiny.model_and_data``), a checkpoint at
    step 2 and a held-out split; ``extra`` adds or overrides."""
    return [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}", "train.max_steps=4",
            "train.save_every=2", "train.micro_batch_size=4", "train.progress=false", "data.max_length=256",
            "train.lr=1e-3", "data.eval_fraction=0.1", *extra]
