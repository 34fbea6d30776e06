"""Which prompts an online step samples: the epoch plan's, steered towards prompts that teach
(``dynamic_sampling``).

A group whose rewards are all equal — every sample passed, or every one failed — has zero advantage
everywhere (GRPO) and gives no pair (online DPO): its generation buys no gradient. DAPO (Yu et al. 2025,
arXiv:2503.14476, "dynamic sampling") over-samples and drops such groups, which multiplies the generation.
This keeps the generation fixed and uses history instead. Every sampled group is recorded under its
prompt's *key* — the prompt itself, or a record field naming a set of prompts (a task family), so that a
run shorter than an epoch, which never meets a prompt twice, still steers — and a key's *signal rate* is
the share of its last ``WINDOW`` groups whose rewards differed (a key never sampled: 1). Before a step
samples, each planned prompt is kept with probability max(revisit, its key's rate); otherwise it is swapped
for a prompt not yet in the step, drawn uniformly and accepted with that same probability (rejection
sampling: prompts are drawn in proportion to their key's rate). ``revisit`` keeps every prompt reachable —
the policy moves: an all-fail family may become learnable, an all-pass one may slip. When no replacement
is accepted within ``MAX_DRAWS`` draws, the planned prompt stays.

Knows prompt keys, indices and rewards only; the trainer decides when to choose and what to record.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

WINDOW = 8  # groups per key that make its recent signal rate
MAX_DRAWS = 1_000  # rejection-sampling draws per swap before the planned prompt stays


def has_signal(rewards: Sequence[float]) -> bool:
    """Whether a group's rewards differ: only then do its advantages (or its best-vs-worst pair) teach anything."""
    return len(set(rewards)) > 1


@dataclass
class SignalHistory:
    """The recent signal of every prompt key; ``keys[i]`` is prompt i's."""

    keys: Sequence[str]
    revisit: float  # the least chance a planned prompt is kept (and a drawn one accepted)
    recent: dict[str, deque] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        """Share of the key's last groups with signal; 1 for a key not sampled yet."""
        groups = self.recent.get(key)
        return sum(groups) / len(groups) if groups else 1.0

    def choose(self, planned: Sequence[Sequence[int]], rng: random.Random) -> tuple[list[list[int]], list[int]]:
        """The step's micro-batches of prompt indices after swapping, and per micro-batch how many were swapped in."""
        weight = lambda i: max(self.revisit, self.rate(self.keys[i]))  # noqa: E731
        taken = {i for group in planned for i in group}
        chosen, swapped = [], []
        for group in planned:
            row, count = [], 0
            for i in group:
                replacement = None
                if rng.random() >= weight(i):
                    for _ in range(MAX_DRAWS):
                        j = rng.randrange(len(self.keys))
                        if j not in taken and rng.random() < weight(j):
                            replacement = j
                            break
                if replacement is None:
                    row.append(i)
                else:
                    taken.add(replacement)
                    row.append(replacement)
                    count += 1
            chosen.append(row)
            swapped.append(count)
        return chosen, swapped

    def record(self, groups: Iterable[tuple[int, Sequence[float]]]) -> None:
        """Remember sampled groups: (prompt index, the rewards of its samples), in sampling order."""
        for prompt, rewards in groups:
            self.recent.setdefault(self.keys[prompt], deque(maxlen=WINDOW)).append(int(has_signal(rewards)))

    def state(self) -> dict:
        """For a checkpoint: each key's recent signals, oldest first."""
        return {key: list(groups) for key, groups in sorted(self.recent.items())}

    def restore(self, state: dict | None) -> None:
        self.recent = {key: deque(groups, maxlen=WINDOW) for key, groups in (state or {}).items()}
