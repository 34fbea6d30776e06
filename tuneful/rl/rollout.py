"""Sampling a group of completions per prompt, scoring them, and laying them out for the loss.

Knows token ids, a policy that can ``generate`` and a reward callable; nothing about the loop. A
completion is trained exactly as sampled: the prompt ids the policy saw, then its tokens, ending
with the end-of-turn token when it stopped (so stopping is learned; a completion cut at
``max_new_tokens`` has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..infer.episodes import run_episodes
from ..infer.generate import generate
from ..models.loading import DecoderWithHead
from ..models.losses import token_logps
from .losses import group_advantages
from .selection import has_signal


@dataclass(frozen=True)
class Completion:
    prompt: int  # index of the prompt record
    prompt_ids: list[int]
    ids: list[int]
    text: str
    stopped: bool
    reward: float
    advantage: float
    turn: int = 0  # its place in a multi-turn episode (0: the first policy turn, or a single-turn completion)


@dataclass
class RolloutBatch:
    """One micro-batch of completions; ``old_logps`` are the sampling policy's per-token log-probs (μ > 1)."""

    completions: list[Completion]
    old_logps: torch.Tensor | None = None
    groups: int = 0  # prompts sampled for it
    groups_with_signal: int = 0  # of them, those whose rewards were not all equal (the others teach nothing)
    swapped: int = 0  # of them, those dynamic sampling drew instead of the plan's (:mod:`tuneful.rl.selection`)

    @property
    def tokens(self) -> int:
        return sum(len(c.ids) for c in self.completions)

    def group_rewards(self) -> list[tuple[int, list[float]]]:
        """(prompt index, its samples' rewards) per group; an episode counted once (its first turn)."""
        by_prompt: dict[int, list[float]] = {}
        for c in self.completions:
            if c.turn == 0:
                by_prompt.setdefault(c.prompt, []).append(c.reward)
        return list(by_prompt.items())


@dataclass(frozen=True)
class CompletionInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # [rows, width] padding mask, or [rows, 1, width, width] boolean (True = attend)
    position_ids: torch.Tensor
    sources: torch.Tensor  # flat position predicting each completion token
    targets: torch.Tensor  # that token
    sequence: torch.Tensor  # which completion of the batch it belongs to (tokens in completion order)
    advantages: torch.Tensor  # per completion
    lengths: torch.Tensor  # completion tokens per completion

    def to(self, device: Any) -> "CompletionInputs":
        return CompletionInputs(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def model_args(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "sources": self.sources, "targets": self.targets}


def completion_inputs(completions: Sequence[Completion], pad_id: int, *, shared_prompt: bool = False) -> CompletionInputs:
    """The model inputs for a micro-batch of completions, and where each completion token's log-prob is read.

    Rows ``prompt | completion``, right-padded, positions counting from each row's start; or, with
    ``shared_prompt``, one row per run of completions of the same prompt (a group): ``prompt | c1 | c2
    | ...``, the prompt encoded once. There each completion attends to the prompt and to itself only
    and its positions continue from the prompt, so it sees exactly what it would see in its own row
    (same attention, same rotary positions); the last prompt token predicts every completion's first
    token. The block mask needs an attention kernel that takes one (SDPA, eager; not flash-attention).
    """
    rows: list[tuple[list[int], list[int]]] = []  # (prompt ids, completion indices)
    for index, c in enumerate(completions):
        if shared_prompt and rows and rows[-1][0] == c.prompt_ids:  # a group's completions (or turns) of one context
            rows[-1][1].append(index)
        else:
            rows.append((c.prompt_ids, [index]))
    width = max(len(prompt) + sum(len(completions[i].ids) for i in members) for prompt, members in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # -1 padding, 0 prompt, k + 1 the row's k-th completion
    sources, targets, sequence = [], [], []
    for row, (prompt, members) in enumerate(rows):
        p = len(prompt)
        ids[row, :p], positions[row, :p], segment[row, :p] = torch.tensor(prompt), torch.arange(p), 0
        at = p
        for k, index in enumerate(members):
            c = completions[index]
            ids[row, at : at + len(c.ids)] = torch.tensor(c.ids)
            positions[row, at : at + len(c.ids)] = torch.arange(p, p + len(c.ids))
            segment[row, at : at + len(c.ids)] = k + 1
            for j, token in enumerate(c.ids):
                sources.append(row * width + (p - 1 if j == 0 else at + j - 1))
                targets.append(token)
                sequence.append(index)
            at += len(c.ids)
    real = segment >= 0
    if shared_prompt:
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same_or_prompt = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0)
        mask = causal & real[:, :, None] & real[:, None, :] & same_or_prompt
        attention = (mask | torch.eye(width, dtype=torch.bool))[:, None]  # padding attends to itself: no empty row
    else:
        attention = real.long()
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return CompletionInputs(ids, attention, positions, long(sources), long(targets), long(sequence),
                            torch.tensor([c.advantage for c in completions], dtype=torch.float32),
                            long([len(c.ids) for c in completions]))


class CompletionLogps(DecoderWithHead):
    """One decoder pass → the log-prob of every completion token ([T] fp32, in ``sources`` order) under the
    *sampling* distribution: logits divided by the sampling temperature, so π/π_old compares the policy
    that actually drew the tokens."""

    def __init__(self, model: Any, chunk_size: int = 0, temperature: float = 1.0, head: Any = None):
        super().__init__(model, chunk_size, head=head)
        self.temperature = temperature

    def forward(self, input_ids, attention_mask, position_ids, sources, targets):  # type: ignore[override]
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        head = self.lm_head if self.temperature == 1.0 else (lambda h: self.lm_head(h) / self.temperature)
        return token_logps(hidden.reshape(-1, hidden.shape[-1]), sources, targets, head, self.chunk_size)


@dataclass(frozen=True)
class SamplingSettings:
    group_size: int
    max_new_tokens: int
    temperature: float
    batch_size: int
    scale_rewards: str


def sample_groups(policy: Any, tokenizer: Any, prompt_groups: Sequence[Sequence[int]], prompt_ids: Sequence[list[int]],
                  records: Sequence[Any], reward: Callable[..., list[float]], stop_ids: Sequence[int],
                  settings: SamplingSettings, seed: int, server: Any = None) -> list[list[Completion]]:
    """For each micro-batch of prompt indices, ``group_size`` sampled completions per prompt, rewarded and
    given group-relative advantages; the groups of a micro-batch stay together. ``server``: a vLLM server that
    samples instead of ``policy`` (:mod:`tuneful.infer.vllm_server`)."""
    flat = [i for group in prompt_groups for i in group]
    repeated = [i for i in flat for _ in range(settings.group_size)]
    generations = generate(policy, tokenizer, [prompt_ids[i] for i in repeated], stop_ids=stop_ids,
                           max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, do_sample=True,
                           temperature=settings.temperature, seed=seed, server=server)
    texts = [g.text for g in generations]
    rewards = reward([records[i].messages for i in repeated], texts, [records[i].fields for i in repeated])
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32), settings.group_size,
                                  scale=settings.scale_rewards).tolist()
    completions = [Completion(i, prompt_ids[i], g.token_ids + ([g.stop_token] if g.stopped else []), g.text,
                              g.stopped, r, a)
                   for i, g, r, a in zip(repeated, generations, rewards, advantages)]
    out, start = [], 0
    for group in prompt_groups:
        size = len(group) * settings.group_size
        out.append(completions[start : start + size])
        start += size
    return out


def with_signal(rewards: Sequence[float], group_size: int) -> int:
    """How many groups (contiguous runs of ``group_size``) hold rewards that are not all equal."""
    return sum(has_signal(rewards[k : k + group_size]) for k in range(0, len(rewards), group_size))


def sample_episode_groups(policy: Any, tokenizer: Any, renderer: Any, prompt_groups: Sequence[Sequence[int]],
                          records: Sequence[Any], reward: Callable[..., list[float]], tools: Any, parser: Any,
                          settings: SamplingSettings, max_turns: int, seed: int, server: Any = None
                          ) -> list[RolloutBatch]:
    """``sample_groups`` for multi-turn episodes (:mod:`tuneful.infer.episodes`): ``group_size`` episodes per prompt,
    each rewarded as a whole — ``reward(prompt=the conversation before the final answer, completion=the final
    answer, record=...)`` — and every policy turn of an episode a completion carrying the episode's reward and
    advantage, trained in the context it was sampled in (its ``prompt_ids``; tool results lie there, masked)."""
    flat = [i for group in prompt_groups for i in group]
    repeated = [i for i in flat for _ in range(settings.group_size)]
    episodes = run_episodes(policy, tokenizer, renderer, records, repeated, tools, parser, max_turns=max_turns,
                            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                            temperature=settings.temperature, seed=seed, server=server)
    rewards = reward([e.transcript() for e in episodes], [e.final for e in episodes],
                     [records[e.record].fields for e in episodes])
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32), settings.group_size,
                                  scale=settings.scale_rewards).tolist()
    out, start = [], 0
    for group in prompt_groups:
        size = len(group) * settings.group_size
        members = range(start, start + size)
        # first turns together (a group's first turns share their context), then the later turns
        order = sorted(((t, k) for k in members for t in range(len(episodes[k].turns))))
        completions = [Completion(episodes[k].record, turn.context, turn.ids, turn.text, turn.stopped, rewards[k],
                                  advantages[k], t)
                       for t, k in order for turn in [episodes[k].turns[t]]]
        out.append(RolloutBatch(completions, groups=len(group),
                                groups_with_signal=with_signal(rewards[start : start + size], settings.group_size)))
        start += size
    return out
