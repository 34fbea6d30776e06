"""``tuneful demo --self-instruct``: Self-Instruct (Wang et al. 2023) from 175 seed tasks, measured in the sandbox.

seeds → teacher → ``tuneful generate`` → ``tuneful curate`` → students, every step through the public code a
user runs (``selfinstruct.loop.run_generate`` with a ``LocalTeacher``, ``curate.pipeline.Curator``, the SFT
trainer); the sandbox's verifiers only score.

- **Seeds**: 175 tasks in the paper's format (instruction, instances, is_classification) from 12 of the 17
  single-turn training families (training phrasings only), drawn per seed.
- **Teacher**: the base model fine-tuned on the task bank (every training family, the human-written data) and on
  the paper's three prompts, built from the bank: continue a numbered list of 8 requests (the next requests come
  mostly from the families in the list, now and then from another one it knows), say whether a task is a
  classification task, write an instance for a task. It knows the world only as well as the base model learned
  it; its mistakes are what the students may inherit.
- **Generate** ``tasks`` instructions with the paper loop, its heuristic filters and ROUGE-L novelty filter
  (threshold ``rouge_threshold``: the sandbox's requests are 5–10 words around one or two slot words, so at the
  paper's 0.7 every request of a phrasing is a near-duplicate of the first — 0.9 leaves only near-copies out).
- **Students**, each the base fine-tuned for the same number of steps: on everything generated, on the same number
  of human-written conversations (the task bank's own data), on ``tuneful curate``'s ``budget`` of the generated
  set, on a random ``budget`` of it.

The curation sees only the generated records (messages and Self-Instruct's own ``meta``: source,
is_classification); families are attributed to generated requests afterwards, for the report only
(``family_of``).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rapidfuzz.distance import LCSseq

from ..curate.config import CurateSettings
from ..selfinstruct.loop import GenerateSettings, run_generate
from ..selfinstruct.prompts import (NO_INPUT, Instance, Task, classification_prompt, instance_prompt,
                                    instruction_prompt)
from ..selfinstruct.teacher import LocalTeacher
from .demo import DemoSettings, _load, evaluate_model, experiment
from .lima import curate_pool
from .report import SUMMARY_KEYS, _pyplot, arm_bars, stderr_points, write_experiment
from .tasks import (FAMILIES, FAMILY_BY_NAME, SINGLE_TURN_TRAINING_FAMILIES, TRAINING_FAMILIES, Family, TaskInstance,
                    eval_instances, sft_instances, to_conversation, training_instance)

ARMS = ("base", "teacher", "generated", "human", "curated", "random")
STUDENTS = ("generated", "human", "curated", "random")


@dataclass
class SelfInstructSettings:
    seeds: int = 175  # seed tasks, the paper's number
    seed_families: int = 12  # single-turn training families the seeds cover (of 17)
    teacher_per_family: int = 200  # task-bank conversations per training family in the teacher's data
    teacher_list_prompts: int = 1500  # "continue the list" examples in the teacher's data
    teacher_classification_prompts: int = 600
    teacher_instance_prompts: int = 4000  # the hardest of the three for a 4M model: answer the last task, not a shot
    teacher_steps: int = 1200
    tasks: int = 5000  # generated tasks wanted (each with its instances)
    rouge_threshold: float = 0.9
    requests_per_round: int = 128
    max_tokens: int = 96
    budget: int = 1000  # records in the curated and the random set
    steps: int = 900  # SFT steps of every student
    eval_per_family: int = 64  # 1,216 held-out-phrasing prompts (19 families): a standard error of at most 1.5
    # points (100 √(0.25 / 1,216) = 1.43 at 50 %)


def _request(instance: TaskInstance) -> str:
    return instance.messages[-1]["content"]


def seed_tasks(world: list, settings: SelfInstructSettings, seed: int) -> tuple[list[dict], list[str]]:
    """The seed tasks (Self-Instruct's format) and the families they cover."""
    rng = random.Random(seed + 401)
    families = rng.sample(list(SINGLE_TURN_TRAINING_FAMILIES), settings.seed_families)
    seeds, seen = [], set()
    k = 0
    while len(seeds) < settings.seeds:
        family = families[k % len(families)]
        k += 1
        inst = training_instance(rng, world, family)
        if _request(inst) in seen:
            continue
        seen.add(_request(inst))
        seeds.append({"id": f"sandbox_seed_{len(seeds)}", "instruction": _request(inst),
                      "instances": [{"input": "", "output": inst.answer}],
                      "is_classification": family.kind == "classification"})
    return seeds, sorted(f.name for f in families)


# --- the teacher's data: the task bank and the paper's three prompts ------------------------------

def list_example(rng: random.Random, world: list, families: list[Family], stay: float = 0.75) -> dict:
    """8 requests from 2–4 families → 3 more, each from one of those families with probability ``stay``."""
    chosen = rng.sample(families, rng.randint(2, 4))
    shown = [_request(training_instance(rng, world, rng.choice(chosen))) for _ in range(8)]
    more = [_request(training_instance(rng, world, rng.choice(chosen if rng.random() < stay else families)))
            for _ in range(3)]
    reply = more[0] + "".join(f"\n{k}. {text}" for k, text in enumerate(more[1:], start=len(shown) + 2))
    return {"messages": instruction_prompt(shown) + [{"role": "assistant", "content": reply}]}


def classification_example(rng: random.Random, world: list, families: list[Family]) -> dict:
    clf = [f for f in families if f.kind == "classification"]
    other = [f for f in families if f.kind != "classification"]
    shots = [(_request(training_instance(rng, world, rng.choice(pool))), pool is clf)
             for _ in range(3) for pool in (other, clf)]
    family = rng.choice(clf if rng.random() < 0.3 else other)
    answer = "Yes" if family.kind == "classification" else "No"
    return {"messages": classification_prompt(_request(training_instance(rng, world, family)), shots)
            + [{"role": "assistant", "content": answer}]}


def instance_example(rng: random.Random, world: list, families: list[Family]) -> dict:
    family = rng.choice(families)
    clf = family.kind == "classification"
    same = [f for f in families if (f.kind == "classification") == clf]
    shots = []
    for _ in range(2):
        shot = training_instance(rng, world, rng.choice(same))
        shots.append(Task(_request(shot), (Instance("", shot.answer),), clf))
    inst = training_instance(rng, world, family)
    reply = (f"Example 1\nClass label: {inst.answer}\nInput: {NO_INPUT}" if clf
             else f"Example 1\nInput: {NO_INPUT}\nOutput: {inst.answer}")
    return {"messages": instance_prompt(_request(inst), shots, output_first=clf)
            + [{"role": "assistant", "content": reply}]}


def teacher_records(world: list, settings: SelfInstructSettings, seed: int) -> list[dict]:
    rng = random.Random(seed + 402)
    families = list(SINGLE_TURN_TRAINING_FAMILIES)
    records = [to_conversation(i) for i in sft_instances(world, settings.teacher_per_family, seed + 403)]
    records += [list_example(rng, world, families) for _ in range(settings.teacher_list_prompts)]
    records += [classification_example(rng, world, families) for _ in range(settings.teacher_classification_prompts)]
    records += [instance_example(rng, world, families) for _ in range(settings.teacher_instance_prompts)]
    rng.shuffle(records)
    return records


# --- which family a generated request belongs to (for the report only) ----------------------------

def _literal_words(phrasing: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", re.sub(r"\{[a-z_]+\}", " ", phrasing.lower()))


def _pattern(phrasing: str) -> re.Pattern:
    parts = re.split(r"(\{[a-z_]+\})", phrasing)
    words = "".join(r"(.+?)" if p.startswith("{") else r"\W*".join(map(re.escape, re.findall(r"\w+", p))) + r"\W*"
                    for p in parts if p)
    return re.compile(r"\W*" + words + r"\W*", flags=re.IGNORECASE)


# the phrasings with the most words of their own first: "Where is it?" (clarify) before "Where is {name}?"
_PHRASINGS = sorted(((f.name, p) for f in FAMILIES if not f.follow_ups for p in f.phrasings),
                    key=lambda item: -len(_literal_words(item[1])))
_PATTERNS = [(name, _pattern(p), _literal_words(p)) for name, p in _PHRASINGS]


def phrasing_family(request: str) -> str | None:
    """The single-turn task-bank family one of whose phrasings the request fills (a greeting or a closing around it
    allowed), or None."""
    for name, pattern, _ in _PATTERNS:
        if pattern.search(request.strip()):
            return name
    return None


def family_of(request: str) -> str:
    """The family whose phrasing the request fills (``phrasing_family``), else the family whose phrasing's own
    words the request holds most of, in order (over 70 %: a word dropped or changed), else ``"other"``. For the
    report only: the curation never sees it."""
    exact = phrasing_family(request)
    if exact is not None:
        return exact
    words = re.findall(r"[a-z0-9]+", request.lower())
    best, score = "other", 0.7
    for name, _, literal in _PATTERNS:
        if len(literal) >= 2:  # the share of the phrasing's own words the request holds in order
            recall = LCSseq.similarity(literal, words) / len(literal)
            if recall > score:
                best, score = name, recall
    return best


FACT_FAMILIES = ("capital", "region", "colour", "animal", "population")  # one slot, {name}; the family names the fact


def fact_answer_accuracy(records: list[dict], world: list) -> dict[str, dict[str, int]]:
    """For the generated records whose request fills a phrasing of a fact family: how many name a country of the
    world (``checked``) and how many of those answers the family's verifier accepts (``correct``) — the teacher's
    mistakes as the students read them. For the report only."""
    countries = {c.name.lower(): c for c in world}
    out = {family: {"checked": 0, "correct": 0} for family in FACT_FAMILIES}
    for record in records:
        request = record["messages"][0]["content"]
        name = phrasing_family(request)
        named = [countries[w] for w in re.findall(r"\w+", request.lower()) if w in countries]
        if name in FACT_FAMILIES and len(named) == 1:
            out[name]["checked"] += 1
            out[name]["correct"] += FAMILY_BY_NAME[name].verify(record["messages"][-1]["content"],
                                                                {"word": str(getattr(named[0], name))})
    return out


# --- the experiment ------------------------------------------------------------------------------

def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or None where one side is constant (r is undefined)."""
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        return None


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _families(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        name = family_of(r["messages"][0]["content"])
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def copied_errors(teacher_rows: list[dict], student_rows: list[dict]) -> dict[str, float]:
    """Per family: of the eval prompts the teacher gets wrong, the share the student answers wrong with the
    teacher's very words."""
    out: dict[str, list[int]] = {}
    for t, s in zip(teacher_rows, student_rows):
        if not t["correct"]:
            out.setdefault(t["family"], []).append(int(not s["correct"] and s["answer"].strip() == t["answer"].strip()))
    return {family: sum(v) / len(v) for family, v in sorted(out.items())}


def run_selfinstruct(demo: DemoSettings, settings: SelfInstructSettings) -> dict:
    started = time.perf_counter()
    setup = experiment(demo)
    base, world, data, out = setup.base, setup.world, setup.data, demo.out
    timings: dict[str, float] = {}

    seeds, seed_families = seed_tasks(world, settings, demo.seed)
    seeds_path = _write(data / "seed_tasks.jsonl", seeds)

    t = time.perf_counter()
    teacher_data = teacher_records(world, settings, demo.seed)
    teacher_train = _write(data / "teacher.jsonl", teacher_data)
    teacher = setup.train(teacher_train, out / "teacher", settings.teacher_steps,
                          ("data.max_length=384",))  # the list and instance prompts reach ~350 tokens
    timings["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    gen_settings = GenerateSettings(out=data / "generated", n=settings.tasks, seeds=str(seeds_path),
                                    requests_per_round=settings.requests_per_round, max_tokens=settings.max_tokens,
                                    rouge_threshold=settings.rouge_threshold, seed=demo.seed, progress=demo.progress)
    local = LocalTeacher(str(teacher.model_dir), batch_size=settings.requests_per_round, device="cpu")
    generation = run_generate(gen_settings, local)
    generated = [json.loads(line) for line in (gen_settings.out / "data.jsonl").read_text().splitlines()]
    timings["generate"] = time.perf_counter() - t
    if not generated:
        raise RuntimeError(f"the teacher generated no usable task: {generation['rejected_by_reason']}")

    t = time.perf_counter()
    pool_path = _write(data / "generated.jsonl", generated)
    kept, rejected = curate_pool(pool_path, CurateSettings(budget=settings.budget, reference_model=str(base),
                                                           ifd_model=str(base), seed=demo.seed))
    timings["curate"] = time.perf_counter() - t
    per_family = math.ceil(len(generated) / len(TRAINING_FAMILIES))
    human = [to_conversation(i) for i in sft_instances(world, per_family, demo.seed + 404)][: len(generated)]
    sets_by_arm = {"generated": generated, "human": human, "curated": [generated[i] for i in kept],
                   "random": random.Random(demo.seed + 405).sample(generated, min(settings.budget, len(generated)))}

    sets = eval_instances(world, settings.eval_per_family, demo.seed)
    n_phrasing = len(sets["heldout_phrasing"])
    report: dict[str, Any] = {"arms": {}}
    rows: dict[str, list[dict]] = {}

    def measure(name: str, model_dir: Path, extra: dict) -> None:
        t = time.perf_counter()
        summary, rows[name] = evaluate_model(_load(model_dir), setup.tokenizer, sets, setup.stop_ids,
                                             demo.max_new_tokens, setup.end_of_turn)
        timings[f"eval_{name}"] = time.perf_counter() - t
        report["arms"][name] = {**summary, **extra,
                                "stderr_points": stderr_points(summary["heldout_phrasing_accuracy"], n_phrasing)}

    measure("base", base, {})
    measure("teacher", teacher.model_dir, {"records": len(teacher_data), "steps": teacher.steps,
                                           "final_loss": teacher.final_loss})
    facts: dict[str, dict] = {}
    for name in STUDENTS:
        t = time.perf_counter()
        result = setup.train(_write(data / f"{name}.jsonl", sets_by_arm[name]), out / f"sft-{name}", settings.steps)
        timings[f"sft_{name}"] = time.perf_counter() - t
        facts[name] = fact_answer_accuracy(sets_by_arm[name], world)
        measure(name, result.model_dir, {"records": len(sets_by_arm[name]), "families": _families(sets_by_arm[name]),
                                         "steps": result.steps, "final_loss": result.final_loss,
                                         "fact_answers_right": sum(v["correct"] for v in facts[name].values()),
                                         "fact_answers_checked": sum(v["checked"] for v in facts[name].values())})

    teacher_by, student_by = report["arms"]["teacher"]["by_family"], report["arms"]["generated"]["by_family"]
    families = [f.name for f in FAMILIES]
    report["inherited_correlation"] = pearson([teacher_by[f] for f in families], [student_by[f] for f in families])
    report["teacher_weak_families"] = {f: {"teacher": teacher_by[f], "generated": student_by[f]}
                                       for f in families if teacher_by[f] < 0.3}
    report["copied_errors"] = copied_errors(rows["teacher"], rows["generated"])
    generated_families = report["arms"]["generated"]["families"]
    report["generated_kept"] = generation["accepted"]
    report["generated_instances"] = len(generated)
    report["generated_families"] = generated_families
    report["generated_fact_accuracy"] = facts["generated"]
    report["outside_seed_families"] = sum(n for f, n in generated_families.items() if f not in seed_families)
    report["seed_families"] = seed_families
    report["filtered_by_reason"] = {**generation["rejected_by_reason"],
                                    **{f"instance:{k}": v for k, v in generation["instances_dropped_by_reason"].items()}}
    report["generation"] = {k: generation[k] for k in ("rounds", "rejected", "failed_requests", "root_verbs",
                                                       "teacher_this_run", "classification_tasks")}
    report["curation"] = {"rejected_by_stage": rejected}
    report["stderr_points"] = {name: arm["stderr_points"] for name, arm in report["arms"].items()}
    report["eval_prompts"] = {name: len(v) for name, v in sets.items()}
    report["settings"] = {**asdict(settings), "lr": demo.lr, "micro_batch_size": demo.micro_batch_size,
                          "replay_ratio": demo.replay_ratio, "lora": demo.lora, "seed": demo.seed}
    report["timings"] = timings
    report["seconds"] = time.perf_counter() - started
    write_selfinstruct_report(out, report)
    return report


# --- the report ----------------------------------------------------------------------------------

def render_selfinstruct(report: dict) -> str:
    arms, s = report["arms"], report["settings"]
    lines = ["# Self-Instruct in the sandbox: seeds → teacher → generate → curate → students", "",
             f"{s['seeds']} seed tasks from {len(report['seed_families'])} families ({', '.join(report['seed_families'])}); "
             f"a teacher fine-tuned from the base for {arms['teacher']['steps']} steps on the task bank and the paper's "
             f"three prompts; `tuneful generate` kept {report['generated_kept']:,} tasks "
             f"({report['generated_instances']:,} instances, ROUGE-L threshold {s['rouge_threshold']}); each student is "
             f"the base fine-tuned for the same {s['steps']} steps. Held-out prompts: "
             f"{report['eval_prompts']['heldout_phrasing']:,} held-out phrasings, {report['eval_prompts']['heldout_family']:,} "
             "held-out families (verifier-checked).", "",
             "| | " + " | ".join(ARMS) + " |", "|---|" + "---:|" * len(ARMS),
             "| records | " + " | ".join(f"{arms[a]['records']:,}" if "records" in arms[a] else "–" for a in ARMS) + " |"]
    for key, label in SUMMARY_KEYS:
        lines.append(f"| {label} | " + " | ".join(f"{arms[a][key]:.1%}" for a in ARMS) + " |")
    lines.append("| standard error, held-out phrasings (points) | "
                 + " | ".join(f"{arms[a]['stderr_points']:.1f}" for a in ARMS) + " |")
    lines += ["", "## Inherited mistakes", "",
              "Pearson r between the teacher's and the generated-data student's accuracy per family: "
              + ("undefined (one of them is flat)" if report["inherited_correlation"] is None
               else f"{report['inherited_correlation']:.2f}") + ".",
              "", "| family | teacher | generated | human | copied teacher errors |", "|---|---:|---:|---:|---:|"]
    for family, acc in arms["teacher"]["by_family"].items():
        copied = report["copied_errors"].get(family)
        lines.append(f"| {family} | {acc:.0%} | {arms['generated']['by_family'][family]:.0%} | "
                     f"{arms['human']['by_family'][family]:.0%} | {'–' if copied is None else f'{copied:.0%}'} |")
    weak = report["teacher_weak_families"]
    lines += ["", "Families where the teacher is below 30 %: "
              + (", ".join(f"{f} (teacher {v['teacher']:.0%}, student {v['generated']:.0%})" for f, v in weak.items())
                 or "none") + ".", "", "## What was generated and what the filters removed", "",
              f"{report['outside_seed_families']:,} of {report['generated_instances']:,} generated instances fall "
              "outside the seed families.", "", "| family | generated | curated | random |", "|---|---:|---:|---:|"]
    for family, count in report["generated_families"].items():
        lines.append(f"| {family} | {count:,} | {arms['curated']['families'].get(family, 0):,} | "
                     f"{arms['random']['families'].get(family, 0):,} |")
    facts = report["generated_fact_accuracy"]
    lines += ["", "Generated answers to fact requests about a country of the world, verifier-checked: "
              + ", ".join(f"{f} {v['correct']:,} of {v['checked']:,}" for f, v in facts.items()) + ". Right ones in "
              "each training set: " + ", ".join(f"{a} {arms[a]['fact_answers_right']:,} of "
                                                  f"{arms[a]['fact_answers_checked']:,}" for a in STUDENTS) + "."]
    lines += ["", "| removed because | count |", "|---|---:|"]
    lines += [f"| {reason} | {count:,} |" for reason, count in report["filtered_by_reason"].items()]
    stages = ", ".join(f"{k} {v:,}" for k, v in report["curation"]["rejected_by_stage"].items())
    lines += ["", f"Curation removed: {stages}.", "",
              "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items())
              + f"; total {report['seconds'] / 60:.1f} min. Plot: selfinstruct.png.", ""]
    return "\n".join(lines)


def plot_selfinstruct(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    arm_bars(left, report["arms"], ARMS)
    left.legend(fontsize=7)
    left.set_title("base, teacher and students")
    teacher, student = report["arms"]["teacher"]["by_family"], report["arms"]["generated"]["by_family"]
    right.scatter([teacher[f] for f in teacher], [student[f] for f in teacher])
    for f in teacher:
        right.annotate(f, (teacher[f], student[f]), fontsize=6)
    right.plot([0, 1], [0, 1], linestyle=":", color="grey")
    right.set_xlabel("teacher accuracy per family")
    right.set_ylabel("generated-data student")
    r = report["inherited_correlation"]
    right.set_title("inherited mistakes" + ("" if r is None else f" (r = {r:.2f})"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_selfinstruct_report(out: Path, report: dict) -> None:
    write_experiment(out, "selfinstruct", report, render_selfinstruct(report), plot_selfinstruct)
