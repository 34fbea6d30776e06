"""The prompts sent to the teacher and the parsers for its replies (wording written here).

Self-Instruct's three steps (Wang et al. 2023): continue a numbered list of tasks; decide whether
a task is a classification task; write instances, input-first for ordinary tasks and output-first
(label, then input) for classification tasks so that labels do not all come out the same. The
Alpaca variant (Taori et al. 2023) asks for many instruction/input/output triples in one request.

Replies are parsed leniently where the method allows it: the reply to the list prompt continues
the list, so its first line is the next task even without a number; an instance reply with no
``Input:``/``Output:`` markers is one output with no input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

NO_INPUT = "<none>"


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True)
class Task:
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool = False


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- step 1: new instructions ------------------------------------------------------------------

def instruction_prompt(examples: Sequence[str]) -> list[dict]:
    listed = "\n".join(f"{k}. {' '.join(text.split())}" for k, text in enumerate(examples, start=1))
    return _user("Below is a numbered list of varied requests people make to a helpful assistant. "
                 "Continue the list with new requests that are different from all of the above in "
                 "topic and in form.\n\n" + listed + f"\n{len(examples) + 1}.")


def parse_instructions(reply: str) -> list[str]:
    """Items of the continued list; the first chunk is the item the prompt left open."""
    chunks = re.split(r"\n\s*\d+\s*[.)](?:\s+|$)", "\n" + reply.strip())
    out = []
    for chunk in chunks:
        text = " ".join(re.sub(r"^\s*\d+\s*[.)]\s*", "", chunk).split())
        if text:
            out.append(text)
    return out


# --- step 2: classification or not ------------------------------------------------------------

def classification_prompt(task: str, examples: Sequence[tuple[str, bool]]) -> list[dict]:
    shots = "\n\n".join(f"Task: {' '.join(t.split())}\nClassification task: {'Yes' if c else 'No'}" for t, c in examples)
    return _user("Decide whether each task is a classification task: one whose answer is picked from a "
                 "small, fixed set of labels. Answer Yes or No.\n\n" + shots
                 + f"\n\nTask: {' '.join(task.split())}\nClassification task:")


def parse_yes_no(reply: str) -> bool:
    return bool(re.match(r"\s*(yes|y\b)", reply or "", flags=re.IGNORECASE))


# --- step 3: instances ---------------------------------------------------------------------------

def _example_block(task: Task, output_first: bool) -> str:
    lines = [f"Task: {' '.join(task.instruction.split())}"]
    for k, inst in enumerate(task.instances[:2], start=1):
        lines.append(f"Example {k}")
        if output_first:
            lines += [f"Class label: {inst.output}", f"Input: {inst.input or NO_INPUT}"]
        else:
            lines += [f"Input: {inst.input or NO_INPUT}", f"Output: {inst.output}"]
    return "\n".join(lines)


def instance_prompt(instruction: str, shots: Sequence[Task], output_first: bool) -> list[dict]:
    if output_first:
        head = ("For each task, write examples. For each example first choose one of the possible class "
                "labels, then write an input that has that label. Use different labels across examples.")
    else:
        head = ("For each task, write examples. For each example write the input, then the correct output. "
                f"If the task needs no input, write 'Input: {NO_INPUT}' and give the output.")
    body = "\n\n".join(_example_block(t, output_first) for t in shots)
    return _user(f"{head}\n\n{body}\n\nTask: {' '.join(instruction.split())}\n")


def parse_instances(reply: str, output_first: bool) -> list[Instance]:
    reply = re.split(r"\n\s*Task\s*:", reply)[0]  # the model went on to another task: ignore the rest
    blocks = [b for b in re.split(r"(?:^|\n)\s*Example\s*\d+\s*:?\s*\n?", reply) if b.strip()]
    first_key, second_key = ("Class label", "Input") if output_first else ("Input", "Output")
    pattern = re.compile(rf"{first_key}\s*:(.*?)(?:\n\s*{second_key}\s*:(.*))?$", flags=re.DOTALL | re.IGNORECASE)
    out = []
    for block in blocks:
        match = pattern.search(block)
        if match is None:
            continue
        first, second = match.group(1).strip(), (match.group(2) or "").strip()
        if output_first:
            out.append(Instance(_clean_input(second), first))
        else:
            out.append(Instance(_clean_input(first), second))
    if not out and not re.search(r"(Input|Output|Class label)\s*:", reply, flags=re.IGNORECASE):
        text = reply.strip()
        if text:
            out.append(Instance("", text))  # a task needing no input, answered directly
    return out


def _clean_input(text: str) -> str:
    return "" if text.strip().lower() in (NO_INPUT, "none", "<noinput>", "n/a", "") else text.strip()


# --- Alpaca style: many triples from one request ------------------------------------------------

def alpaca_prompt(shots: Sequence[Task], count: int) -> list[dict]:
    rules = ("Write {n} new, varied tasks for a helpful assistant, each with an instruction, an optional "
             "input and a good response. Vary the verbs and the kinds of task (questions, rewriting, "
             "classification, brainstorming, short writing, reasoning). Instructions are one or two "
             "sentences; inputs give concrete content when the task needs it, otherwise write "
             f"'{NO_INPUT}'; responses answer fully in under 100 words. Use the format of the "
             "examples, separating tasks with ###.").format(n=count)
    blocks = []
    for k, task in enumerate(shots, start=1):
        inst = task.instances[0] if task.instances else Instance("", "")
        blocks.append(f"{k}. Instruction: {' '.join(task.instruction.split())}\n{k}. Input:\n"
                      f"{inst.input or NO_INPUT}\n{k}. Output:\n{inst.output}")
    return _user(rules + "\n\n" + "\n###\n".join(blocks) + f"\n###\n{len(shots) + 1}. Instruction:")


def parse_alpaca(reply: str) -> list[Task]:
    text = "Instruction:" + reply if not re.match(r"\s*\d*\.?\s*Instruction\s*:", reply) else reply
    out = []
    for block in re.split(r"\n?\s*###\s*\n?", text):
        match = re.search(r"Instruction\s*:(.*?)\n\s*\d*\.?\s*Input\s*:(.*?)\n\s*\d*\.?\s*Output\s*:(.*)$", block,
                          flags=re.DOTALL | re.IGNORECASE)
        if match is None:
            continue
        instruction, given, output = (g.strip() for g in match.groups())
        out.append(Task(" ".join(instruction.split()), (Instance(_clean_input(given), output),)))
    return out
