"""Reward sources for online methods, and their weighted combination.

A source scores a batch of sampled replies: ``source(prompts, completions, records) -> [float]``,
``prompts`` the conversations so far (lists of OpenAI-style message dicts), ``completions`` the
sampled replies as text, ``records`` each prompt record's other fields (e.g. a reference answer).

- ``python:MODULE:FUNCTION`` or ``python:FILE.py:FUNCTION`` — a Python function called once per reply
  as ``fn(prompt=..., completion=..., record=...)``, returning a number (a verifier, a format check).
- ``rm:FOLDER`` — a reward model trained with ``tuneful rm train``.
- ``judge:MODEL@BASE_URL`` — an OpenAI-compatible chat model rating each reply 1-10 (scaled to 0-1);
  the key is read from OPENAI_API_KEY, never logged.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.types import Message
from ..infer.judge import JudgeSettings, OpenAIJudge
from ..preference.reward_score import RewardScorer

Prompts = Sequence[Sequence[dict]]


class RewardSpecError(ValueError):
    pass


def load_function(spec: str) -> Callable[..., Any]:
    """``module:function`` (importable) or ``path/to/file.py:function``."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise RewardSpecError(f"reward function {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise RewardSpecError(f"reward function {spec!r}: {path} does not exist")
        module_name = f"tuneful_reward_{abs(hash(str(path.resolve())))}"
        loaded = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loaded)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        loaded.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RewardSpecError(f"reward function {spec!r}: cannot import {target} ({exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardSpecError(f"reward function {spec!r}: {target} has no function {name}")
    return fn


class PythonReward:
    def __init__(self, spec: str):
        self.name, self.fn = f"python:{spec}", load_function(spec)

    def __call__(self, prompts: Prompts, completions: Sequence[str], records: Sequence[dict]) -> list[float]:
        out = []
        for prompt, completion, record in zip(prompts, completions, records):
            value = self.fn(prompt=list(prompt), completion=completion, record=record)
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                raise RewardSpecError(f"reward function {self.name} returned {value!r}; it must return a number")
            out.append(float(value))
        return out


class ModelReward:
    def __init__(self, folder: str, device: str = "cpu"):
        self.name, self.scorer = f"rm:{folder}", RewardScorer(folder, device=device)

    def __call__(self, prompts: Prompts, completions: Sequence[str], records: Sequence[dict]) -> list[float]:
        messages = [[Message(m["role"], m.get("content") or "") for m in p] for p in prompts]
        return self.scorer.score_replies(messages, completions)


JUDGE_RATING_PROMPT = (
    "Rate how well the answer follows the user's request: correct, helpful, complete and no longer than "
    "needed. Reply with a one-sentence reason, then the rating from 1 to 10 on its own line as [[N]].")
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


class JudgeReward:
    """Pointwise ratings from an OpenAI-compatible judge; a reply without a rating scores 0 and is counted."""

    def __init__(self, spec: str):
        model, _, base_url = spec.partition("@")
        self.name, self.unparsed = f"judge:{model}", 0
        self.ask = OpenAIJudge(JudgeSettings(model=model, base_url=base_url or None, max_tokens=128))

    def __call__(self, prompts: Prompts, completions: Sequence[str], records: Sequence[dict]) -> list[float]:
        out = []
        for prompt, completion in zip(prompts, completions):
            question = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in prompt)
            reply = self.ask([{"role": "system", "content": JUDGE_RATING_PROMPT},
                              {"role": "user", "content": f"[Conversation]\n{question}\n\n[Answer]\n{completion}"}])
            found = _RATING.findall(reply or "")
            if not found:
                self.unparsed += 1
            out.append(min(10.0, max(0.0, float(found[-1]))) / 10 if found else 0.0)
        return out


def reward_source(spec: str, device: str = "cpu") -> Any:
    kind, _, rest = spec.partition(":")
    if kind == "python":
        return PythonReward(rest)
    if kind == "rm":
        return ModelReward(rest, device)
    if kind == "judge":
        return JudgeReward(rest)
    raise RewardSpecError(f"reward {spec!r}: expected python:MODULE:FUNCTION, rm:FOLDER or judge:MODEL@BASE_URL")


class CombinedReward:
    """Σ weight_i · source_i; ``parts`` keeps each source's raw scores of the last call (for metrics)."""

    def __init__(self, specs: Sequence[str], weights: Sequence[float], device: str = "cpu"):
        self.sources = [reward_source(s, device) for s in specs]
        self.weights = list(weights) or [1.0] * len(self.sources)
        self.parts: dict[str, list[float]] = {}

    def __call__(self, prompts: Prompts, completions: Sequence[str], records: Sequence[dict]) -> list[float]:
        total = [0.0] * len(completions)
        self.parts = {}
        for source, weight in zip(self.sources, self.weights):
            scores = source(prompts, completions, records)
            self.parts[source.name] = scores
            total = [t + weight * s for t, s in zip(total, scores)]
        return total
