"""What a generation request is and how one running row of it chooses tokens: the request (prompt ids, length
limit, sampling, seed, constraint, where its events go) and, while it runs, its sampler and constraint
(:class:`RunningRow`). :mod:`tuneful.infer.engine` batches the rows (and :mod:`tuneful.infer.sampling` chooses their
tokens together); nothing here knows of other rows or of a cache.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .constrain import RowConstraint
from .sampling import MIN_TEMPERATURE, UnusableScores, sample

__all__ = ["MIN_TEMPERATURE", "Decoding", "GenerationRequest", "RunningRow", "Sampling"]


@dataclass(frozen=True)
class Decoding:
    """What the engine needs of a model (``infer.chat_model.ChatModel`` has the same attributes)."""

    model: Any
    stop_ids: list[int]
    pad_id: int  # masked out by attention: any id works

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class Sampling:
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
    # where the worker puts the request's events (anything with ``put``: the server's queue awaits on its loop)
    events: Any = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def tokens(self) -> Iterator[int]:
        """Yields new token ids until the request ends; then ``finish_reason`` is set."""
        while (ids := self.unpack(*self.events.get())) is not None:
            yield from ids

    def unpack(self, kind: str, value: Any) -> list[int] | None:
        """The token ids one event carries; None for the event that ends the request (``finish_reason`` is then
        set). The worker's error for this request is raised here, as a RuntimeError."""
        if kind == "token":
            return [value]
        if kind == "tokens":
            return value
        if kind == "done":
            self.finish_reason = value
            return None
        raise RuntimeError(value)

    finish_reason: str | None = None  # "stop" (end of turn), "length" or "cancelled"
    stop_token: int | None = None  # the stop id that ended it (finish_reason "stop"); never emitted as a token
    collected: list[int] = field(default_factory=list)  # tokens not yet handed over (stream=False)

    def emit(self, token: int) -> None:
        if self.stream:
            self.events.put(("token", token))
        else:
            self.collected.append(token)

    def finish(self, reason: str) -> None:
        if self.collected:
            self.events.put(("tokens", self.collected))
            self.collected = []
        self.events.put(("done", reason))


class RunningRow:
    """A running request: what it has produced, its sampler and its constraint."""

    def __init__(self, request: GenerationRequest, vocab_size: int, stop_ids: list[int], *, constrained: bool = True):
        self.request = request
        self.produced = 0
        self.emitted: list[int] = []  # the tokens handed over: with the prompt, what its cache row holds
        self.done = False
        self.generator = None
        if request.sampling.temperature > 0:
            self.generator = torch.Generator()
            if request.seed is not None:
                self.generator.manual_seed(request.seed)
            else:
                self.generator.seed()
        self.constraint = None
        if request.constraint is not None and constrained:  # static batches constrain inside generate()
            self.constraint = RowConstraint(request.constraint, vocab_size, stop_ids)

    def uniform(self) -> float:
        """The next number in [0, 1) of this row's own random stream (sampled rows only)."""
        return float(torch.rand((), dtype=torch.float64, generator=self.generator))

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from this row's last-position scores, alone (greedy, or sampled with its settings as
        :func:`~tuneful.infer.sampling.next_tokens` samples rows together); its constraint masks the scores first."""
        if self.constraint is not None:
            scores = self.constraint.restrict(scores)
        if self.generator is None:
            return int(scores.argmax())
        [token] = sample(scores[None], [self.request.sampling], [self.uniform()])
        if isinstance(token, UnusableScores):
            raise token
        return token

    def take(self, token: int, stop_ids: set[int]) -> None:
        """Hand ``token`` to the request, or end it (stop token, length limit, client gone)."""
        request = self.request
        if token in stop_ids:
            request.stop_token = token
            return self._end("stop")
        if self.constraint is not None:
            self.constraint.advance(token)
        request.emit(token)
        self.emitted.append(token)
        self.produced += 1
        if self.produced >= request.max_new_tokens:
            self._end("length")
        elif request.cancelled.is_set():
            self._end("cancelled")

    def _end(self, reason: str) -> None:
        self.done = True
        self.request.finish(reason)
