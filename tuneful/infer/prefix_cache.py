"""Key/value states of finished sequences, kept for the next request that starts the same way.

An agent's next turn is its last context, the reply it wrote and the tool results: prefilling the whole
conversation again every turn was a third of the sandbox agent's evaluation time (docs/benchmarks.md, session 29),
and a chat client resends its whole conversation every request. The engine stores a
finished row's keys and values here under its token ids; a new request takes the stored sequence sharing its
longest prefix and prefills only what follows. Reuse is by exact token ids: a template that re-renders an
earlier turn differently (dropped reasoning, another tokenization of the reply) matches up to the first
differing token and prefills the rest, so the result is the full prefill's up to float rounding.

A sequence that a new request covers whole is dropped (an episode's context grows every turn: its next stored
sequence holds the old one); one matched in part only — a shared system prompt — stays for the request it
belongs to. Lookup is by hashes of 16-token blocks (the longest block-aligned hit, then token by token); the
least recently used sequences go first when ``max_bytes`` is exceeded.

Boundary: token ids and per-layer ``(heads, length, dim)`` key/value tensors; the engine decides when to store
and take. One cache serves one model: ``infer.episodes`` keeps one per call, the server, the REPL and the UI one
per engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

BLOCK = 16  # tokens per hashed block; a prefix shorter than this is never reused


@dataclass
class _Stored:
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (heads, len(ids), dim)
    blocks: list[int]  # its block hashes, for unregistering
    nbytes: int


@dataclass(frozen=True)
class Reused:
    length: int  # how many leading tokens of the request the layers cover
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (heads, length, dim)


class PrefixCache:
    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._stored: dict[int, _Stored] = {}  # least recently stored or used first
        self._by_block: dict[int, dict[int, None]] = {}  # block-chain hash -> keys of sequences with that prefix
        self._next_key = 0
        self.taken = 0  # requests that reused a stored prefix
        self.reused_tokens = 0  # tokens they did not prefill

    def __len__(self) -> int:
        return len(self._stored)

    def put(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``layers`` (each ``(heads, len(ids), dim)``) for a later request starting with ``ids``."""
        if len(ids) < BLOCK or not layers:
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.max_bytes:
            return
        key, self._next_key = self._next_key, self._next_key + 1
        blocks = list(_block_hashes(ids))
        self._stored[key] = _Stored(list(ids), layers, blocks, nbytes)
        for block in blocks:
            self._by_block.setdefault(block, {})[key] = None
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._remove(next(iter(self._stored)))

    def take(self, ids: list[int]) -> Reused | None:
        """The stored sequence sharing the longest prefix with ``ids`` — at most ``len(ids) - 1`` tokens of it, so
        that one token is left to prefill for the next token's logits; None without one of at least :data:`BLOCK`
        tokens. A sequence covered whole leaves the cache."""
        limit = len(ids) - 1
        best, best_length = None, 0
        for count, block in reversed(list(enumerate(_block_hashes(ids[:limit]), start=1))):
            for key in self._by_block.get(block, ()):
                stored = self._stored[key]
                if stored.ids[: count * BLOCK] != ids[: count * BLOCK]:  # a hash collision
                    continue
                length = common_length(stored.ids, ids, count * BLOCK, limit)
                if length > best_length:
                    best, best_length = key, length
            if best is not None:
                break
        if best is None:
            return None
        stored = self._stored[best]
        if best_length == len(stored.ids):
            self._remove(best)
        else:
            self._stored[best] = self._stored.pop(best)  # now the most recently used
        self.taken += 1
        self.reused_tokens += best_length
        return Reused(best_length, [(k[:, :best_length], v[:, :best_length]) for k, v in stored.layers])

    def _remove(self, key: int) -> None:
        stored = self._stored.pop(key)
        for block in stored.blocks:
            keys = self._by_block[block]
            del keys[key]
            if not keys:
                del self._by_block[block]
        self.nbytes -= stored.nbytes


def _block_hashes(ids: list[int]) -> Iterator[int]:
    """One hash per whole block of ``ids``, each chained to the ones before it (a hash names a whole prefix)."""
    chained = 0
    for start in range(0, len(ids) - BLOCK + 1, BLOCK):
        chained = hash((chained, tuple(ids[start : start + BLOCK])))
        yield chained


def common_length(a: list[int], b: list[int], start: int, limit: int) -> int:
    """How many leading ids ``a`` and ``b`` share (at most ``limit``), given that the first ``start`` are equal."""
    n = min(len(a), len(b), limit)
    for i in range(start, n):
        if a[i] != b[i]:
            return i
    return n
