"""The UI's own parts without a browser: the root folder, the settings form, run processes, token kinds, the
command's safety checks. (The pages in a real browser: tests/test_ui_browser.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneful.cli.main import app
import yaml

from tuneful.config import ConfigError, build, describe, problems_by_setting, to_dict, to_yaml
from tuneful.data.types import Conversation
from tuneful.sft.config import SFTConfig
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.templates.registry import builtin
from tuneful.tokenization.view import REASONING, TOOL_CALL, TOOL_RESULT, TRAINED, token_kinds
from tuneful.ui import runs
from tuneful.registry import TRAINERS
from tuneful.ui.forms import check_form, fields, recipe_values, unknown_settings
from tuneful.ui.paths import OutsideRoot, RootFolder

from tiny import free_port, model_and_data

REQUIRED = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}


# --- the root folder ---------------------------------------------------------------------------------------

def test_root_folder_refuses_every_way_out(tmp_path: Path):
    (tmp_path / "data.jsonl").write_text("{}\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    root = RootFolder(tmp_path)
    assert root.path("data.jsonl") == tmp_path.resolve() / "data.jsonl"
    assert root.path(str(tmp_path / "runs" / "new")) == tmp_path.resolve() / "runs" / "new"  # may not exist yet
    for way_out in ("/etc/passwd", "../x", "runs/../../x", "link/file", str(outside)):
        with pytest.raises(OutsideRoot, match="outside the UI's root folder"):
            root.path(way_out)
    with pytest.raises(FileNotFoundError):
        root.path("missing.jsonl", must_exist=True)


def test_a_source_is_never_read_from_the_ui_process_working_folder(tmp_path: Path, monkeypatch):
    """issue 46: ``data/x.jsonl`` typed on the Data page was taken for a hub id, then read relative to the UI
    process's working folder — outside the root."""
    (tmp_path / "root").mkdir()
    root = RootFolder(tmp_path / "root")
    outside = tmp_path / "cwd"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "x.jsonl").write_text('{"instruction": "secret", "output": "s"}\n')
    monkeypatch.chdir(outside)
    with pytest.raises(FileNotFoundError):
        root.source("data/x.jsonl")
    with pytest.raises(OutsideRoot, match="working folder"):
        root.source("hf:data/x.jsonl")


def test_the_train_form_holds_every_path_setting_to_the_root(tmp_path: Path):
    from tuneful.ui.train_page import path_problems

    cfg = build(TRAINERS["dpo"].settings_class(), None, [
        "model.name_or_path=m", "data.train=t.jsonl", "data.template=/etc/chat.jinja", "data.tokenizer=../tok",
        "data.cache_dir=/tmp/elsewhere", "dpo.reference_model=/opt/ref"])
    problems = path_problems(RootFolder(tmp_path), cfg)
    assert set(problems) == {"data.template", "data.tokenizer", "data.cache_dir", "dpo.reference_model"}


def test_the_train_form_holds_the_python_files_a_run_executes_to_the_root(tmp_path: Path):
    """GRPO's tools file and a reward function given as FILE.py:FUNCTION are code the run executes."""
    from tuneful.ui.train_page import path_problems

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tools.py").write_text("def f(x: int):\n    return x\n")
    cfg = build(TRAINERS["grpo"].settings_class(), None, [
        "model.name_or_path=m", "data.train=t.jsonl", f"grpo.tools={outside / 'tools.py'}",
        f"grpo.rewards=python:{outside / 'rewards.py'}:score,python:tuneful.sandbox.agent:agent_reward"])
    (tmp_path / "root").mkdir()
    problems = path_problems(RootFolder(tmp_path / "root"), cfg)
    assert set(problems) == {"grpo.tools", "grpo.rewards"}


def test_root_folder_sources(tmp_path: Path):
    (tmp_path / "data.jsonl").write_text("{}\n")
    root = RootFolder(tmp_path)
    assert root.source("") is None  # the page's default
    assert root.source("data.jsonl") == str(tmp_path.resolve() / "data.jsonl")
    assert root.source("hf:tatsu-lab/alpaca") == "tatsu-lab/alpaca"  # a hub id only when typed as one
    with pytest.raises(FileNotFoundError, match="hf:owner/name"):
        root.source("tatsu-lab/alpaca")
    assert root.source("sandbox", names=("sandbox",)) == "sandbox"
    for refused in ("/etc/passwd", "../../etc/hosts", "sandbox"):
        with pytest.raises((OutsideRoot, FileNotFoundError)):
            root.source(refused)


# --- the settings form -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TRAINERS))
def test_form_round_trips_every_trainers_settings(name: str):
    """Shown as the page shows them and read back, the fields give exactly the settings the command builds."""
    cls = TRAINERS[name].settings_class()
    recipe = json.loads(json.dumps(REQUIRED))
    if name in ("grpo", "online-dpo"):
        recipe[name.replace("-", "_")] = {"rewards": ["python:r.py:f"]}
    form_fields = fields(cls, recipe)
    shown = [f.value if f.boolean else f.text for f in form_fields]
    result = check_form(cls, form_fields, shown)
    assert result.ok, result.markdown()
    assert to_dict(result.settings) == to_dict(build(cls, values=recipe))
    assert [f.key for f in form_fields] == [key for key, _, _ in describe(cls)]


def test_form_reports_every_problem_under_its_setting():
    form_fields = fields(SFTConfig, {"train": {"lr": "fast", "micro_batch_size": 0}})
    shown = [f.value if f.boolean else f.text for f in form_fields]
    result = check_form(SFTConfig, form_fields, shown)
    assert not result.ok
    assert set(result.problems) >= {"train.lr", "model.name_or_path", "data.train"}
    assert "expected float, got 'fast'" in result.problems["train.lr"][0]
    text = result.markdown()
    assert "**train.lr**: expected float" in text and "**data.train**: required" in text


def test_form_reads_empty_optional_lists_and_numbers():
    form_fields = fields(SFTConfig, REQUIRED)
    by_key = {f.key: f for f in form_fields}
    assert by_key["lora.target_modules"].text == "[all-linear]"
    assert by_key["lora.target_modules"].parse("[q_proj, v_proj]") == ["q_proj", "v_proj"]
    assert by_key["train.lr"].parse("1e-4") == "1e-4"  # YAML 1.1 reads it as text; build() makes it a float
    shown = [f.value if f.boolean else f.text for f in form_fields]
    shown[[f.key for f in form_fields].index("train.lr")] = "1e-4"
    assert check_form(SFTConfig, form_fields, shown).settings.train.lr == 1e-4
    assert recipe_values(form_fields, shown)["data"]["train"] == "t.jsonl"


def test_recipe_keys_the_form_has_no_field_for_are_named():
    from tuneful.dpo.config import DPOConfig

    dpo_recipe = {"model": {"name_or_path": "m"}, "dpo": {"beta": 0.2}, "train": {"lr": 1e-5, "lrr": 1}}
    assert unknown_settings(SFTConfig, dpo_recipe) == ["dpo", "train.lrr"]
    assert unknown_settings(DPOConfig, dpo_recipe) == ["train.lrr"]


def test_build_applies_yaml_then_values_then_overrides(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 0.1\n  epochs: 2\n")
    cfg = build(SFTConfig, recipe, ["train.epochs=3"], values={**REQUIRED, "train": {"lr": 0.2, "epochs": 5}})
    assert (cfg.train.lr, cfg.train.epochs) == (0.2, 3.0)
    assert to_dict(build(SFTConfig, values=yaml.safe_load(to_yaml(cfg)))) == to_dict(cfg)
    with pytest.raises(ConfigError) as caught:
        build(SFTConfig, values={"train": {"lr": "x", "nope": 1}})
    grouped = problems_by_setting(caught.value.problems, ["train.lr", "model.name_or_path"])
    assert "train.lr" in grouped and "model.name_or_path" in grouped and "" in grouped  # train.nope: no such setting


# --- token kinds (the Data page's highlighting) ---------------------------------------------------------------

def test_token_kinds_tell_text_calls_reasoning_and_tool_results_apart(starter_tok):
    conversation = Conversation.from_json({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Use the tool.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]})
    template = builtin("tuneful")
    example = ConversationTokenizer(starter_tok, template).tokenize_many([conversation])[0]
    pieces = token_kinds(conversation, example)
    assert "".join(text for text, _ in pieces) == example.rendered.text
    by_kind: dict = {}
    for text, kind in pieces:
        by_kind[kind] = by_kind.get(kind, "") + text
    assert by_kind[REASONING] == "Use the tool."
    assert "<tool_call>weather\ncity: Paris\n</tool_call>" in by_kind[TOOL_CALL]
    assert by_kind[TOOL_RESULT] == "sunny"
    assert "It is sunny.<|end|>" in by_kind[TRAINED]  # the reply, its end of turn, the markup around a trace
    trained_text = "".join(text for (text, kind) in pieces if kind in (TRAINED, TOOL_CALL, REASONING))
    masked = "".join(example.rendered.text[s:e] for (s, e), m in zip(example.offsets, example.train_mask) if m)
    assert trained_text == masked  # the kinds only label what the mask trains; they never widen it


# --- runs: processes of their own ---------------------------------------------------------------------------

def _wait(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_run_records_its_command_exit_and_failure(tmp_path: Path):
    ok = runs.launch(tmp_path / "ok", ["--help"], "help", cwd=tmp_path)
    assert ok.command == "tuneful --help" and ok.pid
    _wait(lambda: runs.status(tmp_path / "ok") != "running")
    assert runs.status(tmp_path / "ok") == "finished"
    assert "Usage" in (tmp_path / "ok" / runs.LOG_FILE).read_text() and "Commands" in runs.log_tail(tmp_path / "ok")
    runs.launch(tmp_path / "bad", ["sft", "missing.yaml"], "sft", cwd=tmp_path)
    _wait(lambda: runs.status(tmp_path / "bad") != "running")
    assert runs.status(tmp_path / "bad").startswith("failed (exit ")
    assert {p.name for p in runs.find_runs(tmp_path)} == {"ok", "bad"}
    assert runs.summary(tmp_path / "ok")["kind"] == "help"


def test_a_shell_still_inside_exec_is_alive():
    """Right after Popen returns, the shell's /proc command line often reads empty (exec has not set it up
    yet): the run is alive all the same; once it ends (and is reaped) it is not."""
    import subprocess

    for _ in range(20):
        shell = subprocess.Popen(["/bin/sh", "-c", "sleep 0.05; echo $? > /dev/null"])
        assert runs._alive(shell.pid, runs._created(shell.pid))
        shell.wait()
        assert not runs._alive(shell.pid, runs._created(shell.pid))


def test_a_run_that_ends_while_its_status_is_read_is_finished(tmp_path: Path, monkeypatch):
    (tmp_path / runs.RUN_FILE).write_text(json.dumps({"args": ["--help"], "command": "tuneful --help",
                                                      "kind": "help", "pid": 12345, "started": time.time()}))

    def ends_now(pid, created):  # the shell writes its exit code and ends between the two reads
        (tmp_path / runs.EXIT_FILE).write_text("0\n")
        return False

    monkeypatch.setattr(runs, "_alive", ends_now)
    assert runs.status(tmp_path) == "finished"


def test_a_run_whose_process_number_was_reused_is_not_running(tmp_path: Path):
    import os

    import psutil

    earlier = psutil.Process(os.getpid()).create_time() - 100  # the run's shell had the number before this process
    (tmp_path / runs.RUN_FILE).write_text(json.dumps({"args": ["sft"], "command": "tuneful sft", "kind": "sft",
                                                      "pid": os.getpid(), "pid_created": earlier,
                                                      "started": time.time()}))
    assert runs.status(tmp_path) == "ended"  # this test's process holds the number, not the run's shell
    assert not runs.stop(tmp_path)


@pytest.mark.slow
def test_run_stops_and_resumes_from_its_checkpoint(tmp_path: Path):
    """Stop a training the UI started, resume it: it continues from the checkpoint to the same last step."""
    model_and_data(tmp_path)
    recipe = tmp_path / "run" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(to_yaml(build(SFTConfig, None, [
        f"model.name_or_path={tmp_path / 'model'}", f"data.train={tmp_path / 'train.jsonl'}", "train.max_steps=300",
        "train.save_every=10", "train.micro_batch_size=2", f"train.output_dir={tmp_path / 'run'}",
        "train.report_to=", "train.progress=false"])))
    folder = tmp_path / "run"
    runs.launch(folder, ["sft", str(recipe)], "sft", cwd=tmp_path)
    _wait(lambda: (folder / "checkpoints").exists() and any((folder / "checkpoints").glob("*/state.json")))
    assert runs.status(folder) == "running"
    assert runs.stop(folder)
    _wait(lambda: runs.status(folder) != "running", 60)
    assert runs.status(folder) == "stopped"
    stopped_at = max(r["step"] for r in runs.metrics(folder))
    assert stopped_at < 300
    runs.resume(folder, cwd=tmp_path)
    _wait(lambda: runs.status(folder) != "running", 300)
    assert runs.status(folder) == "finished", runs.log_tail(folder)
    steps = [r["step"] for r in runs.metrics(folder) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # one row per step: resumed, not restarted
    assert "--- resumed ---" in (folder / runs.LOG_FILE).read_text()


# --- the command ------------------------------------------------------------------------------------------

def test_ui_refuses_a_public_host_without_credentials(tmp_path: Path, monkeypatch):
    res = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--root", str(tmp_path)])
    assert res.exit_code != 0 and "--auth-env" in res.output
    monkeypatch.setenv("TUNEFUL_UI_LOGIN", "not-a-pair-s3cret")
    res = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--auth-env", "TUNEFUL_UI_LOGIN", "--root", str(tmp_path)])
    assert res.exit_code != 0 and "USER:PASSWORD" in res.output and "s3cret" not in res.output
    res = CliRunner().invoke(app, ["ui", "--root", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_sandbox_sft_recipe_is_the_demos_recipe(tmp_path: Path):
    from tuneful.sandbox.demo import DemoSettings, quick_sizes, sft_overrides

    res = CliRunner().invoke(app, ["sandbox", "sft-recipe", "--out", str(tmp_path), "--quick"])
    assert res.exit_code == 0, res.output
    cfg = build(SFTConfig, tmp_path / "sft.yaml")
    settings = quick_sizes(DemoSettings(out=tmp_path, agent_traces=900), agent=True)
    data = tmp_path / "data"
    expected = build(SFTConfig, None, sft_overrides(settings, Path(cfg.model.name_or_path), data / "train.jsonl", data / "replay.jsonl")
                     + ["train.resume=true"])
    assert to_dict(cfg) == to_dict(expected)
    assert len((data / "train.jsonl").read_text().splitlines()) > 100


def test_help_lists_the_ui():
    res = CliRunner().invoke(app, ["ui", "--help"])
    assert res.exit_code == 0 and "--root" in res.output and "--auth-env" in res.output


def test_a_run_reads_and_writes_only_inside_the_root(tmp_path: Path):
    from tuneful.samples import sandbox_base_dir
    from tuneful.ui.train_page import path_problems

    root = RootFolder(tmp_path)
    inside = build(SFTConfig, values={"model": {"name_or_path": str(sandbox_base_dir())},  # shipped: allowed
                                      "data": {"train": "later.jsonl"}, "train": {"output_dir": "runs/a"}})
    assert path_problems(root, inside) == {}  # a file still to be written is the trainer's to report
    outside = build(SFTConfig, values={"model": {"name_or_path": "../m"}, "train": {"output_dir": "/tmp/elsewhere"},
                                       "data": {"train": [{"path": "a.jsonl", "weight": 1},
                                                          {"path": "/etc/passwd", "weight": 1}]}})
    assert set(path_problems(root, outside)) == {"model.name_or_path", "train.output_dir", "data.train"}


def _start_ui(root: Path, *extra: str):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tuneful.cli.main", "ui", "--port", str(port), "--root", str(root),
                                *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("Running on"):
            return process
    raise AssertionError("tuneful ui did not start")


@pytest.mark.slow
def test_runs_outlive_the_ui_unless_asked(tmp_path: Path):
    """Closing the UI leaves its runs going; with --stop-runs-on-exit it stops those started while it was open."""
    import signal

    for flag, expected in (((), "running"), (("--stop-runs-on-exit",), "stopped")):
        ui = _start_ui(tmp_path, *flag)
        folder = tmp_path / f"run{len(flag)}"
        runs.launch(folder, ["ui", "--port", str(free_port()), "--root", str(tmp_path)], "long",
                    cwd=tmp_path)  # any long-running command
        _wait(lambda: "Running on" in runs.log_tail(folder), 120)
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
        _wait(lambda: runs.status(folder) != "running", 30) if expected == "stopped" else time.sleep(2)
        assert runs.status(folder) == expected
        runs.stop(folder)
        _wait(lambda: runs.status(folder) != "running", 30)
