"""Prepared data on disk, for every trainer: Arrow parts, a fingerprint, a cache folder built once.

Knows records as JSON, ``datasets`` and the filesystem; no record type, no tokenizer logic (a trainer's
data module supplies its batch function: :mod:`tuneful.sft.prepared` for conversations,
:mod:`tuneful.dpo.prepare` for preference pairs).

- A source is written as Arrow parts of ``RECORDS_PER_PART`` records (``record`` JSON + ``where``), so
  the pages of it mapped into memory stay bounded; each part is mapped by ``datasets.Dataset.map``
  (batched, ``num_proc`` processes) into the trainer's rows plus, per batch, one row (length 0) carrying
  the batch's tally; the part is deleted once done.
- Everything goes under ``<cache>/prepared/<fingerprint>``, built in a temporary folder renamed into place
  when complete (a killed build never looks complete); a second run, or another rank once the main
  process is done, opens the files memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..tokenization.masking import special_tokens_of

PREPARED_VERSION = 3  # bump when rows or tallies change meaning: old caches are then never read
BATCH = 256  # records per map batch: one tokenizer call and one tally row each
AUTO_PROCESSES_FROM = 20_000  # below this many records, starting worker processes costs more than it saves
RECORDS_PER_PART = 100_000  # records per Arrow file of a source while it is being prepared


def default_cache_dir() -> Path:
    """``$TUNEFUL_CACHE_DIR``, else ``~/.cache/tuneful``; prepared data lives in its ``prepared/`` folder."""
    return Path(os.environ.get("TUNEFUL_CACHE_DIR") or Path.home() / ".cache" / "tuneful")


def source_key(source: Any) -> Any:
    """What identifies a source's content without reading it: local files by path, size and modification time
    (every file of a folder); anything else (a dataset id) by its name; a list of sources item by item."""
    if isinstance(source, list):
        return [{k: source_key(v) if k == "path" else v for k, v in sorted(s.items())} for s in source]
    path = Path(str(source))
    if path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.rglob("*")) if p.is_file()]
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


def write_parts(records: Iterable[tuple[str, dict]], folder: Path, prefix: str) -> list[tuple[Path, int]]:
    """(where, JSON record) pairs as Arrow files of up to ``RECORDS_PER_PART`` rows: [(file, rows)]."""
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    features = Features({"record": Value("string"), "where": Value("string")})
    parts: list[tuple[Path, int]] = []
    writer = None
    for where, record in records:
        if writer is None or parts[-1][1] == RECORDS_PER_PART:
            if writer is not None:
                writer.finalize()
                writer.close()
            parts.append((folder / f"{prefix}-{len(parts):05d}.arrow", 0))
            writer = ArrowWriter(path=str(parts[-1][0]), features=features, writer_batch_size=10_000)
        writer.write({"record": json.dumps(record, ensure_ascii=False), "where": where})
        parts[-1] = (parts[-1][0], parts[-1][1] + 1)
    if writer is not None:
        writer.finalize()
        writer.close()
    return parts


def processes_for(num_proc: int, records: int) -> int:
    """``num_proc``, or when 0 one per CPU core (up to 8) from ``AUTO_PROCESSES_FROM`` records on."""
    return num_proc or (min(os.cpu_count() or 1, 8) if records >= AUTO_PROCESSES_FROM else 1)


def map_parts(parts: list[tuple[Path, int]], held: np.ndarray, function: Callable, fn_kwargs: dict, features: Any,
              *, processes: int, folder: Path, eval_parts: Sequence[tuple[Path, int]] = (),
              eval_kwargs: dict | None = None) -> dict[str, list[str]]:
    """Each part mapped by ``function(batch, indices, first_index=..., **fn_kwargs)`` into rows; records whose
    ``held`` flag is set (a held-out fraction) go to the eval split, as do ``eval_parts`` (a separate source),
    with ``eval_kwargs`` overriding. Parts are deleted once mapped. The Arrow files of each split, in order."""
    from datasets import Dataset

    files: dict[str, list[str]] = {"train": [], "eval": []}
    first = {"train": 0, "eval": 0}

    def run(split: str, table: Any, k: int) -> None:
        if not len(table):
            return
        kwargs = {**fn_kwargs, **(eval_kwargs or {} if split == "eval" else {}), "first_index": first[split]}
        procs = max(1, min(processes, len(table) // BATCH or 1))
        cache_file = folder / f"{split}-{k:05d}.arrow"
        mapped = table.map(function, batched=True, batch_size=BATCH, with_indices=True,
                           remove_columns=table.column_names, fn_kwargs=kwargs, features=features,
                           num_proc=procs if procs > 1 else None, cache_file_name=str(cache_file),
                           new_fingerprint=cache_file.stem, desc=f"tuneful: prepare {split}")
        files[split] += [f["filename"] for f in mapped.cache_files]
        first[split] += len(table)

    offset = 0
    for k, (path, rows) in enumerate(parts):
        table = Dataset.from_file(str(path))
        part_held = held[offset : offset + rows]
        offset += rows
        if part_held.any():
            run("train", table.select(np.flatnonzero(~part_held)), k)
            run("eval", table.select(np.flatnonzero(part_held)), k)
        else:
            run("train", table, k)
        del table
        path.unlink()
    for k, (path, _) in enumerate(eval_parts):
        run("eval", Dataset.from_file(str(path)), k)
        path.unlink()
    return files


def build_splits(folder: Path, settings: Any, seed: int, accept: Callable[[Iterable, Any], Iterable[tuple[str, Any]]],
                 function: Callable, fn_kwargs: dict, features: Any, *,
                 eval_kwargs: dict | None = None) -> tuple[dict[str, list[str]], dict]:
    """A data section's source prepared into ``folder``: ``data.train`` streamed through the loader (a mixture of
    sources drawn in memory: it samples across them), its items filtered by ``accept(items, source)`` (which
    refuses the wrong kind by name), written as parts, held out by ``data.eval`` or ``data.eval_fraction`` (seeded),
    and each part mapped by ``function``. Returns the Arrow file names of each split and the load report's record."""
    from ..data.loader import LoadReport, iter_items
    from ..data.mixture import load_training
    from ..data.sources import read_records
    from .plan import hold_out

    def stream(source: Any, report: Any) -> Iterable[tuple[str, dict]]:
        items = iter_items(read_records(source), report, format=settings.format, on_error=settings.on_error)
        return ((where, item.to_json()) for where, item in accept(items, source))

    if isinstance(settings.train, list):
        result = load_training(settings.train, format=settings.format, on_error=settings.on_error, seed=seed)
        report = result.report
        records = ((w, item.to_json()) for w, item in accept(zip(result.where, result.items), settings.train))
    else:
        report = LoadReport()
        records = stream(settings.train, report)
    parts = write_parts(records, folder, "records-train")
    total = sum(n for _, n in parts)
    held = np.zeros(total, dtype=bool)
    eval_parts: list[tuple[Path, int]] = []
    if settings.eval:
        eval_parts = write_parts(stream(settings.eval, LoadReport()), folder, "records-eval")
    else:
        held[hold_out(list(range(total)), settings.eval_fraction, seed)[1]] = True
    files = map_parts(parts, held, function, fn_kwargs, features, processes=processes_for(settings.num_proc, total),
                      folder=folder, eval_parts=eval_parts, eval_kwargs=eval_kwargs)
    return ({split: [Path(f).name for f in names] for split, names in files.items()},
            {**report.summary(), "skipped_list": report.skipped, "format": report.format})


def cached(root: str | Path, key: str, build: Callable[[Path], dict],
           main_process_first: AbstractContextManager) -> tuple[Path, dict, bool]:
    """``(folder, meta, hit)``: ``<root>/prepared/<key>`` as ``build(folder) -> meta`` made it, built only when
    absent. Under several processes the main one builds while the others wait (``main_process_first``)."""
    folder = Path(root or default_cache_dir()) / "prepared" / key
    with main_process_first:
        hit = (folder / "meta.json").exists()
        if not hit:
            building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
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


def open_rows(folder: Path, names: Sequence[str]) -> tuple[Any, np.ndarray, list[dict]]:
    """(the pyarrow table of a split, its row numbers that are data rows, the JSON tallies of its batches)."""
    from datasets import Dataset, concatenate_datasets

    table = concatenate_datasets([Dataset.from_file(str(folder / name)) for name in names]).data.table
    lengths = table.column("length").to_numpy()
    tallies = table.column("tally")
    return table, np.flatnonzero(lengths > 0), [json.loads(tallies[int(r)].as_py())
                                                for r in np.flatnonzero(lengths == 0)]


def list_of(table: Any, column: str, row: int) -> list:
    """One list cell of a pyarrow table as a Python list (numbers through numpy: fast)."""
    return table.column(column)[row].values.to_numpy().tolist()


def load_report_of(data: dict) -> Any:
    """The load report a cached preparation recorded."""
    from collections import Counter

    from ..data.loader import LoadReport

    return LoadReport(data["records_in"], data["written"], Counter(data["skipped_by_reason"]),
                      [tuple(x) for x in data["skipped_list"]], Counter(data["ignored_fields"]),
                      Counter(data["notes"]), data["format"])
