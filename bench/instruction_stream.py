"""A realistic stream of candidate instructions for the ROUGE-L filter (bench and tests).

Real instructions (IFEval prompts, Self-Instruct and Alpaca seed tasks, MT-Bench questions, the
Alpaca demo set, all read from ../shared/fixtures) are mixed with perturbed copies of themselves:
a word dropped, two words swapped, a word from another instruction inserted, or the halves of two
instructions joined. That is the shape of a teacher model's output: mostly paraphrase-level near
duplicates of what it has seen, some novel combinations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "data"


def real_instructions(fixtures: Path = FIXTURES) -> list[str]:
    out = []
    for line in (fixtures / "ifeval" / "input_data.jsonl").read_text().splitlines():
        out.append(json.loads(line)["prompt"])
    for name in ("self_instruct/seed_tasks.jsonl", "stanford_alpaca/seed_tasks.jsonl"):
        for line in (fixtures / name).read_text().splitlines():
            out.append(json.loads(line)["instruction"])
    for line in (fixtures / "mt_bench" / "mt_bench_question.jsonl").read_text().splitlines():
        out.extend(json.loads(line)["turns"])
    out.extend(r["instruction"] for r in json.loads((fixtures / "llamafactory" / "alpaca_en_demo.json").read_text()))
    return list(dict.fromkeys(t.strip() for t in out if t.strip()))


def perturb(text: str, others: list[str], rng: random.Random) -> str:
    words = text.split()
    kind = rng.randrange(4)
    if kind == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif kind == 1 and len(words) > 3:
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    elif kind == 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice(others).split() or ["and"]))
    else:
        other = rng.choice(others).split()
        words = words[: max(1, len(words) // 2)] + other[len(other) // 2 :]
    return " ".join(words)


def stream(n: int, seed: int = 0, fixtures: Path = FIXTURES) -> tuple[list[str], list[str]]:
    """(seed instructions kept up front, n candidates in order)."""
    rng = random.Random(seed)
    real = real_instructions(fixtures)
    rng.shuffle(real)
    seeds, pool = real[:175], real[175:]
    candidates = []
    for _ in range(n):
        if rng.random() < 0.3:
            candidates.append(rng.choice(pool))
        else:
            source = rng.choice(pool if rng.random() < 0.7 else candidates or pool)
            candidates.append(perturb(source, pool, rng))
    return seeds, candidates
