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


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise RecordError("duplicate_key", f"key(s) {', '.join(map(repr, twice))} appear more than once in one object "
                                           "(JSON readers disagree on which value wins)")
    return record


def _no_non_finite(constant: str) -> Any:
    raise RecordError("non_finite_number", f"{constant} is not a JSON number (no reader but Python's takes it)")


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` that refuses what the JSON standard does not allow and Python's reader lets through: the same
    key twice in one object, ``NaN`` / ``Infinity``, lone surrogates (strings that cannot be written as UTF-8), and
    nesting deeper than the parser's stack. Raises :class:`RecordError`."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_non_finite)
    except json.JSONDecodeError as exc:
        raise RecordError("invalid_json", exc.msg, where) from None
    except RecursionError:
        raise RecordError("too_deep", "nested deeper than the JSON reader's limit", where) from None
    except RecordError as exc:
        raise RecordError(exc.rule, exc.detail, where) from None
    if "\\u" in text and _has_lone_surrogate(value):  # only a \u escape can write one
        raise RecordError("invalid_unicode", "a lone surrogate (\\ud800-\\udfff) that no UTF-8 text can hold", where)
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item
    return False


def read_jsonl(path: Path) -> Iterator[RawRecord]:
    """Each non-blank line parsed, or its error (not UTF-8, not JSON, see :func:`parse_json`), with ``file:line``;
    a UTF-8 byte-order mark before the first line is dropped."""
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1:
                raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(where, error=RecordError(
                    "invalid_utf8", f"byte {raw_line[exc.start]:#04x} at column {exc.start + 1} is not UTF-8", where))
                continue
            if not line.strip():
                continue
            try:
                yield RawRecord(where, parse_json(line, where))
            except RecordError as exc:
                yield RawRecord(where, error=exc)


def _read_json(path: Path) -> Iterator[RawRecord]:
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
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
        data = parse_json(text, str(path))
    except RecordError as error:
        if error.rule != "invalid_json":
            raise
        exc = _decode_error(text)
        if exc.msg == "Extra data":  # a whole-file JSON error: maybe it is really JSON Lines with a .json name
            yield from read_jsonl(path)
            return
        raise RecordError("invalid_json", f"{exc.msg} at line {exc.lineno}", str(path)) from None
    if isinstance(data, dict):
        data = _records_of_object(data)
    elif not isinstance(data, list):
        raise RecordError("not_an_object", f"the file holds a JSON {type(data).__name__}, not records", str(path))
    for i, value in enumerate(data):
        yield RawRecord(f"{path}[{i}]", value)


def _decode_error(text: str) -> json.JSONDecodeError:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("parse_json refused what json.loads reads")  # pragma: no cover


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

    kind = "parquet" if path.suffix.lower() == ".parquet" else "csv"
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - the reader's own error names what broke; a ragged CSV is read row by row
        if kind == "csv":
            yield from _read_csv_rows(path)
            return
        raise RecordError("unreadable_table", f"{type(exc).__name__}: {exc}"[:300], str(path)) from None
    for i, row in enumerate(table):
        yield RawRecord(f"{path} row {i + 1}", _decode_json_cells(row))


def _read_csv_rows(path: Path) -> Iterator[RawRecord]:
    """A CSV the table reader refuses (rows with more or fewer fields than the header), row by row: each good row
    a record of its cells (text), each ragged one an error naming its line."""
    import csv

    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None) or []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield RawRecord(where, error=RecordError(
                    "ragged_row", f"{len(row)} fields where the header has {len(header)}", where))
                continue
            yield RawRecord(where, _decode_json_cells(dict(zip(header, row))))


# files a dataset folder may hold besides its data (documentation and git's own, never records)
FOLDER_EXTRAS = (".md", ".gitattributes", ".gitignore", "LICENSE")


def _read_folder(folder: Path, split: str) -> Iterator[RawRecord]:
    """A local dataset folder: the files of ``split`` found as ``datasets`` finds them (``train*``, ``data/train-*``
    ..., or every file when no name says a split), each read by its own reader with ``file:line`` locations, so
    a folder of JSON Lines, JSON and CSV files loses none of them. A file of another type is refused by name."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    if split not in files:
        raise FileNotFoundError(f"{folder}: no files for split {split!r} (its splits: {', '.join(map(str, files))})")
    paths = [Path(f) for f in sorted(files[split])]
    unknown = [p for p in paths if p.suffix.lower() not in LOCAL_SUFFIXES and p.suffix.lower() not in FOLDER_EXTRAS
               and p.name not in FOLDER_EXTRAS and not p.name.startswith(".")]
    if unknown:
        raise ValueError(f"{folder}: {', '.join(p.name for p in unknown[:5])} cannot be read as records; a dataset folder "
                         f"holds {', '.join(LOCAL_SUFFIXES)} files (move the others out)")
    for path in paths:
        if path.suffix.lower() in LOCAL_SUFFIXES:
            yield from read_records(path)


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
    if path.is_dir() and subset is None and any(p.suffix.lower() in LOCAL_SUFFIXES for p in path.rglob("*")
                                                  if p.is_file()):
        return _read_folder(path, split)
    return _read_hf(str(source), split, subset, streaming)
