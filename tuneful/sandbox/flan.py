"""``tuneful demo --flan``: does task diversity help on unseen tasks? FLAN's finding, measured in the sandbox.

FLAN (Wei et al. 2021; Chung et al. 2022, "Scaling Instruction-Finetuned Language Models") found that
instruction tuning on *more tasks* improves held-out tasks. Here: the same number of SFT examples and
the same optimizer steps, spread over 4, 8, 12 or all 17 single-turn training families (a seeded,
nested draw: the 4 are among the 8, ...), plus one arm with all families (``17 families + few-shot``)
where half of the prompts are few-shot (two exemplars of the same family inline, as FLAN's few-shot
templates do). Every arm's data is written by the mixture code of ``tuneful data mix`` (one labelled
source, a template per record, examples-proportional over its families) and evaluated on the same
prompts:

- ``heldout_family_accuracy``: the three held-out families no arm trains on (``tasks.HELDOUT_FAMILIES``)
- ``heldout_phrasing_accuracy``: held-out phrasings of the families the arm trained on
- ``unseen_family_accuracy``: the training-bank families the arm left out (none for the full arm)

The two multi-turn follow-up families are left out of every arm: a few-shot template inlines
single-turn exemplars, and every arm should draw from the same bank. Two seeds (``seed``, ``seed + 1``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.loader import write_jsonl
from ..data.mix_recipe import recipe_from_dict
from ..data.mixture import mix
from .demo import DemoSettings, experiment
from .report import _pyplot
from .tasks import HELDOUT_FAMILIES, SINGLE_TURN_TRAINING_FAMILIES, eval_instances, sft_instances


SINGLE_TURN_FAMILIES = tuple(f.name for f in SINGLE_TURN_TRAINING_FAMILIES)


@dataclass
class FlanSettings:
    family_counts: tuple[int, ...] = (4, 8, 12, len(SINGLE_TURN_FAMILIES))  # families per arm
    examples: int = 2_400  # SFT conversations per arm, the same for every arm
    steps: int = 300  # SFT optimizer steps, the same for every arm
    seeds: int = 2  # seeds seed, seed + 1, ...
    few_shot_share: float = 0.5  # share of few-shot prompts in the few-shot arm
    shots: int = 2


def family_order(seed: int) -> list[str]:
    """The seeded order in which arms take families: an arm with k families trains the first k."""
    order = list(SINGLE_TURN_FAMILIES)
    random.Random(seed + 101).shuffle(order)
    return order


def write_pool(path: Path, world: list, per_family: int, seed: int) -> Path:
    """Labelled records (family, prompt, answer) of every single-turn training family: the arms' source."""
    rows = [{"family": i.family, "prompt": i.messages[-1]["content"], "answer": i.answer}
            for i in sft_instances(world, per_family, seed) if i.family in SINGLE_TURN_FAMILIES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arm_recipe(pool: Path, families: list[str], flan: FlanSettings, seed: int, few_shot: bool) -> Any:
    """The mixture recipe of one arm: its families' records from the pool, ``examples`` of them, zero-shot
    (the record's prompt as the user turn) or zero- and few-shot mixed."""

    arm_pool = pool.with_name(f"{pool.stem}-{len(families)}.jsonl")
    keep = set(families)
    arm_pool.write_text("".join(line + "\n" for line in pool.read_text().splitlines()
                                if json.loads(line)["family"] in keep))
    types = {"zero_shot": 1 - flan.few_shot_share, "few_shot": flan.few_shot_share} if few_shot else {"zero_shot": 1}
    return recipe_from_dict({
        "seed": seed, "template_types": types, "shots": flan.shots,
        "sources": [{"path": str(arm_pool), "name": f"{len(families)} families", "count": flan.examples,
                     "task_field": "family", "templates": [{"input": "{prompt}", "target": "{answer}"}]}]})


def arm_accuracy(by_family: dict[str, float], families: list[str]) -> float | None:
    return sum(by_family[f] for f in families) / len(families) if families else None


def run_flan(demo: DemoSettings, flan: FlanSettings) -> dict:
    started = time.perf_counter()
    setup = experiment(demo)
    world, data, out = setup.world, setup.data, demo.out
    arms: list[dict] = []
    for seed in range(demo.seed, demo.seed + flan.seeds):
        per_family = -(-flan.examples // min(flan.family_counts))  # the smallest arm never repeats a record
        pool = write_pool(data / f"pool-seed{seed}.jsonl", world, per_family, seed)
        order = family_order(seed)
        sets = eval_instances(world, demo.eval_per_family, seed)
        plan = [(k, False) for k in flan.family_counts] + [(max(flan.family_counts), True)]
        for k, few_shot in plan:
            families = order[:k]
            name = f"{k} families + few-shot" if few_shot else f"{k} families"
            mixed = mix(arm_recipe(pool, families, flan, seed, few_shot))
            train = data / f"seed{seed}-{k}{'-fewshot' if few_shot else ''}.jsonl"  # its SFT run: sft-<stem>
            write_jsonl(mixed.items, train)
            result, summary = setup.train_and_evaluate(train, out / f"sft-{train.stem}", flan.steps, sets)
            by_family = summary["by_family"]
            arms.append({"arm": name, "families": k, "few_shot": few_shot, "seed": seed,
                         "family_names": families, "by_template_type": mixed.report["by_template_type"],
                         "records": mixed.report["written"],
                         "heldout_family_accuracy": summary["heldout_family_accuracy"],
                         "heldout_phrasing_accuracy": arm_accuracy(by_family, families),
                         "unseen_family_accuracy": arm_accuracy(
                             by_family, [f for f in SINGLE_TURN_FAMILIES if f not in families]),
                         "stop_rate": summary["stop_rate"], "by_family": by_family,
                         "steps": result.steps, "final_loss": result.final_loss})
    report = {"arms": arms, "means": means(arms),
              "settings": {**asdict(flan), "lr": demo.lr, "micro_batch_size": demo.micro_batch_size,
                           "replay_ratio": demo.replay_ratio, "eval_per_family": demo.eval_per_family,
                           "lora": demo.lora, "seed": demo.seed, "heldout_families": list(HELDOUT_FAMILIES)},
              "seconds": time.perf_counter() - started}
    write_flan_report(out, report)
    return report


METRICS = ("heldout_family_accuracy", "heldout_phrasing_accuracy", "unseen_family_accuracy", "stop_rate")


def means(arms: list[dict]) -> dict[str, dict[str, float | None]]:
    """Each arm's metrics averaged over seeds."""
    out: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(a["arm"] for a in arms):
        runs = [a for a in arms if a["arm"] == name]
        out[name] = {"families": runs[0]["families"], "seeds": len(runs)}
        for key in METRICS:
            values = [a[key] for a in runs if a[key] is not None]
            out[name][key] = sum(values) / len(values) if values else None
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def render_flan(report: dict) -> str:
    s = report["settings"]
    seeds = sorted({a["seed"] for a in report["arms"]})
    lines = ["# FLAN in the sandbox: more tasks, same number of examples", "",
             f"{s['examples']:,} SFT conversations and {s['steps']} optimizer steps per arm (micro-batch "
             f"{s['micro_batch_size']}, lr {s['lr']}, pretraining replay ratio {s['replay_ratio']}), spread evenly "
             f"over k single-turn training families; the `+ few-shot` arm writes {s['few_shot_share']:.0%} of its "
             f"prompts few-shot ({s['shots']} exemplars of the same family). Evaluated on {s['eval_per_family']} "
             f"prompts per family; held-out families: {', '.join(s['heldout_families'])}. Seeds {seeds}.", "",
             "| arm | held-out families | held-out phrasings (trained families) | families left out | stop rate |",
             "|---|---:|---:|---:|---:|"]
    for name, m in report["means"].items():
        lines.append(f"| {name} | {_pct(m['heldout_family_accuracy'])} | {_pct(m['heldout_phrasing_accuracy'])} | "
                     f"{_pct(m['unseen_family_accuracy'])} | {_pct(m['stop_rate'])} |")
    lines += ["", "## Per seed", "", "| arm | seed | held-out families | held-out phrasings | families left out | "
              "final loss | families |", "|---|---:|---:|---:|---:|---:|---|"]
    for a in report["arms"]:
        lines.append(f"| {a['arm']} | {a['seed']} | {_pct(a['heldout_family_accuracy'])} | "
                     f"{_pct(a['heldout_phrasing_accuracy'])} | {_pct(a['unseen_family_accuracy'])} | "
                     f"{a['final_loss']:.3f} | {', '.join(a['family_names'])} |")
    heldout = report["settings"]["heldout_families"]
    lines += ["", "## Held-out families, per arm (mean over seeds)", "", "| arm | " + " | ".join(heldout) + " |",
              "|---|" + "---:|" * len(heldout)]
    for name in report["means"]:
        runs = [a for a in report["arms"] if a["arm"] == name]
        lines.append(f"| {name} | " + " | ".join(
            f"{sum(r['by_family'][f] for r in runs) / len(runs):.0%}" for f in heldout) + " |")
    lines += ["", f"Total {report['seconds'] / 60:.1f} min. Plot: flan.png.", ""]
    return "\n".join(lines)


def plot_flan(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    plain = [a for a in report["arms"] if not a["few_shot"]]
    for key, label, colour in (("heldout_family_accuracy", "held-out families", "tab:blue"),
                               ("heldout_phrasing_accuracy", "held-out phrasings (trained families)", "tab:orange")):
        ax.scatter([a["families"] for a in plain], [a[key] for a in plain], color=colour, alpha=0.4, s=18)
        ks = sorted({a["families"] for a in plain})
        mean = [sum(a[key] for a in plain if a["families"] == k) / sum(a["families"] == k for a in plain) for k in ks]
        ax.plot(ks, mean, marker="o", color=colour, label=label)
        for name, few in report["means"].items():
            if name.endswith("few-shot"):
                ax.scatter([few["families"] + 0.4], [few[key]], marker="*", s=120, color=colour,
                           label=f"{label}, half few-shot")
    ax.set_xlabel("training families (same number of examples)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Task diversity vs generalisation (FLAN's question)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_flan_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "flan.json").write_text(json.dumps(report, indent=2))
    (out / "flan.md").write_text(render_flan(report))
    plot_flan(report, out / "flan.png")
