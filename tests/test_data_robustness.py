"""Every input accounted for: inputs that used to be dropped silently or end in a traceback (issue 46) are read,
or refused by name with file:line and a rule that ``--on-error skip`` counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneful.cli.main import app
from tuneful.data.loader import load, write_jsonl
from tuneful.data.types import RecordError

GOOD = {"instruction": "Say hi.", "output": "Hi"}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_folder_of_jsonl_json_and_csv_reads_every_file(tmp_path: Path):
    folder = tmp_path / "mixed"
    _write(folder / "a.jsonl", json.dumps(GOOD) + "\n")
    _write(folder / "b.csv", "instruction,output\nAdd one and one.,Two.\n")
    _write(folder / "c.json", json.dumps([{"instruction": "Name a colour.", "output": "Blue."}]))
    _write(folder / "README.md", "# a dataset card, not records\n")
    result = load(str(folder))
    assert result.report.records_in == 3 and len(result.conversations) == 3
    assert sorted(c.to_dicts()[-1]["content"] for c in result.conversations) == ["Blue.", "Hi", "Two."]


def test_a_bad_line_in_a_folder_is_named_by_file_and_line(tmp_path: Path):
    folder = tmp_path / "d"
    _write(folder / "train.jsonl", json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(RecordError) as err:
        load(str(folder))
    assert err.value.where == f"{folder / 'train.jsonl'}:2"


def test_a_folder_reads_only_its_split_and_refuses_files_it_cannot_read(tmp_path: Path):
    folder = tmp_path / "splits"
    _write(folder / "train.jsonl", json.dumps(GOOD) + "\n")
    _write(folder / "test.jsonl", json.dumps({"instruction": "held out", "output": "x"}) + "\n")
    assert [c.to_dicts()[-1]["content"] for c in load(str(folder)).conversations] == ["Hi"]
    assert [c.to_dicts()[-1]["content"] for c in load(str(folder), split="test").conversations] == ["x"]
    _write(folder / "train_notes.txt", "not records")
    with pytest.raises(ValueError, match="train_notes.txt cannot be read as records"):
        load(str(folder))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_byte_order_mark_does_not_cost_the_first_record(tmp_path: Path, suffix: str):
    body = json.dumps(GOOD) + "\n" if suffix == ".jsonl" else json.dumps([GOOD])
    path = _write(tmp_path / f"bom{suffix}", b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert load(path).report.records_in == 1 and load(path).conversations[0].to_dicts()[-1]["content"] == "Hi"


BAD_LINES = {
    "duplicate_key": '{"instruction": "Say hi.", "output": "Hi", "output": "Bye"}',
    "non_finite_number": '{"instruction": "Say hi.", "output": "Hi", "score": NaN}',
    "too_deep": '{"instruction": "x", "output": "y", "z": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "invalid_unicode": '{"instruction": "Say hi.", "output": "Hi \\ud800"}',
    "bad_instance": json.dumps({"instruction": "Add.", "instances": ["not an object"]}),
}


SEED_TASK = {"instruction": "Add.", "instances": [{"input": "1 1", "output": "2"}]}


@pytest.mark.parametrize("rule", sorted(BAD_LINES))
def test_inputs_that_used_to_pass_or_crash_are_record_errors(tmp_path: Path, rule: str):
    good = json.dumps(SEED_TASK if rule == "bad_instance" else GOOD)
    path = _write(tmp_path / "d.jsonl", "\n".join([good, BAD_LINES[rule], good]) + "\n")
    with pytest.raises(RecordError) as err:
        load(path)
    assert err.value.rule == rule and err.value.where == f"{path}:2"
    skipped = load(path, on_error="skip")
    assert skipped.report.skipped_by_reason == {rule: 1} and len(skipped.conversations) == 2


def test_a_valid_surrogate_pair_is_kept(tmp_path: Path):
    path = _write(tmp_path / "emoji.jsonl", '{"instruction": "Say hi.", "output": "Hi \\ud83d\\ude00"}\n')
    assert load(path).conversations[0].to_dicts()[-1]["content"] == "Hi \U0001F600"


def test_a_ragged_csv_names_its_line_and_skip_keeps_the_rest(tmp_path: Path):
    path = _write(tmp_path / "r.csv", "instruction,output\nSay hi.,Hi\nToo,many,fields\nName a colour.,Blue.\n")
    with pytest.raises(RecordError) as err:
        load(path)
    assert err.value.rule == "ragged_row" and err.value.where == f"{path}:3"
    kept = load(path, on_error="skip")
    assert [c.to_dicts()[-1]["content"] for c in kept.conversations] == ["Hi", "Blue."]
    assert kept.report.skipped_by_reason == {"ragged_row": 1}


def test_convert_skips_without_a_traceback_and_writes_whole_files(tmp_path: Path):
    source = _write(tmp_path / "d.jsonl", "\n".join([json.dumps(GOOD), BAD_LINES["invalid_unicode"]]) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["data", "convert", str(source), "--out", str(out), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["skipped_by_reason"] == {"invalid_unicode": 1}
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_a_failing_write_leaves_the_previous_file(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    good = load(_write(tmp_path / "d.jsonl", json.dumps(GOOD) + "\n")).conversations

    def items():
        yield from good
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        write_jsonl(items(), out)
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
