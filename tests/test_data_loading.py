"""Loading from files and dataset folders, skip accounting, the CLI contract, and the real samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import needs_fixtures
from tuneful.cli.main import app
from tuneful.data.formats import ConvertOptions
from tuneful.data.loader import load, write_jsonl
from tuneful.data.types import RecordError

GOOD = {"instruction": "Say hi.", "output": "Hi"}


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_fail_with_file_and_line(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD), "{not json", json.dumps(GOOD)])
    with pytest.raises(RecordError) as err:
        load(path)
    assert err.value.where == f"{path}:2" and err.value.rule == "invalid_json"


def test_skip_counts_every_reason(tmp_path: Path):
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({"instruction": "q", "output": ""}),  # empty assistant
        json.dumps({"instruction": "q", "output": 3}),  # not a string
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),  # another format
        "",
        json.dumps(GOOD),
    ]
    result = load(_jsonl(tmp_path / "d.jsonl", lines), on_error="skip")
    assert result.report.summary() == {
        "records_in": 6,
        "written": 2,
        "skipped": 4,
        "skipped_by_reason": {"content_not_string": 1, "empty_assistant": 1, "format_mismatch": 1, "invalid_json": 1},
        "ignored_fields": {},
        "notes": {},
    }
    assert [where for where, _ in result.report.skipped] == [f"{tmp_path}/d.jsonl:{n}" for n in (2, 3, 4, 5)]


def test_json_array_csv_and_parquet_sources(tmp_path: Path):
    import pandas as pd

    records = [GOOD, {"instruction": "Add.", "input": "1 1", "output": "2"}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    pd.DataFrame(records).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "d.parquet")
    for name in ("d.json", "d.csv", "d.parquet"):
        result = load(tmp_path / name)
        assert [c.to_dicts()[-1]["content"] for c in result.conversations] == ["Hi", "2"], name
        assert result.report.format == "alpaca"


def test_csv_cell_holding_messages_json(tmp_path: Path):
    import pandas as pd

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pd.DataFrame({"messages": [json.dumps(msgs)]}).to_csv(tmp_path / "m.csv", index=False)
    assert load(tmp_path / "m.csv").conversations[0].to_dicts() == msgs


def test_a_dataset_folder_is_read_file_by_file(tmp_path: Path):
    """A local dataset folder (the layout of a Hugging Face dataset repository): its split's files, each read by
    tuneful's own reader (tests/test_data_robustness.py has folders of mixed files)."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"})])
    result = load(str(folder))
    assert result.report.format == "preference"
    assert result.preferences[0].chosen.content == "4"
    assert result.report.skipped == []


def test_missing_local_file_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load(tmp_path / "nope.jsonl")


def test_explicit_format_overrides_detection(tmp_path: Path):
    rec = {"instruction": "q", "output": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
    path = _jsonl(tmp_path / "d.jsonl", [json.dumps(rec)])
    with pytest.raises(RecordError, match="ambiguous_format"):
        load(path)
    assert load(path, format="messages").conversations[0].to_dicts()[-1]["content"] == "b"


def test_cli_convert_contract(tmp_path: Path):
    src = _jsonl(tmp_path / "in.jsonl", [json.dumps(GOOD), "{bad", json.dumps(GOOD)])
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["data", "convert", str(src), "--on-error", "skip", "--out", str(out)])
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last == {"records_in": 3, "written": 2, "skipped": 1, "skipped_by_reason": {"invalid_json": 1},
                    "ignored_fields": {}, "notes": {}}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi"}]}] * 2


def test_cli_convert_fail_mode_names_location(tmp_path: Path):
    src = _jsonl(tmp_path / "in.jsonl", [json.dumps(GOOD), "{bad"])
    res = CliRunner().invoke(app, ["data", "convert", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and f"{src}:2" in res.output and "--on-error skip" in res.output


def test_canonical_output_round_trips(tmp_path: Path):
    first = load(_jsonl(tmp_path / "a.jsonl", [json.dumps(GOOD), json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})]),
                 on_error="skip")
    # mixed formats in one file: the second record does not match the detected format and is counted
    assert first.report.skipped_by_reason == {"format_mismatch": 1}
    write_jsonl(first.items, tmp_path / "b.jsonl")
    again = load(tmp_path / "b.jsonl")
    assert again.items == first.items


# --- the real samples in ../shared/fixtures/data ----------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    "relpath, fmt, kwargs, records_in, written",
    [
        ("sharegpt/dummy_conversation.json", "sharegpt", {}, 500, 500),
        ("llamafactory/alpaca_en_demo.json", "alpaca", {}, 999, 999),
        ("llamafactory/dpo_en_demo.json", "sharegpt_preference", {}, None, None),
        ("self_instruct/seed_tasks.jsonl", "self_instruct", {}, 175, None),
        ("oasst/en_100_tree.jsonl", "oasst", {"options": ConvertOptions(oasst_paths="top")}, 100, None),
    ],
)
def test_real_samples_load(fixtures: Path, relpath, fmt, kwargs, records_in, written):
    result = load(fixtures / "data" / relpath, on_error="skip", **kwargs)
    report = result.report
    assert report.format == fmt
    if records_in is not None:
        assert report.records_in == records_in
    if written is not None:
        assert report.written == written
    assert report.written > 0
    assert report.written + report.skipped_count >= report.records_in or fmt in ("oasst", "self_instruct")


@needs_fixtures
def test_oasst_all_paths_yield_more_than_top(fixtures: Path):
    path = fixtures / "data" / "oasst" / "en_100_tree.jsonl"
    top = load(path, on_error="skip", options=ConvertOptions(oasst_paths="top"))
    every = load(path, on_error="skip", options=ConvertOptions(oasst_paths="all"))
    assert top.report.written + top.report.skipped_count == 100
    assert every.report.written > top.report.written
    for conv in every.conversations:
        assert conv.messages[-1].role == "assistant"
        assert all(a.role != b.role for a, b in zip(conv.messages, conv.messages[1:]))


@needs_fixtures
def test_mt_bench_questions_are_not_silently_guessed(fixtures: Path):
    with pytest.raises(RecordError, match="unknown_format"):
        load(fixtures / "data" / "mt_bench" / "mt_bench_question.jsonl")


def test_a_stream_cut_into_slices_converts_as_one_stream():
    """What the prepared-data workers do: the format fixed on the first recognisable record, each slice
    converted alone, the reports merged in order == the loader over the whole stream (bad records before and
    after the format is known, an unread field)."""
    from tuneful.data.loader import LoadReport, items_of_slice, iter_items, peek_format
    from tuneful.data.sources import RawRecord

    values = [{"foo": 1}, "text", {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
              {"messages": [{"role": "user", "content": "hi"}]}, {"instruction": "Say hi.", "output": "Hi.", "x": 1},
              {"instruction": "Say bye.", "output": "Bye."}, {"instruction": "Name a colour.", "output": "Red."}]
    raws = [RawRecord(f"r:{i + 1}", value) for i, value in enumerate(values)]
    raws.insert(1, RawRecord("r:bad", error=RecordError("invalid_json", "Expecting value", "r:bad")))
    whole = LoadReport()
    expected = [(where, item) for where, item in iter_items(iter(raws), whole, on_error="skip")]

    fmt, detected_at, stream = peek_format(iter(raws))
    assert (fmt.name, detected_at) == ("alpaca", 3) and list(stream) == raws
    merged, got = LoadReport(format=fmt.name), []
    for cut in ((0, 2), (2, 5), (5, 8)):
        part = LoadReport()
        got += items_of_slice(list(enumerate(raws))[cut[0]:cut[1]], part, format=fmt.name, detected_at=detected_at,
                              on_error="skip")
        merged.merge(LoadReport.from_json(json.loads(json.dumps(part.to_json()))))
    assert [(where, item) for _, where, item in got] == expected and len(expected) == 4
    assert [position for position, _, _ in got] == [3, 5, 6, 7]
    assert merged.to_json() == whole.to_json() and merged.ignored_fields == {"x": 1}
    assert [s[0] for s in merged.skipped] == ["r:1", "r:bad", "r:2", "r:4"]
    assert peek_format(iter(raws[:3]))[:2] == (None, 3)
