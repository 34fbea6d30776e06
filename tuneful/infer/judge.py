"""Pairwise win rate judged by any OpenAI-compatible chat model, with position swapping.

LLM judges favour whichever answer is shown first (position bias; Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv:2306.05685). Each pair is therefore judged
twice, once in each order. A model wins a prompt only when both orders prefer it; a split
verdict counts as a tie, so a judge that always says "first" produces only ties (win rate 0.5)
rather than a fake winner. ``win_rate = (wins + ties / 2) / prompts``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

JUDGE_INSTRUCTIONS = (
    "You compare two answers to the same user request. Judge which answer follows the request "
    "better: correct, helpful, complete and no longer than needed. Ignore the order in which the "
    "answers appear. Reply with a one-sentence reason, then the verdict on its own line: [[A]] if "
    "answer A is better, [[B]] if answer B is better, [[C]] if they are equally good."
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class JudgeSettings:
    model: str
    base_url: str | None = None  # None: the openai package's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never logged or written
    max_tokens: int = 256
    timeout_s: float = 120.0


def _question(messages: Sequence[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def judge_prompt(messages: Sequence[dict], first: str, second: str) -> list[dict]:
    body = (f"[Conversation]\n{_question(messages)}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}")
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": body}]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) from the judge's reply; the last bracketed verdict counts; None if absent."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


class OpenAIJudge:
    """Calls the judge model; ``ask(messages) -> reply text``."""

    def __init__(self, settings: JudgeSettings):
        from openai import OpenAI

        key = os.environ.get(settings.api_key_env) or "not-needed"  # local servers accept any key
        self.settings = settings
        self.client = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s, max_retries=2)

    def __call__(self, messages: list[dict]) -> str:
        reply = self.client.chat.completions.create(model=self.settings.model, messages=messages, temperature=0.0,
                                                    max_tokens=self.settings.max_tokens)
        return reply.choices[0].message.content or ""


def pairwise(ask: Callable[[list[dict]], str], conversations: Sequence[Sequence[dict]], answers_x: Sequence[str],
             answers_y: Sequence[str]) -> dict[str, Any]:
    """How often X beats Y, judged in both orders. Unparseable verdicts count as ties and are reported."""
    wins = losses = ties = unparsed = consistent = 0
    verdicts = []
    for messages, x, y in zip(conversations, answers_x, answers_y):
        first = parse_verdict(ask(judge_prompt(messages, x, y)))  # X shown as A
        second = parse_verdict(ask(judge_prompt(messages, y, x)))  # X shown as B
        unparsed += (first is None) + (second is None)
        x_first, x_second = first == "A", second == "B"
        y_first, y_second = first == "B", second == "A"
        if x_first and x_second:
            wins += 1
            outcome = "win"
        elif y_first and y_second:
            losses += 1
            outcome = "loss"
        else:
            ties += 1
            outcome = "tie"
        consistent += (first is not None and second is not None
                       and {"A": "B", "B": "A", "C": "C"}[first] == second)
        verdicts.append({"x_as_a": first, "x_as_b": second, "outcome": outcome})
    n = len(verdicts)
    return {"prompts": n, "wins": wins, "losses": losses, "ties": ties,
            "win_rate": (wins + ties / 2) / n if n else 0.0,
            "order_consistency": consistent / n if n else 0.0, "unparsed_verdicts": unparsed, "verdicts": verdicts}
