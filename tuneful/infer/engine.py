"""One generation worker shared by every client: a bounded queue and continuous batching.

Requests wait in a queue of bounded size (a full queue is refused at once, so an overloaded server
answers "busy" instead of piling up work). The worker decodes every running request together, one
token per step, with the KV cache; between steps, waiting requests join the running batch (their
prompts are prefilled together and their cache rows merged in, left-padded) and finished ones leave
it, so a batch never waits for its longest reply and a new request never waits for a batch to end.
Each row keeps its own sampling settings, seed and (for forced tool calls) grammar constraint, so any
requests can share a step. A decoding step costs little more for 16 rows than for one, which is what
makes 16 concurrent clients cheaper than 16 sequential generations.

With a :class:`~tuneful.infer.prefix_cache.PrefixCache`, a finished row's keys and values are kept under its token
ids, and a request that starts the same way (an agent's next turn: its last context, reply and tool results)
prefills only what follows the longest stored prefix. Among requests joining together, a prefix they all share (a
system prompt, tool definitions, fixed few-shot examples) runs through the model once, and so does each distinct
prompt (a GRPO group's copies). A step's rows choose their tokens together (``sampling.next_tokens``).

Rows are merged and dropped in transformers' ``DynamicCache`` (full-attention layers, grown in place:
``batch_rows.GrowingLayer``: a joining row is written into a spare row, a row that ends is overwritten by the last
one); for a model whose cache has other layer kinds (sliding-window, static) the worker falls back to static
batches: one ``generate`` call per batch, rows ending at their own stop token.

Boundary: the engine knows token ids, a model and its stop ids (:class:`Decoding`; a ``ChatModel`` is
one), never text or HTTP. It runs either as a worker thread fed by ``submit`` (the server, the REPL,
the UI) or in the calling thread over a list of requests, ``run`` (``infer.generate``: evaluation,
RL rollouts, Self-Instruct's local teacher, the demo) — one decoding path for all of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import torch
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .batch_rows import growing_cache, left_padded, mergeable_layers, pad_left, positions_of, takes_logits_to_keep
from .constrain import ConstrainedRows
from .prefix_cache import BLOCK, PrefixCache, Reused, common_length
from .requests import MIN_TEMPERATURE, Decoding, GenerationRequest, RunningRow, Sampling
from .sampling import next_tokens

__all__ = ["Decoding", "EngineStopped", "GenerationEngine", "GenerationRequest", "MIN_TEMPERATURE", "QueueFull",
           "Sampling"]


# A prefix every prompt joining together shares is run once when that saves this many prompt tokens: a forward of its
# own costs about as much as prefilling a few dozen tokens more in the joint one.
SHARED_PREFIX_MIN_SAVED = 256


class QueueFull(RuntimeError):
    """The server already holds ``max_queue`` waiting requests."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no more work."""


class GenerationEngine:
    def __init__(self, chat: Any, *, max_batch: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01,
                 prefix_cache: PrefixCache | None = None):
        """``chat``: a :class:`Decoding` or a ``ChatModel`` (its ``model``, ``stop_ids``, ``pad_id``, ``device``).
        ``prefix_cache``: where finished rows are kept and new requests look for their prefix (continuous batches
        only); None: every prompt is prefilled whole."""
        self.chat = chat
        self.prefix_cache = prefix_cache
        self.prefilled_tokens = 0  # prompt tokens run through the model (not those a stored prefix covered)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s  # how long an idle worker waits for company before starting
        self._waiting: deque[GenerationRequest] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="tuneful-generation", daemon=True)
        self.batches: list[int] = []  # rows decoded per step, for tests and the benchmark
        # False once a model's cache turned out not to allow merging rows; an encoder-decoder's cache (self- and
        # cross-attention) is never merged: static batches
        self.continuous = not getattr(chat.model.config, "is_encoder_decoder", False)
        self._stop_ids = list(chat.stop_ids)
        self._vocab = chat.model.get_output_embeddings().weight.shape[0]
        # inference never needs router logits; a model saved with output_router_logits=true would compute its
        # load-balancing loss from a mask that does not match one decoded token
        self._extra = {"output_router_logits": False} if hasattr(chat.model.config, "output_router_logits") else {}
        # a prefill needs the last position's logits only: a long prompt's full logits (x a 150k vocabulary) is GBs
        self._last_only = {"logits_to_keep": 1} if takes_logits_to_keep(chat.model) else {}
        self._rows: list[RunningRow] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, cached length): 1 where a row has a token
        self._next: torch.Tensor | None = None  # (rows,): each row's last chosen token, not yet in the cache
        self._probed = False

    def start(self) -> "GenerationEngine":
        self._probe()
        self._thread.start()
        return self

    def run(self, requests: list[GenerationRequest], on_finished: Any = None) -> None:
        """Decode ``requests`` in the calling thread (no worker, no queue limit) until every one has ended; they
        join the running batch in the order given, as rows free up. ``on_finished(n)``: called after each step
        with how many requests have ended so far (a progress bar). A failed step raises here."""
        self._probe()
        self._waiting.extend(requests)
        while self._waiting or self._rows:
            self._cycle(self._take_waiting(self.max_batch - len(self._rows), block=False) or [])
            if on_finished is not None:
                on_finished(len(requests) - len(self._waiting) - len(self._rows))

    def _probe(self) -> None:
        if not self._probed:
            self._probed = True
            self.continuous = self.continuous and self._rows_can_merge()

    @torch.no_grad()
    def _rows_can_merge(self) -> bool:
        """Whether this model decodes continuous batches at all: two left-padded rows prefilled into a plain
        ``DynamicCache`` and one step decoded (three forwards over a few tokens). A model whose cache has other
        layer kinds, or whose forward keeps a cache of its own (RWKV, MiniMax), gets static batches: its own
        ``generate``. The architecture matrix checks that either way the tokens are the model's own greedy ones."""
        model, device = self.chat.model, self.chat.device
        try:
            cache = growing_cache(model.config)
            if mergeable_layers(cache) is None:
                return False
            ids, mask = left_padded([[3, 4, 5], [6]], self.chat.pad_id)
            ids, mask = ids.to(device), mask.to(device)
            model(input_ids=ids, attention_mask=mask, position_ids=positions_of(mask), past_key_values=cache,
                  use_cache=True, **self._extra)
            if mergeable_layers(cache) is None:
                return False
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                  past_key_values=cache, use_cache=True, **self._extra)
            return mergeable_layers(cache) is not None
        except Exception:
            return False

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
        """Finish the requests being decoded, refuse what still waits, and end the worker."""
        with self._lock:
            self._stopping = True
            refused = list(self._waiting)
            self._waiting.clear()
            self._lock.notify_all()
        for request in refused:
            request.events.put(("error", "the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take_waiting(self, room: int, block: bool) -> list[GenerationRequest] | None:
        """Up to ``room`` waiting requests; when ``block`` (nothing is running), wait for the first and
        then ``batch_wait_s`` for company. None once stopping."""
        with self._lock:
            if block:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._waiting) < room and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            if self._stopping:
                return None
            taken = []
            while self._waiting and len(taken) < room:
                taken.append(self._waiting.popleft())
            return taken

    def _work(self) -> None:
        while True:
            new = self._take_waiting(self.max_batch - len(self._rows), block=not self._rows)
            if new is None:  # stopping: what is running finishes, nothing joins
                if not self._rows:
                    break
                new = []
            try:
                self._cycle(new)
            except Exception as exc:  # a failed step must not kill the server; its clients get the error
                for row in self._rows:
                    if not row.done:
                        row.request.events.put(("error", f"generation failed: {exc}"))
                for request in new:
                    if not any(row.request is request for row in self._rows):
                        request.events.put(("error", f"generation failed: {exc}"))
                self._rows, self._cache, self._mask, self._next = [], None, None, None

    def _cycle(self, new: list[GenerationRequest]) -> None:
        """``new`` requests join, then one token for every running row (or one static batch)."""
        for request in [r for r in new if r.cancelled.is_set()]:
            request.finish("cancelled")
        new = [r for r in new if not r.cancelled.is_set()]
        if not self.continuous:
            if new:
                self._static_batch(new)
            return
        if new:
            self._join(new)
        if self._rows:
            self._step()

    def _join(self, requests: list[GenerationRequest]) -> None:
        """Prefill ``requests`` (those with a stored prefix apart from the rest: their prompts are short; the rest
        after the prefix they all share, run once), choose their first tokens, and merge their cache rows in."""
        rows = [row for row in map(self._row, requests) if row is not None]
        reused = [None] * len(rows)
        if self.prefix_cache is not None and self.continuous:
            reused = [self.prefix_cache.take(row.request.prompt_ids) for row in rows]
        for found in (False, True):
            picked = [(row, r) for row, r in zip(rows, reused) if (r is not None) == found]
            if picked:
                group = [row for row, _ in picked]
                prefixes = [r for _, r in picked] if found else [self._shared_prefix(group)] * len(group)
                self._prefill(group, prefixes)

    @torch.no_grad()
    def _shared_prefix(self, rows: list[RunningRow]) -> Reused | None:
        """The keys and values of the prefix all of ``rows``' prompts share (a system prompt, tool definitions, a
        Self-Instruct prompt's fixed examples), run through the model once — when it saves at least
        :data:`SHARED_PREFIX_MIN_SAVED` prompt tokens; None otherwise (identical prompts: ``_prefill`` runs each
        distinct one once)."""
        prompts = list({tuple(row.request.prompt_ids): None for row in rows})
        if len(prompts) < 2 or not self.continuous:
            return None
        length = min(len(p) for p in prompts) - 1  # one token of each prompt is left to prefill
        first = prompts[0]
        for prompt in prompts[1:]:
            length = common_length(first, prompt, 0, length)
        if length < BLOCK or length * (len(prompts) - 1) < SHARED_PREFIX_MIN_SAVED:
            return None
        cache = growing_cache(self.chat.model.config)
        if mergeable_layers(cache) is None:
            return None
        ids = torch.tensor([first[:length]], device=self.chat.device)
        try:
            self.chat.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                            **self._extra, **self._last_only)
        except Exception:  # noqa: BLE001 - a model that keeps a cache of its own: ``_prefill`` finds out and says so
            return None
        layers = mergeable_layers(cache)
        if layers is None:
            return None
        self.prefilled_tokens += length
        return Reused(length, [(layer.keys[0], layer.values[0]) for layer in layers])

    @torch.no_grad()
    def _prefill(self, rows: list[RunningRow], reused: list[Reused | None]) -> None:
        """One forward over the rows' prompts — after their stored or shared prefixes when they have one (every row
        or none: the prefixes' keys and values put in the new cache first, left-padded like the prompts), and once
        for rows with the same prompt after the same prefix (a GRPO group: each row then samples its own first
        token) — then merge."""
        if not rows:
            return
        model, device = self.chat.model, self.chat.device
        requests = [row.request for row in rows]
        cache = growing_cache(model.config)
        layers = mergeable_layers(cache)
        if layers is None:  # sliding-window, recurrent or linear-attention layers: static batches
            self.continuous = False
            self._static_batch(requests)
            return
        starts = [found.length if found else 0 for found in reused]  # where each prompt's unseen part starts
        distinct: dict[tuple, int] = {}  # (its prefix, its start, its tail) -> the row that runs it
        copies = [distinct.setdefault((id(found), start, tuple(r.prompt_ids[start:])), i)
                  for i, (r, found, start) in enumerate(zip(requests, reused, starts))]
        unique = list(distinct.values())  # the rows that run through the model; the others copy one of them
        past = max(starts[i] for i in unique)
        tails = [requests[i].prompt_ids[starts[i]:] for i in unique]
        ids, mask = left_padded(tails, self.chat.pad_id)
        if past:  # every row reuses a prefix (``_join`` prefills those apart)
            for index, layer in enumerate(layers):
                layer.fill_rows([reused[i].layers[index] for i in unique], past)
            mask = torch.cat([(torch.arange(past) >= past - torch.tensor([starts[i] for i in unique])[:, None]).long(),
                              mask], dim=1)
        ids, mask = ids.to(device), mask.to(device)
        self.prefilled_tokens += sum(map(len, tails))
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_of(mask)[:, past:],
                           past_key_values=cache, use_cache=True, **self._extra, **self._last_only).logits[:, -1, :]
        except Exception:  # a model that keeps a cache of its own (MiniMax, RWKV, ...): its own generate, always
            if past:
                raise
            self.continuous = False
            self._static_batch(requests)
            return
        if mergeable_layers(cache) is None:  # this model's cache cannot merge rows: static batches from now on
            self.continuous = False
            self._static_batch(requests)
            return
        if len(unique) < len(rows):
            place = {row: k for k, row in enumerate(unique)}
            index = torch.tensor([place[c] for c in copies], device=device)
            cache.batch_select_indices(index)
            logits, mask = logits[index], mask[index]
        first = self._advance(rows, logits)
        self.batches.append(len(rows))
        self._merge(rows, cache, mask, torch.tensor(first, device=device))

    def _row(self, request: GenerationRequest, *, constrained: bool = True) -> "RunningRow | None":
        """The running state of ``request``, or None after telling it why it cannot run (its own error only)."""
        try:
            return RunningRow(request, self._vocab, self._stop_ids, constrained=constrained)
        except Exception as exc:  # noqa: BLE001 - e.g. a seed its generator cannot take
            request.events.put(("error", f"generation failed for this request: {exc}"))
            return None

    def _advance(self, rows: list[RunningRow], logits: torch.Tensor) -> list[int]:
        """Choose and hand over the next token of every row not yet done (chosen together: ``sampling.next_tokens``);
        a done row's place gets a stop id (it is dropped next). A failure of one row (its sampling, its constraint)
        ends it alone, with its own error: the other rows go on as if it had never been there."""
        stop = set(self._stop_ids)
        chosen = [self._stop_ids[0]] * len(rows)
        live = [i for i, row in enumerate(rows) if not row.done]
        scores = logits if len(live) == len(rows) else logits[torch.tensor(live, device=logits.device)]
        for i, token in zip(live, next_tokens([rows[i] for i in live], scores)):
            row = rows[i]
            try:
                if isinstance(token, Exception):
                    raise token
                row.take(token, stop)
                chosen[i] = token
            except Exception as exc:  # noqa: BLE001
                row.done = True
                row.request.events.put(("error", f"generation failed for this request: {exc}"))
        return chosen

    def _merge(self, rows: list[RunningRow], cache: Any, mask: torch.Tensor, first: torch.Tensor) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask, self._next = rows, cache, mask, first
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(mergeable_layers(self._cache), mergeable_layers(cache)):
                old.merge_rows(new, width)
            self._mask = torch.cat([pad_left(self._mask, width - self._mask.shape[1], 1),
                                    pad_left(mask, width - mask.shape[1], 1)], dim=0)
            self._rows = self._rows + rows
            self._next = torch.cat([self._next, first])
        self._drop_finished()

    @torch.no_grad()
    def _step(self) -> None:
        """One token for every running row."""
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        positions = (self._mask.sum(-1, keepdim=True) - 1)
        logits = self.chat.model(input_ids=self._next[:, None], attention_mask=self._mask, position_ids=positions,
                                 past_key_values=self._cache, use_cache=True, **self._extra).logits[:, -1, :]
        self.batches.append(len(self._rows))
        for row in self._rows:
            if row.request.cancelled.is_set() and not row.done:
                row._end("cancelled")
        self._next = torch.tensor(self._advance(self._rows, logits), device=self._mask.device)
        self._drop_finished()

    def _drop_finished(self) -> None:
        """Rows that ended leave: the last running rows take their places (only those rows' cache is copied)."""
        done = [i for i, row in enumerate(self._rows) if row.done]
        if not done:
            return
        if self.prefix_cache is not None:
            self._keep_finished(done)
        kept = len(self._rows) - len(done)
        if not kept:
            self._rows, self._cache, self._mask, self._next = [], None, None, None
            return
        places = [i for i in done if i < kept]
        movers = [i for i in range(kept, len(self._rows)) if not self._rows[i].done]
        for layer in mergeable_layers(self._cache):
            layer.keep_rows(movers, places, kept)
        order = list(range(kept))
        for place, mover in zip(places, movers):
            order[place] = mover
        index = torch.tensor(order, device=self._mask.device)
        self._rows = [self._rows[i] for i in order]
        self._mask, self._next = self._mask[index], self._next[index]
        empty = int((self._mask.sum(0) == 0).cumprod(0).sum())  # leading columns no remaining row uses
        if empty:
            for layer in mergeable_layers(self._cache):
                layer.drop_leading(empty)
            self._mask = self._mask[:, empty:]

    def _keep_finished(self, finished: list[int]) -> None:
        """Store each finished row's cached keys and values under the ids they hold: its prompt, then the tokens it
        emitted that were fed back (the last chosen token never is)."""
        layers = mergeable_layers(self._cache)
        for i in finished:
            held = self._mask[i].bool()
            request = self._rows[i].request
            ids = (request.prompt_ids + self._rows[i].emitted)[: int(held.sum())]
            self.prefix_cache.put(ids, [(layer.keys[i][:, held], layer.values[i][:, held]) for layer in layers])

    @torch.no_grad()
    def _static_batch(self, batch: list[GenerationRequest]) -> None:
        """One ``generate`` call for the batch (models whose cache cannot merge rows)."""
        started = [row for row in (self._row(r, constrained=False) for r in batch) if row is not None]
        if not started:
            return
        batch = [row.request for row in started]
        self.batches.append(len(batch))
        model = self.chat.model
        pad = self.chat.pad_id
        ids, mask = left_padded([r.prompt_ids for r in batch], pad)
        rows = _StaticRows(started, set(self._stop_ids))
        sampling = batch[0].sampling
        options: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            options = {"do_sample": True, "temperature": max(sampling.temperature, MIN_TEMPERATURE),
                       "top_p": sampling.top_p}
            if batch[0].seed is not None:
                torch.manual_seed(batch[0].seed)
        if any(r.constraint is not None for r in batch):
            options["logits_processor"] = LogitsProcessorList(
                [ConstrainedRows([r.constraint for r in batch], self._vocab, self._stop_ids)])
        try:
            alone = len(batch) == 1  # no padding: no mask (some architectures' generate cannot take one)
            model.generate(input_ids=ids.to(self.chat.device), attention_mask=None if alone else mask.to(self.chat.device),
                           max_new_tokens=max(r.max_new_tokens for r in batch), eos_token_id=self._stop_ids,
                           pad_token_id=pad, streamer=rows, stopping_criteria=StoppingCriteriaList([rows]),
                           **options, **self._extra)
        except Exception:
            # some architectures' generate fails on a left-padded batch (hybrid caches); alone, each row is the
            # model's own generate — taken only when nothing was emitted yet
            if len(batch) == 1 or any(row.produced for row in rows.rows):
                raise
            for request in batch:
                self._static_batch([request])
            return
        rows.end()


class _StaticRows(StoppingCriteria, BaseStreamer):
    """Per-row bookkeeping during one batched ``generate`` call (static batches): routes tokens, ends rows."""

    def __init__(self, rows: list[RunningRow], stop_ids: set[int]):
        self.rows = rows
        self.stop_ids = stop_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands the streamer the prompt
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.view(-1).tolist()):
            if not row.done:
                row.take(token, self.stop_ids)

    def end(self) -> None:
        for row in self.rows:
            if not row.done:
                row._end("length")

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)
