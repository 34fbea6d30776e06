"""Prepared SFT data (Arrow, cached, lazily read) equals the in-memory preparation, row for row and finding for
finding; the cache is reused when nothing changed and rebuilt when anything did; workers agree with one process."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import FROZEN_NOW, needs_fixtures
from tuneful.data.loader import load
from tuneful.data.types import RecordError
from tuneful.tokenization.masking import (
    ConversationTokenizer,
    count_boundary_merges,
    labels_from_mask,
    mask_from_offsets,
    masks_from_offsets,
    may_straddle,
)
from tuneful.tokenization.preflight import PreflightTally, preflight
from tuneful.sft.config import DataSettings
from tuneful.sft.data import prepare_data
from tuneful.sft.prepared import fingerprint, prepare_conversations
from tuneful.templates.registry import resolve

REPO = Path(__file__).resolve().parents[1]


def _mask_reference(offsets, spans):
    out = []
    for start, end in offsets:
        if end > start:
            out.append(int(any(start < b and end > a for a, b in spans)))
        else:
            out.append(int(any(a < start < b for a, b in spans)))
    return out


def _merges_reference(text, offsets, spans):
    merges = 0
    for start, end in offsets:
        for a, b in spans:
            outside = (text[start:a] if start < a < end else "") + (text[b:end] if start < b < end else "")
            if outside.strip():
                merges += 1
    return merges


def test_vectorised_mask_and_merge_count_match_their_definitions():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab <>\n") for _ in range(60))
        offsets, at = [], 0
        while at < 60:  # monotone offsets with zero-width pieces, as tokenizers report them
            width = rng.choice([0, 1, 2, 3, 5])
            offsets.append((at, min(60, at + width)))
            at = min(60, at + width) if width else at + rng.choice([0, 1])
        spans = sorted({tuple(sorted(rng.sample(range(61), 2))) for _ in range(rng.randint(0, 3))})
        assert mask_from_offsets(offsets, spans) == _mask_reference(offsets, spans)
        assert mask_from_offsets(offsets, spans[::-1]) == _mask_reference(offsets, spans)  # any order
        assert count_boundary_merges(text, offsets, spans) == _merges_reference(text, offsets, spans)


def test_many_texts_at_once_match_one_at_a_time():
    """masks_from_offsets / may_straddle lay a batch's texts end to end: each text's result is its own."""
    rng = random.Random(1)
    for _ in range(40):
        texts, offsets_of, spans_of = [], [], []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(0, 30)
            texts.append("".join(rng.choice("ab <>\n") for _ in range(n)))
            offsets, at = [], 0
            while at < n:
                width = rng.choice([0, 1, 2, 3, 5])
                offsets.append((at, min(n, at + width)))
                at = min(n, at + width) if width else at + rng.choice([0, 1])
            offsets_of.append(np.array(offsets, dtype=np.int64).reshape(-1, 2))
            spans_of.append(sorted({tuple(sorted(rng.sample(range(n + 1), 2))) for _ in range(rng.randint(0, 3))}) if n else [])
        lengths = [len(t) for t in texts]
        assert masks_from_offsets(offsets_of, spans_of, lengths) == [
            _mask_reference(o.tolist(), s) for o, s in zip(offsets_of, spans_of)]
        straddles = may_straddle(offsets_of, spans_of, lengths)
        for text, o, s, flag in zip(texts, offsets_of, spans_of, straddles):
            assert flag == any(start < edge < end for start, end in o.tolist() for span in s for edge in span)
            if not flag:
                assert _merges_reference(text, o.tolist(), s) == 0


def test_tally_counts_every_record_names_a_few_and_merges():
    first, second = PreflightTally(), PreflightTally()
    for i in range(4):
        first.add("overlong", f"r{i}")
        first.add("overlong", f"r{i}", turns=2)  # the same record again: one record, more turns
    for i in range(4, 9):
        second.add("overlong", f"r{i}")
    second.end_of_turn.add("<|im_end|>")
    merged = PreflightTally.from_json(json.loads(json.dumps(first.to_json()))).merge(second)
    assert merged.records["overlong"] == 9 and merged.turns["overlong"] == 4 * 3 + 5
    assert merged.names["overlong"] == ["r0", "r1", "r2", "r3", "r4"] and merged.end_of_turn == {"<|im_end|>"}


@pytest.fixture(scope="module")
def qwen(fixtures):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "qwen3")


def _in_memory(tok, settings, path):
    """The in-memory preflight of the same file, records named by their location as prepared data names them."""
    ctok = ConversationTokenizer(tok, resolve(None, tok), reasoning=settings.reasoning)
    result = load(path)
    conversations = [replace(c, meta={**c.meta, "where": where}) for c, where in zip(result.items, result.where)]
    return preflight(tok, ctok, conversations, max_length=settings.max_length, overlong=settings.overlong)


@needs_fixtures
@pytest.mark.parametrize("reasoning", ["keep", "drop_earlier"])
def test_prepared_rows_and_findings_equal_the_in_memory_preflight(qwen, tmp_path, reasoning):
    """Agentic conversations (tools, calls, results, reasoning the Qwen3 template drops from history), some
    too long: the same examples in the same order, the same findings with the same counts and names."""
    data = json.loads((REPO / "tests" / "data" / "tool_conversations.json").read_text())
    source = tmp_path / "agentic.jsonl"
    source.write_text("".join(json.dumps({"messages": c["messages"], "tools": data["tools"]}) + "\n"
                              for c in data["conversations"] * 3))
    settings = DataSettings(train=str(source), max_length=300, overlong="drop", reasoning=reasoning,
                            cache_dir=str(tmp_path))
    expected = _in_memory(qwen, settings, source)
    data = prepare_data(settings, qwen, seed=0)
    got = [data.train[i] for i in range(len(data.train))]
    want = [(e.input_ids, labels_from_mask(e.input_ids, e.train_mask)) for e in expected.training_examples]
    assert [(e.input_ids, e.labels) for e in got] == want and len(want) > 5
    assert data.train.lengths.tolist() == [len(ids) for ids, _ in want]
    assert data.train[-1].input_ids == want[-1][0]
    found = [(f.check, f.severity, f.count, f.examples) for f in data.preflight_report.findings]
    assert found == [(f.check, f.severity, f.count, f.examples) for f in expected.findings]
    assert {f.check for f in data.preflight_report.findings} >= {"overlong"}
    assert data.end_of_turn_ids == expected.end_of_turn_ids(qwen)


@needs_fixtures
def test_second_run_reads_the_cache_and_any_change_rebuilds(qwen, tmp_path, fixtures):
    source = tmp_path / "chats.json"
    shutil.copy(fixtures / "data" / "sharegpt" / "dummy_conversation.json", source)
    settings = DataSettings(train=str(source), max_length=256, eval_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    # 50 conversations held out; Qwen3 rewrites earlier turns, so they give more examples than that
    first = prepare_data(settings, qwen, seed=0)
    again = prepare_data(settings, qwen, seed=0)
    assert not first.cache_hit and again.cache_hit and again.cache_folder == first.cache_folder
    assert [again.train[i].input_ids for i in range(len(again.train))] == \
        [first.train[i].input_ids for i in range(len(first.train))]
    assert len(again.eval) == len(first.eval) > 50 and again.load_report.summary() == first.load_report.summary()
    # nothing but the prepared rows stays on disk
    assert sorted(p.name for p in first.cache_folder.iterdir()) == ["eval-00000.arrow", "meta.json", "train-00000.arrow"]

    ctok = ConversationTokenizer(qwen, resolve(None, qwen))
    base = fingerprint(settings, ctok, 0)
    assert fingerprint(DataSettings(**{**settings.__dict__, "max_length": 512}), ctok, 0) != base
    assert fingerprint(settings, ctok, 1) != base  # another held-out draw
    assert fingerprint(settings, ConversationTokenizer(qwen, resolve("chatml", qwen)), 0) != base
    assert fingerprint(settings, ConversationTokenizer(qwen, resolve(None, qwen), now=FROZEN_NOW), 0) == base
    records = json.loads(source.read_text())
    source.write_text(json.dumps(records[:-1]))  # the data changed
    os.utime(source, ns=(1, 1))
    changed = prepare_data(settings, qwen, seed=0)
    assert not changed.cache_hit and changed.load_report.written == 499


@needs_fixtures
def test_worker_processes_prepare_what_one_process_does(qwen, tmp_path, fixtures):
    records = json.loads((fixtures / "data" / "sharegpt" / "dummy_conversation.json").read_text())
    source = tmp_path / "chats.json"
    source.write_text(json.dumps(records * 2))  # 1,000 conversations: enough for two workers of 256-row batches
    one = prepare_conversations(DataSettings(train=str(source), max_length=40, cache_dir=str(tmp_path / "a")),
                                ConversationTokenizer(qwen, resolve(None, qwen)), 0)
    two = prepare_conversations(DataSettings(train=str(source), max_length=40, num_proc=2,
                                             cache_dir=str(tmp_path / "b")),
                                ConversationTokenizer(qwen, resolve(None, qwen)), 0)
    assert len(list(two.folder.glob("train*.arrow"))) == 2  # two workers wrote a shard each
    assert np.array_equal(one.train.rows.lengths, two.train.rows.lengths)
    assert [one.train.rows[i].labels for i in (0, 500, -1)] == [two.train.rows[i].labels for i in (0, 500, -1)]
    assert one.train.tally.to_json() == two.train.tally.to_json() and one.train.tally.records["overlong"] > 0


def _bad_and_good_lines(fixtures, tmp_path) -> Path:
    """ShareGPT lines with bad ones among them: before the format is known (not JSON, no known format), after
    it (another shape, an unknown role, not an object: in the second worker's half), a field no format reads, a
    blank line; 1,006 records."""
    records = [json.dumps(r) for r in json.loads((fixtures / "data" / "sharegpt" / "dummy_conversation.json")
                                                 .read_text())]
    lines = (["{not json", json.dumps({"foo": 1})] + records + records[:300]
             + [json.dumps({"conversations": []}), json.dumps({**json.loads(records[0]), "extra": 1}),
                json.dumps({"conversations": [{"from": "robot", "value": "x"}]}), "[1]", ""] + records[300:])
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    return source


@needs_fixtures
def test_workers_convert_and_count_exactly_what_the_loader_does(qwen, tmp_path, fixtures):
    """Conversion and validation run in the map workers: the load report (every skip, in source order, with its
    file:line; ignored fields) is the loader's, the rows are the loader's conversations, at 1 and 2 processes."""
    source = _bad_and_good_lines(fixtures, tmp_path)
    loaded = load(source, on_error="skip")
    ctok = ConversationTokenizer(qwen, resolve(None, qwen))
    want = [labels_from_mask(e.input_ids, e.train_mask)
            for e in preflight(qwen, ctok, loaded.conversations, max_length=4096).training_examples]
    for procs in (1, 2):
        prepared = prepare_conversations(DataSettings(train=str(source), on_error="skip", num_proc=procs,
                                                      max_length=4096, cache_dir=str(tmp_path / str(procs))), ctok, 0)
        assert prepared.load_report.to_json() == loaded.report.to_json()
        assert [s[0] for s in prepared.load_report.skipped] == [f"{source}:{n}" for n in (1, 2, 803, 805, 806)]
        assert len(list(prepared.folder.glob("train*.arrow"))) == procs
        assert [prepared.train.rows[i].labels for i in range(len(prepared.train.rows))] == want


@needs_fixtures
def test_a_bad_record_in_a_worker_fails_with_its_line(qwen, tmp_path, fixtures):
    source = _bad_and_good_lines(fixtures, tmp_path)
    with pytest.raises(RecordError, match=rf"{source.name}:1: invalid_json"):
        prepare_conversations(DataSettings(train=str(source), num_proc=2, cache_dir=str(tmp_path)),
                              ConversationTokenizer(qwen, resolve(None, qwen)), 0)
    lines = source.read_text().splitlines()
    source.write_text("\n".join(lines[2:]) + "\n")  # the first bad record is now line 801, in the second worker
    with pytest.raises(RecordError, match=rf"{source.name}:801: format_mismatch"):
        prepare_conversations(DataSettings(train=str(source), num_proc=2, cache_dir=str(tmp_path)),
                              ConversationTokenizer(qwen, resolve(None, qwen)), 0)
    assert not list((tmp_path / "prepared").glob("*")), "a failed preparation leaves nothing behind"


@needs_fixtures
def test_mixtures_and_whole_source_formats_are_converted_before_the_map(qwen, tmp_path, fixtures):
    """A mixture (sampled across sources) and OASST rows (assembled into trees) are converted in the main process:
    the same load report and conversations as loading them in memory."""
    from tuneful.data.mixture import load_training

    sharegpt = fixtures / "data" / "sharegpt" / "dummy_conversation.json"
    oasst = fixtures / "data" / "oasst" / "en_100_tree.jsonl"
    ctok = ConversationTokenizer(qwen, resolve(None, qwen))
    mixture = [{"path": str(sharegpt), "count": 40}, {"path": str(oasst), "count": 30}]
    for k, train in enumerate((str(oasst), mixture)):
        loaded = load_training(train, seed=3)
        prepared = prepare_conversations(DataSettings(train=train, max_length=4096, cache_dir=str(tmp_path / str(k))),
                                         ctok, 3)
        assert prepared.load_report.to_json() == loaded.report.to_json() and loaded.report.written > 30
        want = [labels_from_mask(e.input_ids, e.train_mask)
                for e in preflight(qwen, ctok, loaded.conversations, max_length=4096).training_examples]
        assert [prepared.train.rows[i].labels for i in range(len(prepared.train.rows))] == want


@needs_fixtures
@pytest.mark.parametrize("copies", [1, 2])
def test_kto_data_is_refused_with_counts_over_the_whole_stream(qwen, tmp_path, fixtures, copies):
    """Counted over the whole source, also when two workers each saw half of it (600 records)."""
    source = tmp_path / "kto.json"
    source.write_text(json.dumps(json.loads((fixtures / "data" / "llamafactory" / "kto_en_demo.json").read_text())
                                 * copies))
    with pytest.raises(ValueError, match=rf"{300 * copies} records with a 'label', {150 * copies} marked "
                                         r"undesirable, e.g. .*kto.json\[0\]"):
        prepare_data(DataSettings(train=str(source), num_proc=2, cache_dir=str(tmp_path)), qwen, seed=0)
    assert not list((tmp_path / "prepared").glob("*")), "a failed preparation leaves nothing behind"


@needs_fixtures
def test_a_source_in_many_parts_prepares_as_one(qwen, tmp_path, fixtures, monkeypatch):
    """The source is written and tokenized in parts (bounded mapped pages); held-out rows, names and tallies do
    not depend on where the parts split."""
    import tuneful.tokenization.prepared as store

    source = fixtures / "data" / "sharegpt" / "dummy_conversation.json"

    def run(cache: str):
        return prepare_conversations(DataSettings(train=str(source), max_length=40, eval_fraction=0.2,
                                                  cache_dir=str(tmp_path / cache)),
                                     ConversationTokenizer(qwen, resolve(None, qwen)), 0)

    whole = run("whole")
    monkeypatch.setattr(store, "RECORDS_PER_PART", 64)
    parts = run("parts")
    assert len(list(parts.folder.glob("train-*.arrow"))) == 8 and not list(parts.folder.glob("records-*"))
    for split in ("train", "eval"):
        a, b = getattr(whole, split), getattr(parts, split)
        assert np.array_equal(a.rows.lengths, b.rows.lengths)
        assert [a.rows[i].labels for i in range(0, len(a.rows), 37)] == \
            [b.rows[i].labels for i in range(0, len(b.rows), 37)]
        assert a.tally.to_json() == b.tally.to_json()


@needs_fixtures
def test_prepared_pairs_equal_the_in_memory_tokenization_and_are_cached(qwen, tmp_path, fixtures):
    """DPO (and reward-model) pairs go through the same store: the same examples as tokenize_pairs, the held-out
    split by the same draw, a cache hit the second time, bad pairs and overlong ones counted over all batches."""
    from tuneful.preference.config import PreferenceDataSettings
    from tuneful.preference.pairs import PreferenceDataError, preference_tokenizer, tokenize_pairs
    from tuneful.preference.prepare import pair_length, prepare_pairs
    from tuneful.tokenization.plan import hold_out

    source = fixtures / "data" / "llamafactory" / "dpo_en_demo.json"
    settings = PreferenceDataSettings(train=str(source), max_length=700, eval_fraction=0.1, cache_dir=str(tmp_path))
    first = prepare_pairs(settings, qwen, seed=0)
    again = prepare_pairs(settings, qwen, seed=0)
    assert not first.cache_hit and again.cache_hit

    kept, held = hold_out(load(source).preferences, 0.1, 0)
    ctok = preference_tokenizer(qwen, resolve(None, qwen))
    want = [e for e in tokenize_pairs(ctok, kept) if pair_length(e) <= 700]
    assert [again.train[i] for i in range(len(again.train))] == want
    assert again.dropped_overlong == len(kept) + len(held) - len(want) - len(again.eval) > 0
    assert again.eval[:3] == [e for e in tokenize_pairs(ctok, held) if pair_length(e) <= 700][:3]

    with pytest.raises(PreferenceDataError, match=r"exceed data.max_length=700 \(longest \d+ tokens\)"):
        prepare_pairs(PreferenceDataSettings(**{**settings.__dict__, "overlong": "fail"}), qwen, seed=0)
    records = json.loads(source.read_text())
    for k in (3, 290):  # two map batches; a reply repeating the prompt: loaded, but refused as a pair
        records[k]["rejected"]["value"] = "You asked: " + records[k]["conversations"][-1]["value"]
    echo = tmp_path / "echo.json"
    echo.write_text(json.dumps(records))
    with pytest.raises(PreferenceDataError, match=r"(?s)2 bad preference pair\(s\):.*echo\.json\[3\]: rejected "
                                                  r"contains the prompt's user message.*echo\.json\[290\]"):
        prepare_pairs(PreferenceDataSettings(train=str(echo), cache_dir=str(tmp_path)), qwen, seed=0)


@needs_fixtures
def test_prepared_kto_items_equal_the_in_memory_ones_and_are_cached(qwen, tmp_path, fixtures):
    """KTO's labelled replies through the same store: each item with the same mismatched reply as the in-memory
    assignment, the same labels, a cache hit the second time."""
    from tuneful.preference.pairs import preference_tokenizer
    from tuneful.kto.config import LabeledDataSettings
    from tuneful.kto.data import prepare_labeled, tokenize_labeled, with_mismatched_replies

    source = fixtures / "data" / "llamafactory" / "kto_en_demo.json"
    settings = LabeledDataSettings(train=str(source), max_length=600, cache_dir=str(tmp_path))
    first = prepare_labeled(settings, qwen, seed=0)
    again = prepare_labeled(settings, qwen, seed=0)
    assert not first.cache_hit and again.cache_hit

    replies = [r for r in tokenize_labeled(preference_tokenizer(qwen, resolve(None, qwen)), load(source).labeled)
               if len(r.prompt_ids) + len(r.reply_ids) <= 600]
    assert again.dropped_overlong == 300 - len(replies) > 0
    assert [again.train[i] for i in range(len(again.train))] == with_mismatched_replies(replies, 600, "training")
    assert again.train_desirable == [r.desirable for r in replies]


def test_a_trainer_refuses_other_kinds_naming_the_first_with_counts_over_everything():
    """The stream form (Takes.take) and the per-batch form (KindTally merged out of order) name the same thing."""
    from tuneful.data.types import Conversation, LabeledConversation, Message, PreferencePair
    from tuneful.sft.prepared import SFT_TAKES
    from tuneful.tokenization.prepared import KindTally

    user, reply = Message("user", "hi"), Message("assistant", "hello")
    conv = Conversation((user, reply))
    labeled = [LabeledConversation((user, reply), label) for label in (True, False, False)]
    pair = PreferencePair((user,), reply, Message("assistant", "go away"))
    items = [(f"f:{i}", x) for i, x in enumerate([conv, labeled[0], conv, pair, labeled[1], labeled[2]])]
    with pytest.raises(ValueError, match=r"KTO: 3 records with a 'label', 2 marked undesirable, e.g. f:1\)"):
        list(SFT_TAKES.take(items, "data.jsonl"))
    halves = [KindTally(), KindTally()]
    for position, (where, item) in enumerate(items):
        if not isinstance(item, Conversation):
            halves[position >= 3].add(item, where, position)
    merged = KindTally.from_json(json.loads(json.dumps(halves[1].to_json())))
    merged.merge(halves[0])  # the later half first: the place and the counts do not depend on the order
    first = merged.first()
    assert (first.kind, first.count, first.undesirable, first.where) == ("LabeledConversation", 3, 2, "f:1")
    assert merged.found["PreferencePair"].count == 1
    assert [w for w, _ in SFT_TAKES.take(items[:1] + items[2:3], "data.jsonl")] == ["f:0", "f:2"]


def test_a_source_rewritten_with_the_same_size_and_time_gets_another_key(tmp_path: Path):
    """The cache key holds a sampled hash of the bytes: a stale cache is not reused for a file rewritten in place
    with its size and modification time kept (issue 46)."""
    from tuneful.tokenization.prepared import source_key

    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "Say hi.", "output": "Hi"}\n')
    before = source_key(str(path))
    stat = path.stat()
    path.write_text('{"instruction": "Say yo.", "output": "Yo"}\n')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert source_key(str(path)) != before
    assert source_key(str(tmp_path)) == [source_key(str(path))]  # a folder: each of its files


def test_a_build_left_by_a_killed_process_is_removed_at_the_next_start(tmp_path: Path):
    import socket
    import subprocess
    import sys
    from contextlib import nullcontext

    from tuneful.tokenization.prepared import cached

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tmp_path / "prepared" / f"k1.building-{host}-{int(dead.stdout)}"
    live = tmp_path / "prepared" / f"k2.building-{host}-{os.getpid()}"
    elsewhere = tmp_path / "prepared" / f"k3.building-another-machine-{int(dead.stdout)}"
    for folder in (abandoned, live, elsewhere):
        (folder / "part").mkdir(parents=True)
    folder, meta, hit = cached(tmp_path, "k4", lambda f: {"rows": 1}, nullcontext())
    assert meta == {"rows": 1} and not hit
    assert not abandoned.exists() and live.exists() and elsewhere.exists()


@pytest.mark.slow
def test_a_kill_9_during_preparation_takes_its_workers_with_it_and_the_rerun_cleans_up(tmp_path: Path):
    """Issue 46: a SIGKILL of ``tuneful sft`` while its ``data.num_proc`` workers prepared the data left them alive
    for 45 s and more (and the half-built folder for ever). Now they die with it; the rerun removes the folder."""
    import random
    import signal
    import subprocess
    import sys
    import time

    import psutil
    from tiny import save_tiny_model

    save_tiny_model(tmp_path / "model")
    rng = random.Random(0)
    with (tmp_path / "big.jsonl").open("w") as f:
        for k in range(60_000):  # ~10 s of preparation on 2 workers here: room to kill it midway
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "echo"]) for _ in range(12))
            f.write(json.dumps({"instruction": f"Repeat {k}: {words}", "output": words}) + "\n")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "tuneful.cli.main", "sft", f"model.name_or_path={tmp_path / 'model'}",
           f"data.train={tmp_path / 'big.jsonl'}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
           "train.progress=false", "data.num_proc=2", f"data.cache_dir={cache}", "data.max_length=256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent, workers = psutil.Process(proc.pid), []
    deadline = time.time() + 120
    while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            workers = [p for p in parent.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
        except psutil.Error:
            workers = []
    time.sleep(2)  # busy with their batches: an idle worker's wait would end with the pipe, a busy one's never does
    workers = parent.children(recursive=True)
    assert len(workers) >= 2 and proc.poll() is None, "the preparation ended before its workers could be caught"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=5)
    for process in alive:  # a failing run leaves nothing behind
        process.kill()
    assert not alive, f"{len(alive)} map workers outlived their killed parent"
    assert list(cache.glob("prepared/*.building-*"))  # the kill left its half-built folder
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert not list(cache.glob("prepared/*.building-*"))
