"""CLI contracts: template mask --json, data inspect (the README's main job), help stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import needs_fixtures
from tuneful.cli.main import app
from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.templates.registry import resolve

CONV = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}]


@needs_fixtures
def test_mask_json_contract_one_and_list(fixtures: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    tok_dir = fixtures / "tokenizers" / "qwen2.5"
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    one.write_text(json.dumps(CONV))
    many.write_text(json.dumps([CONV, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], {"messages": CONV}]))
    runner = CliRunner()
    res = runner.invoke(app, ["template", "mask", "--tokenizer", str(tok_dir), "--messages", str(one), "--json"])
    assert res.exit_code == 0, res.output
    [got] = json.loads(res.stdout)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    expected = ConversationTokenizer(tok, resolve(None, tok))(CONV)
    assert got == {"input_ids": expected.input_ids, "train_mask": expected.train_mask}
    res = runner.invoke(app, ["template", "mask", "--tokenizer", str(tok_dir), "--messages", str(many), "--json",
                              "--template", "gemma"])
    got = json.loads(res.stdout)
    assert len(got) == 3 and set(got[0]) == {"input_ids", "train_mask"} and got[0] == got[2]
    assert got[1]["error"]["type"] == "TemplateError" and "alternate" in got[1]["error"]["message"]


def test_mask_text_view_marks_trained_tokens(tmp_path: Path):
    from tuneful.tokenization.masking import starter_tokenizer

    folder = tmp_path / "tok"
    starter_tokenizer().save_pretrained(folder)
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps(CONV))
    res = CliRunner().invoke(app, ["template", "mask", "--tokenizer", str(folder), "--messages", str(conv)])
    assert res.exit_code == 0 and "tokens trained" in res.stdout and "<|im_end|>'" in res.stdout


def test_data_inspect_default_runs_on_shipped_sample():
    res = CliRunner().invoke(app, ["data", "inspect", "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "records read" in res.stdout and "trained fraction" in res.stdout
    assert "preflight: all checks passed" in res.stdout


def test_data_inspect_reports_truncation_and_skips(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": CONV}) + "\n{broken\n" + json.dumps({"messages": [CONV[0]] + [
        {"role": "assistant", "content": "word " * 200}]}) + "\n")
    res = CliRunner().invoke(app, ["data", "inspect", str(data), "--max-length", "64", "--overlong", "truncate"])
    assert res.exit_code == 0, res.output
    assert "invalid_json: 1" in res.stdout and "overlong" in res.stdout


def test_help_does_not_import_torch():
    code = "import sys; from tuneful.cli.main import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
