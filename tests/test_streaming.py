"""Streaming SFT: rows come from a bounded buffer in stream order, a killed run resumes from its checkpoint on
exactly the rows (and losses) of an uninterrupted one across buffer and epoch boundaries, and a problem deep in
the stream stops the run naming the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny import killed_at_step, model_and_data
from tuneful.config import ConfigError, build
from tuneful.sft.config import SFTConfig
from tuneful.sft.trainer import StreamingSFTTrainer, run_sft
from tuneful.tokenization.preflight import PreflightError


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return model_and_data(tmp_path_factory.mktemp("stream"), copies=2)


def config(workdir: Path, out: str, *extra: str) -> SFTConfig:
    return build(SFTConfig, None, [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}",
                                   f"train.output_dir={workdir / out}", "train.progress=false", "data.max_length=256",
                                   "data.streaming=true", "data.stream_buffer=6", "train.micro_batch_size=2",
                                   "train.lr=1e-3", *extra])


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def test_killed_streaming_run_resumes_on_the_same_rows(workdir: Path, monkeypatch):
    common = ("train.max_steps=12", "train.save_every=3", "train.grad_accum=2")
    straight = run_sft(config(workdir, "straight", *common))
    summary = json.loads((straight.model_dir / "tuneful.json").read_text())
    state = summary["stream"]["state"]
    assert state["epoch"] >= 1, "the run is long enough to wrap around the stream"
    records = len((workdir / "train.jsonl").read_text().splitlines())
    assert summary["stream"]["conversations_kept"] == records, "every record counted once, however many epochs"
    assert summary["distributed"]["processes"] == 1

    killed_at_step(monkeypatch, StreamingSFTTrainer, 8, lambda: run_sft(config(workdir, "resumed", *common)))
    checkpoint = sorted((workdir / "resumed" / "checkpoints").glob("step-*"))[-1]
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["step"] == 6 and {"epoch", "batches", "rows", "tally"} <= set(saved["data"])
    run_sft(config(workdir, "resumed", *common))
    assert losses(workdir / "resumed")[-6:] == losses(workdir / "straight")[-6:]


def test_a_problem_deep_in_the_stream_stops_the_run_naming_the_record(workdir: Path, tmp_path: Path):
    lines = (workdir / "train.jsonl").read_text().splitlines()
    long_reply = {"messages": [{"role": "user", "content": "Say a lot."},
                               {"role": "assistant", "content": "word " * 400}]}
    data = tmp_path / "late.jsonl"
    data.write_text("\n".join(lines[:30] + [json.dumps(long_reply)] + lines[30:]) + "\n")
    cfg = config(workdir, "late", f"data.train={data}", "data.overlong=fail", "data.stream_preflight=10",
                 "train.max_steps=40")
    late = len(lines[:30]) + 1  # past the 10 conversations checked before training
    with pytest.raises(PreflightError, match=rf"(?s)failed in the stream .*overlong: 1 record\(s\).*late\.jsonl:{late} "):
        run_sft(cfg)


def test_streaming_settings_are_checked_together(workdir: Path):
    with pytest.raises(ConfigError) as caught:
        config(workdir, "bad", "data.eval_fraction=0.1")
    assert "set train.max_steps" in str(caught.value) and "holds nothing out" in str(caught.value)


def test_a_folder_streams_through_tunefuls_readers_and_other_sources_through_an_iterable_dataset(
        workdir: Path, tmp_path: Path, monkeypatch):
    """A folder of JSON Lines is read line by line by tuneful's own reader, streaming or not (every file, with
    file:line); a source only ``datasets`` reads (here a folder of text files, as a hub id would be) streams through
    an IterableDataset."""
    import datasets

    from tuneful.data.sources import read_records

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part.jsonl").write_text((workdir / "train.jsonl").read_text())
    seen = []
    original = datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("streaming"))
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    streamed = [r.value for r in read_records(folder, streaming=True)]
    whole = [r for r in read_records(folder)]
    assert seen == [] and streamed == [r.value for r in whole] and len(whole) == 24
    assert whole[0].where == f"{folder / 'part.jsonl'}:1"
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "lines.txt").write_text("one\ntwo\n")
    assert [r.value["text"] for r in read_records(texts, streaming=True)] == ["one", "two"] and seen == [True]
