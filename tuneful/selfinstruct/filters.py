"""Self-Instruct's heuristic filters, each returning the reason a candidate is dropped (or None).

Instruction filters run before the ROUGE-L novelty filter (they are cheaper); instance filters
clean the generated examples of an accepted instruction. Every drop is counted by reason.
"""

from __future__ import annotations

import re
from collections import Counter

from .prompts import Instance

BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_BLACKLIST = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", flags=re.IGNORECASE)
MAX_INSTANCES = 5


def instruction_problem(text: str) -> str | None:
    words = text.split()
    if len(words) <= 3:
        return "too_short"
    if len(words) > 150:
        return "too_long"
    found = _BLACKLIST.search(text)
    if found:
        return f"blacklisted_word:{found.group(1).lower()}"
    if not text[0].isascii():
        return "starts_non_ascii"
    if not text[0].isalnum():
        return "starts_with_punctuation"
    if text.lower().startswith("write a program"):
        return "write_a_program"
    return None


def clean_instances(instances: list[Instance]) -> tuple[list[Instance], Counter]:
    """Drop bad instances; returns (kept, reasons). At most MAX_INSTANCES kept per task."""
    reasons: Counter = Counter()
    kept = []
    for inst in instances:
        if not inst.output.strip():
            reasons["empty_output"] += 1
        elif inst.output.strip().endswith(":"):
            reasons["output_ends_with_colon"] += 1
        elif inst.input.strip() and inst.input.strip() == inst.output.strip():
            reasons["input_equals_output"] += 1
        else:
            kept.append(inst)
    outputs_by_input: dict[str, set[str]] = {}
    for inst in kept:
        outputs_by_input.setdefault(inst.input.strip(), set()).add(inst.output.strip())
    conflicting = {i for i, outs in outputs_by_input.items() if len(outs) > 1}
    consistent = []
    seen = set()
    for inst in kept:
        key = (inst.input.strip(), inst.output.strip())
        if inst.input.strip() in conflicting:
            reasons["same_input_different_outputs"] += 1
        elif key in seen:
            reasons["duplicate_instance"] += 1
        else:
            seen.add(key)
            consistent.append(inst)
    if len(consistent) > MAX_INSTANCES:
        reasons["over_max_instances"] += len(consistent) - MAX_INSTANCES
        consistent = consistent[:MAX_INSTANCES]
    return consistent, reasons
