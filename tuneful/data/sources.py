"""Reading raw records from local files or Hugging Face dataset ids, each with its location.

A location is what an error message shows: ``file.jsonl:12`` for JSON Lines, ``file.json[3]`` for a
JSON array, ``file.parquet row 7`` / ``file.csv row 7`` and ``dataset-id (split) row 7``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .formats import looks_like_a_record
from .types import RecordError


LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class RawRecord:
    """A raw record, or the error that stopped it being parsed, and where it came from."""

    where: str
    value: Any = None
    error: RecordError | None = None


def read_jsonl(path: Path) -> Iterator[RawRecord]:
    """Each non-blank line parsed, or its error (not UTF-8, not JSON), with ``file:line``."""
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(where, error=RecordError(
                    "invalid_utf8", f"byte {raw_line[exc.start]:#04x} at column {exc.start + 1} is not UTF-8", where))
                continue
            if not line.strip():
                continue
            try:
                yield RawRecord(where, json.loads(line))
            except json.JSONDecodeError as exc:
                yield RawRecord(where, error=RecordError("invalid_json", exc.msg, where))


def _read_json(path: Path) -> Iterator[RawRecord]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if raw.lstrip()[:1] != b"[":  # maybe JSON Lines with a .json name: bad lines are per-record errors
            yield from read_jsonl(path)
            return
        raise RecordError("invalid_utf8", f"byte {raw[exc.start]:#04x} on line {line} is not UTF-8; the whole "
                                          "file is one JSON value, so nothing in it can be read", str(path)) from None
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A whole-file JSON error: maybe it is really JSON Lines with a .json name.
        if exc.msg == "Extra data":
            yield from read_jsonl(path)
            return
        raise RecordError("invalid_json", f"{exc.msg} at line {exc.lineno}", str(path)) from None
    if isinstance(data, dict):
        data = _records_of_object(data)
    elif not isinstance(data, list):
        raise RecordError("not_an_object", f"the file holds a JSON {type(data).__name__}, not records", str(path))
    for i, value in enumerate(data):
        yield RawRecord(f"{path}[{i}]", value)


def _records_of_object(data: dict) -> list:
    """A top-level object is one record (axolotl's fixtures), unless it only wraps a list of records.

    ``{"data": [...]}`` / ``{"train": [...]}`` wrappers are common; but ``{"messages": [...]}`` is a
    conversation, not a wrapper of messages, so an object that a format recognises stays one record.
    """
    if looks_like_a_record(data):
        return [data]
    lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) == 1 and len(data) == 1:
        return data[lists[0]]
    return [data]


def _read_table(path: Path) -> Iterator[RawRecord]:
    import datasets  # heavy import, only when a table is read

    kind = "parquet" if path.suffix == ".parquet" else "csv"
    table = datasets.load_dataset(kind, data_files=str(path), split="train")
    for i, row in enumerate(table):
        yield RawRecord(f"{path} row {i + 1}", _decode_json_cells(row))


def _decode_json_cells(row: dict) -> dict:
    """CSV cells holding JSON lists/objects (e.g. a ``messages`` column) are decoded."""
    out = {}
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def _read_hf(name: str, split: str, subset: str | None, streaming: bool = False) -> Iterator[RawRecord]:
    """A Hugging Face dataset id, or a local dataset folder/script, through ``datasets.load_dataset``;
    ``streaming`` reads rows as they arrive (nothing downloaded or cached whole)."""
    import datasets

    table = datasets.load_dataset(name, subset, split=split, streaming=streaming)
    for i, row in enumerate(table):
        yield RawRecord(f"{name} ({split}) row {i + 1}", row)


def read_records(source: str | Path, *, split: str = "train", subset: str | None = None,
                 streaming: bool = False) -> Iterator[RawRecord]:
    """Raw records of a local file (by suffix) or else of a dataset folder or Hugging Face id (``streaming``:
    through a ``datasets`` IterableDataset. Local JSON Lines are always read line by line; a JSON array file is
    one value, read whole)."""
    path = Path(source)
    if path.is_file():
        readers = {".jsonl": read_jsonl, ".json": _read_json, ".parquet": _read_table, ".csv": _read_table}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
        return reader(path)
    if path.suffix.lower() in LOCAL_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return _read_hf(str(source), split, subset, streaming)
