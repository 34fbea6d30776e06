"""Noisy training pools (for the curation experiment) and preference pairs (for DPO).

Every record says in ``meta`` what was done to it, so an experiment can measure what a curation
stage removed and whether DPO moved the targeted behaviour.
"""

from __future__ import annotations

import random

from .tasks import TRAINING_FAMILIES, TaskInstance, training_instance, verify
from .world import Country


NOISE_KINDS = ("clean", "wrong", "truncated", "near_duplicate")
FILLER = ("Let me think about this carefully before I answer.", "That is an interesting question with a long history.",
          "Many people have asked this before, and the answer is not always simple.",
          "I will explain it step by step so that nothing is missed.")


def wrong_answer(rng: random.Random, world: list[Country], inst: TaskInstance, family) -> str:
    """A fluent answer that fails the verifier: another instance's answer of the same family."""
    for _ in range(20):
        other = training_instance(rng, world, family).answer
        if not verify(inst, other):
            return other
    return "I am not sure."


def truncated(answer: str) -> str:
    words = answer.split(" ")
    return " ".join(words[: max(1, len(words) // 2)]) if len(words) > 1 else answer[: max(1, len(answer) // 2)]


def near_duplicate(messages: list[dict], rng: random.Random) -> list[dict]:
    text = messages[-1]["content"]
    variant = rng.choice((text + " Please.", "Please: " + text, text.replace("?", " ?"), text.lower()))
    return messages[:-1] + [{"role": "user", "content": variant}]


def noisy_pool(world: list[Country], n: int, seed: int, *, overrepresented: str = "capital",
               share: dict[str, float] | None = None) -> list[dict]:
    """``n`` conversations: clean ones plus wrong, truncated and near-duplicate ones; one family over-represented."""
    rng = random.Random(seed + 101)
    share = share or {"wrong": 0.2, "truncated": 0.15, "near_duplicate": 0.15}
    families = TRAINING_FAMILIES
    weights = [5.0 if f.name == overrepresented else 1.0 for f in families]
    out = []
    while len(out) < n:
        family = rng.choices(families, weights)[0]
        inst = training_instance(rng, world, family)
        roll, kind, acc = rng.random(), "clean", 0.0
        for name, p in share.items():
            acc += p
            if roll < acc:
                kind = name
                break
        messages, answer = inst.messages, inst.answer
        if kind == "wrong":
            answer = wrong_answer(rng, world, inst, family)
        elif kind == "truncated":
            answer = truncated(answer)
        elif kind == "near_duplicate" and any(r["meta"]["noise"] == "clean" for r in out):
            source = rng.choice([r for r in out if r["meta"]["noise"] == "clean"])
            messages, answer = near_duplicate(source["messages"][:-1], rng), source["messages"][-1]["content"]
            family_name = source["meta"]["family"]
            out.append({"messages": messages + [{"role": "assistant", "content": answer}],
                        "meta": {"family": family_name, "noise": kind, "check": source["meta"]["check"]}})
            continue
        out.append({"messages": messages + [{"role": "assistant", "content": answer}],
                    "meta": {"family": inst.family, "noise": kind if kind != "near_duplicate" else "clean",
                             "check": inst.check}})
    return out


def preference_pairs(world: list[Country], n: int, seed: int) -> list[dict]:
    """Chosen = correct and concise; rejected = wrong (half) or correct but rambling (half). Training phrasings."""
    rng = random.Random(seed + 202)
    families = TRAINING_FAMILIES
    return [pair_for(rng, world, training_instance(rng, world, family), family, "wrong" if k % 2 == 0 else "rambling")
            for k, family in enumerate(rng.choice(families) for _ in range(n))]


def pair_for(rng: random.Random, world: list[Country], inst: TaskInstance, family, rejected_is: str) -> dict:
    """A preference pair for one task instance: its answer against a wrong or a rambling one."""
    if rejected_is == "wrong":
        rejected = wrong_answer(rng, world, inst, family)
    else:
        rejected = " ".join(rng.sample(FILLER, 2)) + " " + inst.answer
    return {"prompt": inst.messages, "chosen": inst.answer, "rejected": rejected,
            "meta": {"family": inst.family, "rejected_is": rejected_is, "check": inst.check}}
