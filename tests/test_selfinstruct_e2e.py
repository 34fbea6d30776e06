"""Self-Instruct end to end: tuneful generate against a real OpenAI-compatible server (tuneful serve
with the sandbox model) through the openai client; killed with SIGKILL mid-run and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneful.serve.server import ChatServer, ServeSettings


@pytest.fixture()
def teacher_url(sandbox_chat):
    server = ChatServer(sandbox_chat, ServeSettings(port=0, max_batch=8))
    thread = server.start_in_thread()
    yield server.url + "/v1"
    server.stop()
    thread.join(10)


def _command(out: Path, url: str, n: int) -> list[str]:
    return [sys.executable, "-m", "tuneful.cli.main", "generate", "--out", str(out), "--n", str(n),
            "--teacher-model", "sandbox", "--teacher-base-url", url, "--requests-per-round", "3",
            "--max-tokens", "40", "--max-rounds", "60", "--seed", "3"]


@pytest.mark.slow
def test_generate_against_a_served_model_survives_kill_9_and_feeds_sft(teacher_url, tmp_path: Path):
    out, n = tmp_path / "run", 8
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(_command(out, teacher_url, n), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: possibly in the middle of the next round
    proc.wait(30)
    rounds_before = journal.read_text().count("\n")
    assert rounds_before >= 1
    assert not (out / "data.jsonl").exists()  # the run never finished

    done = subprocess.run(_command(out, teacher_url, n), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert summary["accepted"] == n == report["accepted"]
    assert report["resumed_from_round"] == rounds_before
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    instructions = [t["instruction"] for t in tasks]
    assert len(instructions) == n == len(set(instructions))  # no loss, no duplicates
    assert report["teacher_this_run"]["requests"] > 0 and report["failed_requests"] == 0
    assert sum(report["rejected_by_reason"].values()) == report["rejected"]

    # The output is canonical conversation JSONL that SFT's data stage accepts (load → preflight).
    from tuneful.sandbox.base import shipped_base_dir
    from tuneful.sft.config import DataSettings
    from tuneful.sft.data import prepare_data
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    data = prepare_data(DataSettings(train=str(out / "data.jsonl"), template="tuneful", allow_template_change=True,
                                     packing=False), tokenizer, seed=0)
    assert len(data.train) == report["instances"] > 0


class _ScriptedTeacher:
    """A teacher that answers Alpaca-style prompts with fixed triples (tests the style's plumbing)."""

    def __init__(self):
        from tuneful.selfinstruct.teacher import TeacherStats

        self.stats = TeacherStats()
        self.calls = 0

    def complete(self, prompts, *, max_tokens, temperature, seed=None):
        topics = [("rivers", "Peru", "Work out the sum of 3 and 4 step by step."),
                  ("mountains", "Chile", "Explain how to multiply six by seven without a calculator.")]
        replies = []
        for _ in prompts:
            noun, country, third = topics[self.calls % 2]
            self.calls += 1
            replies.append(f" Name two {noun} found in {country}.\n4. Input:\n<none>\n4. Output:\n"
                           f"Two {noun}.\n###\n5. Instruction: Draw a map of {country}.\n5. Input:\n<none>\n"
                           f"5. Output:\nNo.\n###\n6. Instruction: {third}\n"
                           f"6. Input:\n<none>\n6. Output:\nDone.")
        return replies

    def close(self):
        pass


def test_alpaca_style_counts_every_rejection(tmp_path: Path):
    from tuneful.selfinstruct.loop import GenerateSettings, run_generate

    teacher = _ScriptedTeacher()
    report = run_generate(GenerateSettings(out=tmp_path, n=3, style="alpaca", requests_per_round=1, progress=False),
                          teacher)
    assert report["accepted"] == 3 and report["rounds"] == 2
    assert report["rejected_by_reason"]["heuristic:blacklisted_word:draw"] == 2
    assert report["rejected_by_reason"]["target:beyond_n"] == 1
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][0]["content"] == "Name two rivers found in Peru."


def test_local_teacher_runs_the_paper_loop(tmp_path: Path):
    from tuneful.selfinstruct.loop import GenerateSettings, run_generate
    from tuneful.selfinstruct.teacher import LocalTeacher

    teacher = LocalTeacher("sandbox", device="cpu")
    report = run_generate(GenerateSettings(out=tmp_path, n=2, requests_per_round=2, max_tokens=32, progress=False,
                                           max_rounds=30), teacher)
    assert report["accepted"] == 2 and report["teacher_this_run"]["requests"] >= 2
    assert (tmp_path / "report.md").read_text().startswith("# Self-Instruct run — 2 / 2")
