"""One generation worker shared by every client: a bounded queue and dynamic batching.

Requests wait in a queue of bounded size (a full queue is refused at once, so an overloaded server
answers "busy" instead of piling up work). The worker takes the oldest request plus every other
waiting request with the same sampling settings, up to ``max_batch``, and decodes them together
with the KV cache; each row streams its tokens to its own request as they are produced and stops
at its own limit or stop token. Batching is what makes 16 concurrent clients cheaper than 16
sequential generations: a decoding step costs little more for 16 rows than for one.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..infer.chat_model import ChatModel
from ..infer.generate import left_padded


class QueueFull(RuntimeError):
    """The server already holds ``max_queue`` waiting requests."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no more work."""


@dataclass(frozen=True)
class Sampling:
    """Settings that must agree for requests to share a batch."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    seed: int | None = None
    stream: bool = True  # False: tokens are collected and handed over once, at the end (fewer thread wake-ups)
    constraint: Any = None  # an llguidance matcher the reply must follow (tool_choice required / named), see constrain.py
    events: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def tokens(self) -> Iterator[int]:
        """Yields new token ids until the request ends; then ``finish_reason`` is set."""
        while True:
            kind, value = self.events.get()
            if kind == "token":
                yield value
            elif kind == "tokens":
                yield from value
            elif kind == "done":
                self.finish_reason = value
                return
            else:
                raise RuntimeError(value)

    finish_reason: str | None = None  # "stop" (end of turn) or "length"
    collected: list[int] = field(default_factory=list)  # tokens not yet handed over (stream=False)


class _Rows(StoppingCriteria, BaseStreamer):
    """Per-row bookkeeping during one batched ``generate`` call: routes tokens, ends rows."""

    def __init__(self, requests: list[GenerationRequest], stop_ids: set[int]):
        self.requests = requests
        self.stop_ids = stop_ids
        self.produced = [0] * len(requests)
        self.done = [False] * len(requests)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands the streamer the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.view(-1).tolist()):
            if self.done[row]:
                continue
            request = self.requests[row]
            if token in self.stop_ids:
                self._finish(row, "stop")
                continue
            if request.stream:
                request.events.put(("token", token))
            else:
                request.collected.append(token)
            self.produced[row] += 1
            if self.produced[row] >= request.max_new_tokens:
                self._finish(row, "length")
            elif request.cancelled.is_set():
                self._finish(row, "cancelled")

    def end(self) -> None:
        for row in range(len(self.requests)):
            if not self.done[row]:
                self._finish(row, "length")

    def _finish(self, row: int, reason: str) -> None:
        self.done[row] = True
        request = self.requests[row]
        if request.collected:
            request.events.put(("tokens", request.collected))
        request.events.put(("done", reason))

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor(self.done, device=input_ids.device)


class GenerationEngine:
    def __init__(self, chat: ChatModel, *, max_batch: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.chat = chat
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s  # how long the first request waits for company
        self._waiting: deque[GenerationRequest] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="tuneful-generation", daemon=True)
        self.batches: list[int] = []  # batch sizes served, for tests and the benchmark

    def start(self) -> "GenerationEngine":
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> GenerationRequest:
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self._waiting.append(request)
            self._lock.notify()
        return request

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being decoded, refuse what still waits, and end the worker."""
        with self._lock:
            self._stopping = True
            refused = list(self._waiting)
            self._waiting.clear()
            self._lock.notify_all()
        for request in refused:
            request.events.put(("error", "the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> list[GenerationRequest] | None:
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            # Requests that arrive together (a burst of clients) should be decoded together: give
            # the queue a moment to fill before starting a batch that cannot take latecomers.
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._waiting) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            if self._stopping:  # stop() also emptied the queue
                return None
            first = self._waiting.popleft()
            batch = [first]
            for request in list(self._waiting):
                if len(batch) >= self.max_batch:
                    break
                if request.sampling == first.sampling and request.seed == first.seed:
                    self._waiting.remove(request)
                    batch.append(request)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [r for r in batch if not r.cancelled.is_set()]
            for r in batch:
                if r.cancelled.is_set():
                    r.events.put(("done", "cancelled"))
            if not live:
                continue
            try:
                self._decode(live)
            except Exception as exc:  # a failed batch must not kill the server; its clients get the error
                for r in live:
                    r.events.put(("error", f"generation failed: {exc}"))

    @torch.no_grad()
    def _decode(self, batch: list[GenerationRequest]) -> None:
        self.batches.append(len(batch))
        model = self.chat.model
        pad = self.chat.pad_id
        ids, mask = left_padded([r.prompt_ids for r in batch], pad)
        rows = _Rows(batch, set(self.chat.stop_ids))
        sampling = batch[0].sampling
        options: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            if batch[0].seed is not None:
                torch.manual_seed(batch[0].seed)
        if any(r.constraint is not None for r in batch):
            from .constrain import ConstrainedRows

            vocab = model.get_output_embeddings().weight.shape[0]
            options["logits_processor"] = LogitsProcessorList([ConstrainedRows([r.constraint for r in batch], vocab, self.chat.stop_ids)])
        model.generate(input_ids=ids.to(self.chat.device), attention_mask=mask.to(self.chat.device),
                       max_new_tokens=max(r.max_new_tokens for r in batch), eos_token_id=self.chat.stop_ids,
                       pad_token_id=pad, streamer=rows, stopping_criteria=StoppingCriteriaList([rows]), **options)
        rows.end()


class TextDeltas:
    """Turns a stream of token ids into text pieces, never splitting a multi-byte character."""

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens  # False where a call marker may be a special token
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
