"""Prepared data on disk, for every trainer: Arrow parts, a fingerprint, a cache folder built once.

Knows the loader (records → items), ``datasets`` and the filesystem; no tokenizer logic (a trainer's data
module supplies the item type it takes and its batch function: :mod:`tuneful.sft.prepared` for
conversations, :mod:`tuneful.preference.prepare` for preference pairs, :mod:`tuneful.kto.data` for labelled replies).

- A source is written as Arrow parts of ``RECORDS_PER_PART`` raw records (pickled, with ``where`` and
  position), so the pages of it mapped into memory stay bounded; only reading and format detection run in
  the main process. Each part is mapped by ``datasets.Dataset.map`` (batched, ``num_proc`` processes):
  records converted and validated, then the trainer's batch function turns them into its rows plus, per
  batch, one row (length 0) carrying the batch's tally and load report, merged in source order afterwards.
  The part is deleted once done. (A mixture, or OASST rows assembled into trees, is converted in the main
  process: its records must be seen together.)
- Everything goes under ``<cache>/prepared/<fingerprint>``, built in a temporary folder renamed into place
  when complete (a killed build never looks complete); a second run, or another rank once the main
  process is done, opens the files memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import psutil

from ..data.loader import LoadReport, items_of_slice, iter_items, peek_format
from ..data.mixture import load_training
from ..data.sources import read_records
from ..data.workers import die_with_parent, workers_die_with_parent
from .masking import special_tokens_of
from .plan import hold_out


PREPARED_VERSION = 4  # bump when rows or tallies change meaning: old caches are then never read
BATCH = 256  # records per map batch: one tokenizer call and one tally row each
AUTO_PROCESSES_FROM = 20_000  # below this many records, starting worker processes costs more than it saves
RECORDS_PER_PART = 100_000  # records per Arrow file of a source while it is being prepared
WRITE_BATCH = 10_000  # records per Arrow record batch of those files


def default_cache_dir() -> Path:
    """``$TUNEFUL_CACHE_DIR``, else ``~/.cache/tuneful``; prepared data lives in its ``prepared/`` folder."""
    return Path(os.environ.get("TUNEFUL_CACHE_DIR") or Path.home() / ".cache" / "tuneful")


SAMPLE_BYTES = 1 << 16  # a source's content hash reads its first, middle and last 64 KiB


def _file_key(path: Path) -> list:
    """A file's path, size, modification time and a hash of three 64 KiB samples of its bytes: a file rewritten in
    place with the same size and time (a copy that kept them, a clock set back) still gets another key unless
    its changes fall wholly between the samples."""
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for offset in sorted({0, max(0, stat.st_size // 2 - SAMPLE_BYTES // 2), max(0, stat.st_size - SAMPLE_BYTES)}):
            fh.seek(offset)
            digest.update(fh.read(SAMPLE_BYTES))
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest()[:16]]


def source_key(source: Any) -> Any:
    """What identifies a source's content without reading it whole: local files by path, size, modification time
    and a sampled content hash (every file of a folder); anything else (a dataset id) by its name; a list of sources
    item by item."""
    if isinstance(source, list):
        return [{k: source_key(v) if k == "path" else v for k, v in sorted(s.items())} for s in source]
    path = Path(str(source))
    if path.is_file():
        return _file_key(path)
    if path.is_dir():
        return [_file_key(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return str(source)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's vocabulary, merges, normaliser and added tokens (its serialised form) and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((body + json.dumps(special_tokens_of(tokenizer), sort_keys=True)).encode()).hexdigest()


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"version": PREPARED_VERSION, **parts}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:24]


@contextmanager
def main_processes_first(acc: Any) -> Iterator[None]:
    """The main process prepares first, then each machine's own main process (a hit when the cache is on a
    shared filesystem, a build of its own otherwise), then every other process reads the cache."""
    with acc.main_process_first(), acc.local_main_process_first():
        yield


def write_parts(entries: Iterable[tuple[str, Any]], folder: Path, prefix: str) -> list[tuple[Path, int]]:
    """(where, value) pairs — raw records or items, pickled — as Arrow files of up to ``RECORDS_PER_PART`` rows,
    each with its position in the source: [(file, rows)]. Written with pyarrow in batches of ``WRITE_BATCH`` rows
    (``datasets``' row-by-row writer took half of this step's time)."""
    import pyarrow as pa

    schema = pa.schema([("record", pa.binary()), ("where", pa.string()), ("position", pa.int64())])
    parts: list[tuple[Path, int]] = []
    writer, rows = None, ([], [], [])

    def flush() -> None:
        if rows[0]:
            writer.write_batch(pa.record_batch([pa.array(column, type) for column, type in zip(rows, schema.types)],
                                               schema=schema))
            parts[-1] = (parts[-1][0], parts[-1][1] + len(rows[0]))
            for column in rows:
                column.clear()

    for position, (where, value) in enumerate(entries):
        if writer is None or parts[-1][1] + len(rows[0]) == RECORDS_PER_PART:
            if writer is not None:
                flush()
                writer.close()
            parts.append((folder / f"{prefix}-{len(parts):05d}.arrow", 0))
            writer = pa.ipc.new_stream(str(parts[-1][0]), schema)
        rows[0].append(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        rows[1].append(where)
        rows[2].append(position)
        if len(rows[0]) == WRITE_BATCH:
            flush()
    if writer is not None:
        flush()
        writer.close()
    return parts


# --- what a trainer takes from a source ------------------------------------------------------------

@dataclass
class OtherItems:
    """Items of one kind a trainer does not take: how many, the first one's place, how many are marked undesirable."""

    kind: str  # the item type's name: Conversation, PreferencePair, LabeledConversation
    count: int
    where: str
    position: int
    undesirable: int = 0


@dataclass
class KindTally:
    """Items of kinds a trainer does not take, by kind; tallied per map batch and merged over the source."""

    found: dict[str, OtherItems] = field(default_factory=dict)

    def add(self, item: Any, where: str, position: int) -> None:
        self._add(OtherItems(type(item).__name__, 1, where, position, int(getattr(item, "label", True) is False)))

    def _add(self, other: OtherItems) -> None:
        seen = self.found.get(other.kind)
        if seen is None:
            self.found[other.kind] = OtherItems(**vars(other))
            return
        seen.count += other.count
        seen.undesirable += other.undesirable
        if other.position < seen.position:
            seen.where, seen.position = other.where, other.position

    def merge(self, other: "KindTally") -> None:
        for found in other.found.values():
            self._add(found)

    def first(self) -> OtherItems | None:
        """The kind met first in the source (what a reader stopping at the first wrong item would name)."""
        return min(self.found.values(), key=lambda o: o.position, default=None)

    def to_json(self) -> list[dict]:
        return [vars(o) for o in self.found.values()]

    @classmethod
    def from_json(cls, data: list[dict]) -> "KindTally":
        return cls({o["kind"]: OtherItems(**o) for o in data})


@dataclass(frozen=True)
class Takes:
    """The one item type a trainer trains on, and what it says of a source holding another kind:
    ``refusal(other, source)`` is the error message, given the kind met first with its count over the whole source."""

    kind: type
    refusal: Callable[[OtherItems, Any], str]

    def take(self, items: Iterable[tuple[str, Any]], source: Any) -> Iterator[tuple[str, Any]]:
        """The (where, item) of a stream, stopped at the first item of another kind by a ValueError with the
        refusal (that kind counted over the rest of the stream)."""
        items = iter(items)
        for where, item in items:
            if not isinstance(item, self.kind):
                others = KindTally()
                others.add(item, where, 0)
                for position, (later_where, later) in enumerate(items, 1):
                    if not isinstance(later, self.kind):
                        others.add(later, later_where, position)
                raise ValueError(self.refusal(others.first(), source))
            yield where, item


# --- a source as parts, mapped by worker processes -------------------------------------------------

@dataclass
class SourceParts:
    """A source written as Arrow parts: raw records the map workers convert (in ``format``, found at position
    ``detected_at``), or items the main process converted (a mixture, or a format converting whole sources) with
    the load report it counted."""

    parts: list[tuple[Path, int]]
    converted: LoadReport | None = None
    format: str | None = None
    detected_at: int = 0

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.parts)


def write_source(source: Any, settings: Any, seed: int, folder: Path, prefix: str) -> SourceParts:
    """``source`` (a file, folder or dataset id, or a list of them to mix) as parts. Only reading and format
    detection happen here: conversion and validation run in the map workers, unless the records must be seen
    together (a mixture samples across sources; OASST rows are assembled into trees)."""

    if isinstance(source, list):
        result = load_training(source, format=settings.format, on_error=settings.on_error, seed=seed)
        return SourceParts(write_parts(zip(result.where, result.items), folder, prefix), result.report)
    fmt, detected_at, records = peek_format(read_records(source), settings.format)
    if fmt is not None and fmt.convert_all is not None:
        report = LoadReport()
        items = iter_items(records, report, format=settings.format, on_error=settings.on_error)
        return SourceParts(write_parts(items, folder, prefix), report)
    return SourceParts(write_parts(((raw.where, raw) for raw in records), folder, prefix),
                       format=fmt.name if fmt else None, detected_at=detected_at)


def prepare_batch(batch: dict, *, prepare: Callable, takes: Takes, source: SourceParts, on_error: str, origin: str,
                  parent_pid: int, **kwargs: Any) -> dict:
    """One map batch: its records converted and validated (unless the main process did), the items of the kind
    the trainer takes given to ``prepare(items, wheres, positions, **kwargs)`` — a row per example, then one tally
    row (length 0) — and the batch's load report and items of other kinds in that tally row's ``load``. A map
    worker (``parent_pid`` started it) ends with its parent, killed or not."""

    die_with_parent(parent_pid)

    report, others = LoadReport(), KindTally()
    values = [pickle.loads(v) for v in batch["record"]]
    if source.converted is not None:
        found = list(zip(batch["position"], batch["where"], values))
    else:
        found = items_of_slice(list(zip(batch["position"], values)), report, format=source.format,
                               detected_at=source.detected_at, on_error=on_error)
    taken: list[tuple[int, str, Any]] = []
    for position, where, item in found:
        if isinstance(item, takes.kind):
            taken.append((position, where, item))
        else:
            others.add(item, where, position)
    out = prepare([t[2] for t in taken], [t[1] for t in taken], [t[0] for t in taken], **kwargs)
    load = {"origin": origin, "first": batch["position"][0], "report": report.to_json(), "others": others.to_json()}
    out["load"] = [None] * (len(out["length"]) - 1) + [json.dumps(load)]
    return out


def processes_for(num_proc: int, records: int) -> int:
    """``num_proc``, or when 0 one per CPU core (up to 8) from ``AUTO_PROCESSES_FROM`` records on."""
    return num_proc or (min(os.cpu_count() or 1, 8) if records >= AUTO_PROCESSES_FROM else 1)


def map_parts(train: SourceParts, held: np.ndarray, prepare: Callable, fn_kwargs: dict, features: Any, *,
              takes: Takes, on_error: str, processes: int, folder: Path, eval_source: SourceParts | None = None,
              eval_kwargs: dict | None = None) -> dict[str, list[str]]:
    """Each part mapped by :func:`prepare_batch` into rows; records whose ``held`` flag is set (a held-out
    fraction) go to the eval split, as do ``eval_source``'s, with ``eval_kwargs`` overriding. Parts are deleted
    once mapped. The Arrow files of each split, in order."""
    from datasets import Dataset, Features, Value

    files: dict[str, list[str]] = {"train": [], "eval": []}
    features = Features({**features, "load": Value("string")})

    def run(split: str, table: Any, source: SourceParts, origin: str, name: str) -> None:
        if not len(table):
            return
        kwargs = {**fn_kwargs, **(eval_kwargs or {} if split == "eval" else {}), "prepare": prepare, "takes": takes,
                  "source": source, "on_error": on_error, "origin": origin, "parent_pid": os.getpid()}
        procs = max(1, min(processes, len(table) // BATCH or 1))
        cache_file = folder / f"{split}-{name}.arrow"
        with workers_die_with_parent():
            mapped = table.map(prepare_batch, batched=True, batch_size=BATCH, remove_columns=table.column_names,
                               fn_kwargs=kwargs, features=features, num_proc=procs if procs > 1 else None,
                               cache_file_name=str(cache_file), new_fingerprint=cache_file.stem,
                               desc=f"tuneful: prepare {split}")
        files[split] += [f["filename"] for f in mapped.cache_files]

    offset = 0
    for k, (path, rows) in enumerate(train.parts):
        table = Dataset.from_file(str(path))
        part_held = held[offset : offset + rows]
        offset += rows
        if part_held.any():
            run("train", table.select(np.flatnonzero(~part_held)), train, "train", f"{k:05d}")
            run("eval", table.select(np.flatnonzero(part_held)), train, "train", f"{k:05d}")
        else:
            run("train", table, train, "train", f"{k:05d}")
        del table
        path.unlink()
    for k, (path, _) in enumerate(eval_source.parts if eval_source else ()):
        run("eval", Dataset.from_file(str(path)), eval_source, "eval", f"source-{k:05d}")
        path.unlink()
    return files


def batch_loads(folder: Path, names: Sequence[str]) -> list[dict]:
    """The ``load`` of every map batch in these files (:func:`prepare_batch`)."""
    from datasets import Dataset

    return [load for name in names for load in batch_column(Dataset.from_file(str(folder / name)).data.table, "load")]


def batch_column(table: Any, column: str) -> list:
    """A column's JSON values on the tally rows (length 0: one closing each map batch) of a mapped table."""
    ends = np.flatnonzero(table.column("length").to_numpy() == 0)
    return [json.loads(v) for v in table.column(column).take(ends).to_pylist()]


def build_splits(folder: Path, settings: Any, seed: int, takes: Takes, prepare: Callable, fn_kwargs: dict,
                 features: Any, *, eval_kwargs: dict | None = None) -> tuple[dict[str, list[str]], dict]:
    """A data section's source prepared into ``folder``: ``data.train`` written as parts (:func:`write_source`),
    held out by ``data.eval`` or ``data.eval_fraction`` (seeded, over the source's records), and each part mapped
    by ``prepare`` (:func:`prepare_batch`) in ``data.num_proc`` processes. A source holding items of another kind
    than ``takes`` is refused by name, counted over the whole source. Returns the Arrow file names of each split
    and the load report's record."""

    train = write_source(settings.train, settings, seed, folder, "records-train")
    held = np.zeros(train.rows, dtype=bool)
    eval_source = None
    if settings.eval:
        eval_source = write_source(settings.eval, settings, seed, folder, "records-eval")
    else:
        held[hold_out(list(range(train.rows)), settings.eval_fraction, seed)[1]] = True
    files = map_parts(train, held, prepare, fn_kwargs, features, takes=takes, on_error=settings.on_error,
                      processes=processes_for(settings.num_proc, train.rows), folder=folder, eval_source=eval_source,
                      eval_kwargs=eval_kwargs)
    report = train.converted or LoadReport(format=train.format)
    others = {"train": KindTally(), "eval": KindTally()}
    for load in sorted(batch_loads(folder, [Path(f).name for names in files.values() for f in names]),
                       key=lambda load: (load["origin"], load["first"])):
        if load["origin"] == "train":
            report.merge(LoadReport.from_json(load["report"]))
        others[load["origin"]].merge(KindTally.from_json(load["others"]))
    for origin, source in (("train", settings.train), ("eval", settings.eval)):
        first = others[origin].first()
        if first is not None:
            raise ValueError(takes.refusal(first, source))
    return ({split: [Path(f).name for f in names] for split, names in files.items()}, report.to_json())


def cached(root: str | Path, key: str, build: Callable[[Path], dict],
           main_process_first: AbstractContextManager) -> tuple[Path, dict, bool]:
    """``(folder, meta, hit)``: ``<root>/prepared/<key>`` as ``build(folder) -> meta`` made it, built only when
    absent. Under several processes the main one builds while the others wait (``main_process_first``)."""
    folder = Path(root or default_cache_dir()) / "prepared" / key
    with main_process_first:
        hit = (folder / "meta.json").exists()
        if not hit:
            remove_abandoned_builds(folder.parent)
            building = folder.with_name(f"{folder.name}.building-{socket.gethostname()}-{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            try:
                meta = build(building)
                (building / "meta.json").write_text(json.dumps(meta))
                if folder.exists():  # another run finished the same preparation meanwhile
                    shutil.rmtree(building)
                else:
                    building.rename(folder)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
    return folder, json.loads((folder / "meta.json").read_text()), hit


def remove_abandoned_builds(prepared: Path) -> list[Path]:
    """Delete the build folders under ``prepared`` left by a process of this machine that no longer runs (a kill
    during preparation): the folders removed. Another machine's builds, and live ones, are left alone."""
    removed = []
    host = socket.gethostname()
    for building in prepared.glob(f"*.building-{host}-*"):
        pid = building.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(building, ignore_errors=True)
            removed.append(building)
    return removed


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: its build is abandoned), as the UI tells of its runs."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: alive
        return True


def open_rows(folder: Path, names: Sequence[str]) -> tuple[Any, np.ndarray, list[dict]]:
    """(the pyarrow table of a split, its row numbers that are data rows, the JSON tallies of its batches)."""
    from datasets import Dataset, concatenate_datasets

    table = concatenate_datasets([Dataset.from_file(str(folder / name)) for name in names]).data.table
    return table, np.flatnonzero(table.column("length").to_numpy() > 0), batch_column(table, "tally")


def list_of(table: Any, column: str, row: int) -> list:
    """One list cell of a pyarrow table as a Python list (numbers through numpy: fast)."""
    return table.column(column)[row].values.to_numpy().tolist()
