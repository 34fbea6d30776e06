"""Streaming SFT data: for sources larger than memory or disk. Conversations are read as a stream (a
``datasets`` IterableDataset), rendered, tokenized and checked batch by batch as training needs them, and
packed in a bounded buffer; the position in the stream is part of every checkpoint, so a resumed run
trains on exactly the rows an uninterrupted one would.

Knows conversations, the :class:`~tuneful.tokenization.masking.ConversationTokenizer`, the preflight
checks and the packing rule; no model.

- The stream is cut into map batches of up to ``BATCH`` conversations (the same function as prepared
  data: one tokenizer call and one tally row per batch). A buffer holds whole batches, at least
  ``data.stream_buffer`` examples (the last one of an epoch fewer); they are packed (best-fit-decreasing, or one per row unpacked) and
  the rows shuffled with a seed of (seed, epoch, buffer). Memory: one buffer.
- Position = (epoch, batches before the buffer, rows of the buffer already trained). Resuming skips
  that many conversations of the source (``IterableDataset.skip``), refills the same buffer and drops
  the rows already trained. The stream restarts (next epoch) when it ends.
- Checks: the first ``data.stream_preflight`` conversations go through the whole preflight before
  training; every later buffer is checked as it fills, and an error-level finding stops the run with
  the records named. The findings of everything streamed are in the run's ``tuneful.json``.

    rows = StreamedRows(settings, ctok, seed=0)       # rows.next_row() -> list[Example], rows.state()
"""

from __future__ import annotations

import json
import pickle
import random
from typing import Any, Iterator

from ..data.loader import LoadReport, iter_items
from ..data.sources import read_records
from ..data.types import Conversation
from ..tokenization.masking import ConversationTokenizer, labels_from_mask
from ..tokenization.preflight import PreflightError, PreflightReport, PreflightTally, finish_report
from ..tokenization.prepared import BATCH
from ..tokenization.batching import Example, best_fit_decreasing
from .config import DataSettings
from .prepared import SFT_TAKES, tokenize_batch


def stream_conversations(settings: DataSettings, report: LoadReport) -> Iterator[tuple[str, Conversation]]:
    """(where, conversation) of ``data.train`` as they are read (Hugging Face ids streamed), counted in ``report``."""
    items = iter_items(read_records(settings.train, streaming=True), report, format=settings.format,
                       on_error=settings.on_error)
    return SFT_TAKES.take(items, settings.train)


def _records(settings: DataSettings) -> Iterator[dict]:
    """The generator behind the IterableDataset: each conversation pickled, with where it came from."""
    for where, conv in stream_conversations(settings, LoadReport()):
        yield {"record": pickle.dumps(conv, protocol=pickle.HIGHEST_PROTOCOL), "where": where}


def _tokenize_records(batch: dict, indices: list[int], *, skip: int, **kwargs: Any) -> dict:
    return tokenize_batch([pickle.loads(r) for r in batch["record"]], batch["where"], [skip + i for i in indices],
                          **kwargs)


def conversation_stream(settings: DataSettings, ctok: ConversationTokenizer, skip: int, batch_size: int) -> Any:
    """Map-batch rows (examples, then the batch's tally row) of the source after its first ``skip`` conversations."""
    from datasets import Features, IterableDataset, Sequence as ArrowList, Value

    source = IterableDataset.from_generator(
        _records, gen_kwargs={"settings": settings},
        features=Features({"record": Value("binary"), "where": Value("string")}))
    if skip:
        source = source.skip(skip)
    features = Features({"input_ids": ArrowList(Value("int32")), "train_mask": ArrowList(Value("int8")),
                         "length": Value("int32"), "tally": Value("string")})
    return source.map(_tokenize_records, batched=True, batch_size=batch_size, with_indices=True,
                      remove_columns=["record", "where"], features=features,
                      fn_kwargs={"ctok": ctok, "max_length": settings.max_length, "overlong": settings.overlong,
                                 "skip": skip})


class StreamedRows:
    """Rows (lists of examples: one, or several packed) drawn from the stream in order, with a resumable position."""

    def __init__(self, settings: DataSettings, ctok: ConversationTokenizer, *, seed: int, packing: bool,
                 state: dict | None = None):
        self.settings, self.ctok, self.seed, self.packing = settings, ctok, seed, packing
        self.batch_size = max(1, min(BATCH, settings.stream_buffer))  # a buffer ends where a map batch ends
        resumed = state is not None
        state = state or {"epoch": 0, "batches": 0, "rows": 0, "tally": None}
        self.epoch, self.batches_before, self.taken = state["epoch"], state["batches"], state["rows"]
        self.tally = PreflightTally.from_json(state["tally"]) if state["tally"] else PreflightTally()
        self.rows_this_epoch = self.taken + self.batches_before  # only whether any row came yet matters
        self._open()
        self._fill(count=not resumed)  # resumed: the buffer the position points into, counted before the save

    def _open(self) -> None:
        self._stream = iter(conversation_stream(self.settings, self.ctok, self.batches_before * self.batch_size,
                                                self.batch_size))

    def _fill(self, count: bool = True) -> None:
        """Whole map batches into the buffer until it holds ``data.stream_buffer`` examples or the stream ends."""
        examples: list[Example] = []
        tally, batches = PreflightTally(), 0
        for row in self._stream:
            if row["length"]:
                examples.append(Example(row["input_ids"], labels_from_mask(row["input_ids"], row["train_mask"])))
                continue
            tally.merge(PreflightTally.from_json(json.loads(row["tally"])))  # the end of a map batch
            batches += 1
            if len(examples) >= self.settings.stream_buffer:
                break
        self.buffer_batches = batches
        if count and self.epoch == 0:  # later epochs read the same records again: checked and counted once
            self._check(tally)
            self.tally.merge(tally)
        if self.packing:
            rows = [[examples[i] for i in b] for b in best_fit_decreasing([len(e) for e in examples],
                                                                          self.settings.max_length)]
        else:
            rows = [[e] for e in examples]
        random.Random(f"{self.seed}/{self.epoch}/{self.batches_before}").shuffle(rows)
        self.rows = rows

    def _check(self, tally: PreflightTally) -> None:
        report = finish_report(PreflightReport(), tally, self.ctok.tokenizer, self.ctok,
                               max_length=self.settings.max_length, overlong=self.settings.overlong,
                               allow_template_change=True)  # the template choice was checked before training
        if report.errors:
            raise PreflightError(report.errors, f"in the stream (epoch {self.epoch}, after conversation "
                                                f"{self.batches_before * self.batch_size:,}; the run stops here)")

    def next_row(self) -> list[Example]:
        while self.taken >= len(self.rows):
            self.batches_before += self.buffer_batches
            self.taken = 0
            if self.buffer_batches == 0:  # the last fill read nothing: the stream has ended; the next epoch restarts it
                if not self.rows_this_epoch:
                    raise ValueError(f"data.train={self.settings.train}: the stream holds no training example "
                                     f"(see the preflight findings: {self.tally.records.most_common(3)})")
                self.epoch, self.batches_before, self.rows_this_epoch = self.epoch + 1, 0, 0
                self._open()
            self._fill()
        self.taken += 1
        self.rows_this_epoch += 1
        return self.rows[self.taken - 1]

    def state(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches_before, "rows": self.taken,
                "tally": self.tally.to_json()}
