"""``tuneful demo --lima``: quality over quantity, measured in the sandbox.

LIMA (Zhou et al. 2023, "LIMA: Less Is More for Alignment") argues that a small curated set aligns
as well as a large noisy one. Here: a noisy pool of sandbox conversations (wrong answers, truncated
answers, near duplicates, one family over-represented; ``noisy.noisy_pool``) → three training sets

- ``curated``: ``tuneful curate`` down to the budget with its defaults (quality heuristics;
  best-member dedup, exact/near/semantic; correctness signals: agreement between replies to the same
  instruction and the base model's likelihood of each reply, IFD weighed in; quality-first selection
  with per-task quotas, the task being each record's ``meta.family``, as a mixture names its sources; replies
  the others outvote left out; a task short of distinct records repeats its records to its quota).
  The base model is the reference: it read the world's facts in pretraining
- ``curated_v1``: the pipeline as tuneful shipped it first (first-occurrence dedup, IFD as a hard
  filter at 1.0, k-center selection, no correctness signal): the comparison issue 19 asks for
- ``random``: the same number of records drawn at random from the pool
- ``all``: the whole pool

The curation never sees the verifiers or the noise labels (``tests/test_curate.py`` checks that the
curate package cannot import the sandbox); the labels only describe what each set holds.
each fine-tuned with the demo's SFT recipe for the *same number of optimizer steps* and evaluated
with the demo's evaluation (held-out phrasings, held-out families, stop rate). The table is
whatever the run measures.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..curate.config import CurateSettings
from ..curate.pipeline import Curator
from .demo import DemoSettings, experiment
from .noisy import NOISE_KINDS, noisy_pool
from .report import SUMMARY_KEYS, _pyplot, arm_bars, stderr_points, write_experiment
from .tasks import eval_instances


ARMS = ("curated", "curated_v1", "random", "all")


@dataclass
class LimaSettings:
    pool: int = 10_000  # noisy pool size
    budget: int = 1_000  # records in the curated and the random set
    steps: int = 600  # SFT optimizer steps, the same for every set
    eval_per_family: int = 64  # 1,216 held-out-phrasing prompts (19 families): a standard error of at most 1.5
    # points (20 until session 27: 380 prompts, up to 2.6 points, too coarse to tell a 5-point gain)


def composition(records: list[dict], overrepresented: str = "capital") -> dict[str, float]:
    """Share of each noise kind, and of the over-represented family, in a training set."""
    n = max(1, len(records))
    shares = {kind: sum(r["meta"]["noise"] == kind for r in records) / n for kind in NOISE_KINDS}
    shares[f"family_{overrepresented}"] = sum(r["meta"]["family"] == overrepresented for r in records) / n
    return shares


def families(records: list[dict]) -> dict[str, int]:
    """Records per task family in a training set."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["meta"]["family"]] = counts.get(r["meta"]["family"], 0) + 1
    return dict(sorted(counts.items()))


def curation_settings(arm: str, budget: int, base: Path, seed: int) -> Any:
    """``tuneful curate`` settings of a curated arm: today's defaults with the base model as the reference
    model, or the first version's pipeline."""

    if arm == "curated":
        return CurateSettings(budget=budget, reference_model=str(base), ifd_model=str(base), group_by="family",
                              seed=seed)
    if arm == "curated_v1":
        return CurateSettings(budget=budget, ifd_model=str(base), ifd_max=1.0, dedup_keep="first", agreement=False,
                              selection="k-center", seed=seed)
    raise ValueError(f"no curation settings for arm {arm!r}")


def curate_pool(pool_path: Path, settings: Any) -> tuple[list[int], dict]:
    """Pool positions the curation pipeline keeps, and its rejection counts per stage."""
    result = Curator(settings).run(str(pool_path))
    rejected = result.rejected_by_stage()
    if rejected.get("load"):  # kept indices are pool positions only if every record loaded
        raise RuntimeError(f"the sandbox pool {pool_path} did not load cleanly: {rejected}")
    return sorted(r.index for r in result.kept), rejected


def run_lima(demo: DemoSettings, lima: LimaSettings) -> dict:
    started = time.perf_counter()
    setup = experiment(demo)
    base, world, data, out = setup.base, setup.world, setup.data, demo.out
    pool = noisy_pool(world, lima.pool, demo.seed)
    pool_path = data / "pool.jsonl"
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in pool))

    curation, curated = {}, {}
    for arm in ("curated", "curated_v1"):
        t = time.perf_counter()
        kept, rejected_by_stage = curate_pool(pool_path, curation_settings(arm, lima.budget, base, demo.seed))
        curated[arm] = [pool[i] for i in kept]
        curation[arm] = {"rejected_by_stage": rejected_by_stage, "seconds": time.perf_counter() - t}
    arms = {**curated,
            "random": random.Random(demo.seed).sample(pool, min(lima.budget, len(pool))),
            "all": pool}

    sets = eval_instances(world, lima.eval_per_family, demo.seed)
    report: dict[str, Any] = {"arms": {}}
    for name, records in arms.items():
        train = data / f"{name}.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in records))
        result, summary = setup.train_and_evaluate(train, out / f"sft-{name}", lima.steps, sets)
        report["arms"][name] = {"records": len(records), "composition": composition(records),
                                "wrong_share": composition(records)["wrong"], "families": families(records),
                                "steps": result.steps,
                                "final_loss": result.final_loss, **summary,
                                "stderr_points": stderr_points(summary["heldout_phrasing_accuracy"],
                                                               len(sets["heldout_phrasing"]))}
    report["curation"] = curation
    report["stderr_points"] = {name: arm["stderr_points"] for name, arm in report["arms"].items()}
    report["settings"] = {**asdict(lima), "lr": demo.lr, "micro_batch_size": demo.micro_batch_size,
                          "replay_ratio": demo.replay_ratio,
                          "lora": demo.lora, "seed": demo.seed}
    report["seconds"] = time.perf_counter() - started
    write_lima_report(out, report)
    return report


def render_lima(report: dict) -> str:
    arms = report["arms"]
    s = report["settings"]
    lines = ["# LIMA in the sandbox: curated vs random vs all", "",
             f"A noisy pool of {s['pool']:,} sandbox conversations; curated and random sets of {s['budget']:,}; "
             f"each set fine-tuned for the same {s['steps']} optimizer steps (micro-batch {s['micro_batch_size']}, "
             f"lr {s['lr']}, pretraining replay ratio {s['replay_ratio']}), then evaluated on the same held-out "
             f"prompts ({s['eval_per_family']} per family, verifier-checked).", "",
             "| | " + " | ".join(ARMS) + " |", "|---|" + "---:|" * len(ARMS)]
    lines.append("| records | " + " | ".join(f"{arms[a]['records']:,}" for a in ARMS) + " |")
    for key, label in SUMMARY_KEYS:
        lines.append(f"| {label} | " + " | ".join(f"{arms[a][key]:.1%}" for a in ARMS) + " |")
    lines.append("| standard error, held-out phrasings (points) | "
                 + " | ".join(f"{arms[a]['stderr_points']:.1f}" for a in ARMS) + " |")
    lines += ["", "## What each set holds", "", "| share of the set | " + " | ".join(ARMS) + " |",
              "|---|" + "---:|" * len(ARMS)]
    for kind in arms["all"]["composition"]:
        lines.append(f"| {kind} | " + " | ".join(f"{arms[a]['composition'][kind]:.1%}" for a in ARMS) + " |")
    lines += ["", "## Records per task family", "", "| family | " + " | ".join(ARMS) + " |",
              "|---|" + "---:|" * len(ARMS)]
    for family in arms["all"]["families"]:
        lines.append(f"| {family} | " + " | ".join(f"{arms[a]['families'].get(family, 0):,}" for a in ARMS) + " |")
    lines.append("")
    for arm, run in report["curation"].items():
        stages = ", ".join(f"{k} {v:,}" for k, v in run["rejected_by_stage"].items())
        lines.append(f"Curation for `{arm}` removed: {stages} ({run['seconds']:.0f} s).  ")
    lines += ["", "## Accuracy by task family", "", "| family | " + " | ".join(ARMS) + " |",
              "|---|" + "---:|" * len(ARMS)]
    for family in arms["all"]["by_family"]:
        lines.append(f"| {family} | " + " | ".join(f"{arms[a]['by_family'][family]:.0%}" for a in ARMS) + " |")
    lines += ["", f"Total {report['seconds'] / 60:.1f} min. Plot: lima.png.", ""]
    return "\n".join(lines)


def plot_lima(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    arm_bars(ax, report["arms"], ARMS, lambda arm: f"{arm} ({report['arms'][arm]['records']:,})")
    ax.set_title(f"Same {report['settings']['steps']} SFT steps: curated vs random vs all")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_lima_report(out: Path, report: dict) -> None:
    write_experiment(out, "lima", report, render_lima(report), plot_lima)
