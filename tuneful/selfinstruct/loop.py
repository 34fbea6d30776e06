"""``tuneful generate``: grow a dataset from seed tasks with a teacher model (Self-Instruct).

Each round sends ``requests_per_round`` prompts to the teacher and processes what comes back:

- ``self-instruct`` style: a list prompt with 8 example instructions (6 seeds + 2 generated ones
  once there are some) → new instructions → heuristic filters → ROUGE-L novelty filter →
  classification yes/no → instances (input-first, or output-first for classification) →
  instance filters;
- ``alpaca`` style: a prompt with 3 seed tasks asking for ``alpaca_batch`` triples → the same
  instruction filters, novelty filter and instance filters.

Resumable by construction: the whole outcome of a round (accepted tasks and every rejection with
its reason) is appended to ``journal.jsonl`` as one line, flushed and fsync'ed. A kill at any
point loses at most the round in progress; a truncated last line is discarded on restart, the
kept instructions and counters are rebuilt from the journal, and the round is run again. Nothing
is duplicated: the novelty filter is rebuilt from the journal, and every line is one whole round.
``tasks.jsonl`` and ``data.jsonl`` (canonical conversations for ``tuneful sft``) are rewritten from
the journal at the end of every run.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .filters import clean_instances, instruction_problem
from .prompts import (Task, alpaca_prompt, classification_prompt, instance_prompt, instruction_prompt, parse_alpaca,
                      parse_instances, parse_instructions, parse_yes_no)
from .rouge import RougeFilter, THRESHOLD
from .seeds import load_seeds
from .teacher import Teacher


STYLES = ("self-instruct", "alpaca")


@dataclass
class GenerateSettings:
    out: Path
    n: int  # accepted tasks wanted
    seeds: str = "tuneful"  # seed file, or "tuneful" for the built-in set
    style: str = "self-instruct"
    requests_per_round: int = 8
    seed_examples: int = 6  # human-written instructions per list prompt
    machine_examples: int = 2  # generated instructions per list prompt (once there are some)
    alpaca_batch: int = 20  # triples asked for per Alpaca-style request
    rouge_threshold: float = THRESHOLD
    max_rounds: int | None = None  # default: 20 + n (a bound, so a useless teacher cannot loop forever)
    max_tokens: int = 1024
    temperature: float = 0.7
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        errors = []
        if self.style not in STYLES:
            errors.append(f"--style {self.style!r}: choose one of {', '.join(STYLES)}")
        if self.n < 1:
            errors.append("--n must be at least 1")
        if self.requests_per_round < 1 or self.max_tokens < 1:
            errors.append("--requests-per-round and --max-tokens must be at least 1")
        if not 0 < self.rouge_threshold <= 1:
            errors.append("--rouge-threshold must be in (0, 1]")
        if errors:
            raise ValueError("; ".join(errors))
        self.out = Path(self.out)


@dataclass
class RoundResult:
    round: int
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"text", "stage", "reason"}
    instance_drops: dict[str, int] = field(default_factory=dict)
    failed_requests: int = 0
    novel: list[str] = field(default_factory=list)  # passed the novelty filter: compared against from now on


# --- the journal ----------------------------------------------------------------------------------

def read_journal(path: Path) -> list[dict]:
    """Complete round records; a torn last line (a kill mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def append_round(path: Path, record: RoundResult) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- one round ------------------------------------------------------------------------------------

class Generator:
    def __init__(self, settings: GenerateSettings, teacher: Teacher, seeds: list[Task]):
        self.settings = settings
        self.teacher = teacher
        self.seeds = seeds
        self.rouge = RougeFilter(threshold=settings.rouge_threshold)
        self.rouge.add(t.instruction for t in seeds)
        self.generated: list[str] = []
        self.clf_shots = self._classification_shots()

    def _classification_shots(self) -> list[tuple[str, bool]]:
        yes = [t for t in self.seeds if t.is_classification][:3]
        no = [t for t in self.seeds if not t.is_classification][:3]
        shots = [s for pair in zip(no, yes) for s in pair] or (no + yes)
        return [(t.instruction, t.is_classification) for t in shots]

    def restore(self, journal: list[dict]) -> None:
        for record in journal:
            self.rouge.add(record["novel"])
            self.generated += record["novel"]

    def run_round(self, index: int) -> RoundResult:
        rng = random.Random(self.settings.seed * 1_000_003 + index)
        result = RoundResult(index)
        if self.settings.style == "alpaca":
            candidates = self._alpaca_candidates(rng, result)
        else:
            candidates = self._list_candidates(rng, result)
        survivors = self._filter_instructions(candidates, result)
        if self.settings.style == "self-instruct":
            survivors = self._add_instances(survivors, rng, index, result)
        drops: Counter = Counter()
        for task in survivors:
            kept, reasons = clean_instances(list(task.instances))
            drops.update(reasons)
            if kept:
                result.accepted.append({"instruction": task.instruction, "is_classification": task.is_classification,
                                        "instances": [asdict(i) for i in kept]})
            else:
                result.rejected.append({"text": task.instruction, "stage": "instances", "reason": "no_valid_instances"})
        result.instance_drops = dict(drops)
        return result

    def _list_candidates(self, rng: random.Random, result: RoundResult) -> list[Task]:
        prompts = []
        for _ in range(self.settings.requests_per_round):
            examples = rng.sample([t.instruction for t in self.seeds], min(self.settings.seed_examples, len(self.seeds)))
            if self.generated:
                examples += rng.sample(self.generated, min(self.settings.machine_examples, len(self.generated)))
            rng.shuffle(examples)
            prompts.append(instruction_prompt(examples))
        replies = self.teacher.complete(prompts, max_tokens=self.settings.max_tokens,
                                        temperature=self.settings.temperature, seed=rng.randrange(2**31))
        result.failed_requests += sum(r is None for r in replies)
        return [Task(text, ()) for reply in replies if reply is not None for text in parse_instructions(reply)]

    def _alpaca_candidates(self, rng: random.Random, result: RoundResult) -> list[Task]:
        with_instances = [t for t in self.seeds if t.instances]
        prompts = [alpaca_prompt(rng.sample(with_instances, min(3, len(with_instances))), self.settings.alpaca_batch)
                   for _ in range(self.settings.requests_per_round)]
        replies = self.teacher.complete(prompts, max_tokens=self.settings.max_tokens,
                                        temperature=self.settings.temperature, seed=rng.randrange(2**31))
        result.failed_requests += sum(r is None for r in replies)
        return [task for reply in replies if reply is not None for task in parse_alpaca(reply)]

    def _filter_instructions(self, candidates: list[Task], result: RoundResult) -> list[Task]:
        plausible = []
        for task in candidates:
            problem = instruction_problem(task.instruction)
            if problem:
                result.rejected.append({"text": task.instruction, "stage": "heuristic", "reason": problem})
            else:
                plausible.append(task)
        decisions = self.rouge.filter([t.instruction for t in plausible])
        survivors = []
        for task, keep in zip(plausible, decisions):
            if keep:
                survivors.append(task)
            else:
                result.rejected.append({"text": task.instruction, "stage": "rouge",
                                        "reason": f"rouge_l_above_{self.settings.rouge_threshold}"})
        result.novel = [t.instruction for t in survivors]
        self.generated += result.novel
        return survivors

    def _add_instances(self, tasks: list[Task], rng: random.Random, index: int, result: RoundResult) -> list[Task]:
        if not tasks:
            return []
        clf_replies = self.teacher.complete([classification_prompt(t.instruction, self.clf_shots) for t in tasks],
                                            max_tokens=4, temperature=0.0)
        is_clf = [parse_yes_no(r or "") for r in clf_replies]
        result.failed_requests += sum(r is None for r in clf_replies)
        prompts = []
        for task, clf in zip(tasks, is_clf):
            pool = [t for t in self.seeds if t.is_classification == clf and t.instances] or self.seeds
            prompts.append(instance_prompt(task.instruction, rng.sample(pool, min(2, len(pool))), output_first=clf))
        replies = self.teacher.complete(prompts, max_tokens=self.settings.max_tokens,
                                        temperature=0.0, seed=index)
        result.failed_requests += sum(r is None for r in replies)
        out = []
        for task, clf, reply in zip(tasks, is_clf, replies):
            if reply is None:
                result.rejected.append({"text": task.instruction, "stage": "instances", "reason": "teacher_failed"})
                continue
            out.append(Task(task.instruction, tuple(parse_instances(reply, output_first=clf)), clf))
        return out


# --- the run ----------------------------------------------------------------------------------------

def to_conversation(task: dict, instance: dict) -> dict:
    prompt = task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": instance["output"]}],
            "meta": {"source": "self-instruct", "is_classification": task["is_classification"]}}


def root_verbs(instructions: list[str], top: int = 20) -> list[tuple[str, int]]:
    """Most common first words (lower-cased): a parser-free stand-in for the paper's root verbs."""
    firsts = Counter(t.split()[0].lower().strip(".,:;!?\"'") for t in instructions if t.split())
    return firsts.most_common(top)


def run_generate(settings: GenerateSettings, teacher: Teacher) -> dict[str, Any]:
    started = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(settings.seeds)
    journal_path = settings.out / "journal.jsonl"
    journal = read_journal(journal_path)
    generator = Generator(settings, teacher, seeds)
    generator.restore(journal)
    accepted = sum(len(r["accepted"]) for r in journal)
    resumed_rounds = len(journal)
    max_rounds = settings.max_rounds if settings.max_rounds is not None else 20 + settings.n
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.n, initial=min(accepted, settings.n), desc="accepted tasks", unit="task")
    rejected = sum(len(r["rejected"]) for r in journal)
    index = len(journal)
    while accepted < settings.n and index < max_rounds:
        result = generator.run_round(index)
        room = settings.n - accepted  # stop at exactly n; the surplus is reported, not hidden
        result.rejected += [{"text": t["instruction"], "stage": "target", "reason": "beyond_n"}
                            for t in result.accepted[room:]]
        result.accepted = result.accepted[:room]
        append_round(journal_path, result)
        journal.append(asdict(result))
        accepted += len(result.accepted)
        rejected += len(result.rejected)
        index += 1
        if bar is not None:
            bar.update(len(result.accepted))
            bar.set_postfix(rejected=rejected, round=index)
    if bar is not None:
        bar.close()
    report = summarize(journal, settings, time.perf_counter() - started, resumed_rounds, teacher)
    write_outputs(settings.out, journal, report)
    return report


def summarize(journal: list[dict], settings: GenerateSettings, seconds: float, resumed_rounds: int,
              teacher: Teacher) -> dict[str, Any]:
    tasks = [t for r in journal for t in r["accepted"]]
    reasons: Counter = Counter(f"{x['stage']}:{x['reason']}" for r in journal for x in r["rejected"])
    instance_drops: Counter = Counter()
    for r in journal:
        instance_drops.update(r.get("instance_drops", {}))
    return {
        "accepted": len(tasks), "target": settings.n, "reached_target": len(tasks) >= settings.n,
        "instances": sum(len(t["instances"]) for t in tasks),
        "classification_tasks": sum(t["is_classification"] for t in tasks),
        "rounds": len(journal), "resumed_from_round": resumed_rounds,
        "rejected": sum(reasons.values()), "rejected_by_reason": dict(reasons.most_common()),
        "instances_dropped_by_reason": dict(instance_drops.most_common()),
        "failed_requests": sum(r.get("failed_requests", 0) for r in journal),
        "teacher_this_run": teacher.stats.as_dict(),
        "root_verbs": root_verbs([t["instruction"] for t in tasks]),
        "style": settings.style, "seconds_this_run": seconds,
    }


def write_outputs(out: Path, journal: list[dict], report: dict) -> None:
    tasks = [t for r in journal for t in r["accepted"]]
    _atomic_write(out / "tasks.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    _atomic_write(out / "data.jsonl", "".join(json.dumps(to_conversation(t, i), ensure_ascii=False) + "\n"
                                              for t in tasks for i in t["instances"]))
    _atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    lines = [f"# Self-Instruct run — {report['accepted']} / {report['target']} tasks accepted "
             f"({report['instances']} instances, {report['rounds']} rounds)", "",
             "| rejected because | count |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report["rejected_by_reason"].items()]
    lines += ["", "| instance dropped because | count |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report["instances_dropped_by_reason"].items()]
    lines += ["", "Most common first words (root-verb proxy): "
              + ", ".join(f"{w} ({c})" for w, c in report["root_verbs"]), "",
              f"Teacher this run: {report['teacher_this_run']}", ""]
    _atomic_write(out / "report.md", "\n".join(lines))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
