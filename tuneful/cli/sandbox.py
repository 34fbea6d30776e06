"""``tuneful demo`` and ``tuneful sandbox build-base``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

sandbox_app = typer.Typer(help="The offline sandbox: a tiny world, its base model, and tasks.", no_args_is_help=True)


@sandbox_app.command("build-base")
def build_base_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the rebuilt base model."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Pretraining steps (default: the recorded recipe's)."),
) -> None:
    """Rebuild the sandbox base model from scratch (world → corpus → tokenizer → pretraining)."""
    from ..sandbox.base import BaseRecipe, build_base

    recipe = BaseRecipe() if steps is None else BaseRecipe(steps=steps)
    record = build_base(out, recipe)
    typer.echo(json.dumps({k: v for k, v in record.items() if k != "losses_every_50"}))


@sandbox_app.command("sft-recipe")
def sft_recipe_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the data (OUT/data) and the recipe (OUT/sft.yaml)."),
    quick: bool = typer.Option(False, "--quick", help="The demo's --quick data and epochs (a ~1 min CPU run)."),
    lora: bool = typer.Option(False, "--lora", help="LoRA instead of full fine-tuning."),
) -> None:
    """Write the demo's SFT data and recipe, to run the demo's SFT on its own: tuneful sft OUT/sft.yaml."""
    from ..sandbox.agent import DEMO_TRACES
    from ..sandbox.demo import DemoSettings, quick_sizes, write_sft_recipe

    settings = DemoSettings(out=out, lora=lora, agent_traces=DEMO_TRACES)
    if quick:
        quick_sizes(settings, agent=True)
    path = write_sft_recipe(settings)
    typer.echo(f"wrote {path}; run it with: tuneful sft {path}")


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for report.md, plots and report.json."),
    lora: bool = typer.Option(False, "--lora", help="LoRA instead of full fine-tuning."),
    quick: bool = typer.Option(False, "--quick", help="Smaller SFT and eval sets (a smoke run, ~1 min)."),
    dpo: bool = typer.Option(True, "--dpo/--no-dpo", help="DPO after SFT on the sandbox preference pairs."),
    base_dir: Optional[Path] = typer.Option(None, "--base", help="Base model folder (default: the shipped one)."),
    lima: bool = typer.Option(False, "--lima", help="Instead: the LIMA experiment — a noisy 10k pool, curated 1k "
                              "vs random 1k vs all 10k, same SFT steps, same eval (OUT/lima.md, ~6 min)."),
    flan: bool = typer.Option(False, "--flan", help="Instead: the FLAN experiment — the same SFT examples and "
                              "steps over 4, 8, 12 and all 17 single-turn training families, plus all families with "
                              "half the prompts few-shot; held-out families and phrasings, 2 seeds "
                              "(OUT/flan.md, ~7.5 min)."),
    self_instruct: bool = typer.Option(False, "--self-instruct", help="Instead: the Self-Instruct experiment — 175 "
                                       "seed tasks, a teacher trained in the run, tuneful generate (5,000 tasks), "
                                       "tuneful curate, and students on generated / human / curated 1k / random 1k "
                                       "data, same SFT steps (OUT/selfinstruct.md, ~30 min)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the training data, its order, the eval prompts and the "
                             "pool; run two to see how much a result moves from seed to seed."),
    rl: bool = typer.Option(False, "--rl", help="After SFT also GRPO (verifier reward), online DPO, a reward model "
                            "and GRPO on it, each evaluated like SFT (report.json after_sft; ~30 min)."),
    agent: bool = typer.Option(True, "--agent/--no-agent", help="Tool use: SFT also on 1,250 agent traces (call, "
                               "result, answer) about a second world the base model never read, then the agent loop "
                               "on held-out countries and phrasings, with and without tools (report.json tools; "
                               "~5 min; not part of --lima or --flan)."),
) -> None:
    """Instruction-tune the sandbox base model and compare base vs tuned on held-out prompts."""
    from rich.console import Console
    from rich.table import Table

    from ..sandbox.agent import DEMO_TRACES
    from ..sandbox.demo import DemoSettings, quick_sizes, run_demo

    agent = agent and not (lima or flan or self_instruct)  # the experiments compare SFT sets; no tool use
    settings = DemoSettings(out=out, base_dir=base_dir, lora=lora, dpo=dpo, seed=seed, rl=rl,
                            agent_traces=DEMO_TRACES if agent else 0)
    if quick:
        quick_sizes(settings, agent)
    if lima:
        _lima(settings, quick)
        return
    if flan:
        _flan(settings, quick)
        return
    if self_instruct:
        _self_instruct(settings, quick)
        return
    report = run_demo(settings)
    table = Table(title=f"tuneful demo — {report['seconds']:.0f} s — report: {out / 'report.md'}")
    table.add_column("metric")
    table.add_column("base", justify="right")
    names = [n for n in ("base", "tuned", "tuned+dpo") if n in report]
    for name in names[1:]:
        table.add_column(name, justify="right")
    for key in ("heldout_phrasing_accuracy", "heldout_family_accuracy", "stop_rate"):
        table.add_row(key, *(f"{report[n][key]:.1%}" for n in names))
    Console().print(table)
    tools = report.get("tools")
    if tools:
        typer.echo(f"agent on held-out countries (held-out phrasings): tuned with tools {tools['tuned_with_tools']:.1%}, "
                   f"without tools {tools['tuned_without_tools']:.1%}, base with tools "
                   f"{tools['base_with_tools']:.1%}; valid calls {tools['valid_call_rate']:.1%}")
    if "after_sft" in report:
        _after_sft_table(report["after_sft"])
    seed = report["seed_example"]
    typer.echo(f"\n{seed['prompt']}\n-- base continues:\n{seed['base_continuation']}\n-- tuned:\n{seed['tuned']}")


def _after_sft_table(after: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    arms = [a for a in ("sft", "dpo", "grpo", "online_dpo", "grpo_rm") if a in after]
    table = Table(title=f"after SFT (reward model: {after['rm_heldout_pair_accuracy']:.1%} on held-out pairs)")
    table.add_column("metric")
    for arm in arms:
        table.add_column(arm, justify="right")
    for key in ("heldout_phrasing_accuracy", "heldout_family_accuracy", "stop_rate"):
        table.add_row(key, *(f"{after[a][key]:.1%}" for a in arms))
    Console().print(table)


def _flan(settings, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..sandbox.flan import METRICS, FlanSettings, run_flan

    flan = FlanSettings(family_counts=(2, 4), examples=32, steps=3) if quick else FlanSettings()
    report = run_flan(settings, flan)
    table = Table(title=f"FLAN in the sandbox — {flan.examples:,} examples, {flan.steps} steps per arm, "
                        f"{flan.seeds} seeds — {report['seconds']:.0f} s — report: {settings.out / 'flan.md'}")
    table.add_column("arm")
    for key in METRICS:
        table.add_column(key.removesuffix("_accuracy").replace("_", " "), justify="right")
    for name, m in report["means"].items():
        table.add_row(name, *("–" if m[k] is None else f"{m[k]:.1%}" for k in METRICS))
    Console().print(table)
    typer.echo(json.dumps({"flan": str(settings.out / "flan.json"), "arms": {
        name: {k: m[k] for k in ("families", "heldout_family_accuracy", "heldout_phrasing_accuracy")}
        for name, m in report["means"].items()}}))


def _lima(settings, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..sandbox.lima import ARMS, LimaSettings, run_lima
    from ..sandbox.report import SUMMARY_KEYS

    lima = LimaSettings(pool=600, budget=100, steps=30, eval_per_family=4) if quick else LimaSettings()
    report = run_lima(settings, lima)
    table = Table(title=f"LIMA in the sandbox — same {lima.steps} steps — {report['seconds']:.0f} s — "
                        f"report: {settings.out / 'lima.md'}")
    table.add_column("metric")
    for arm in ARMS:
        table.add_column(f"{arm} ({report['arms'][arm]['records']:,})", justify="right")
    for key, label in SUMMARY_KEYS:
        table.add_row(label, *(f"{report['arms'][a][key]:.1%}" for a in ARMS))
    Console().print(table)
    typer.echo(json.dumps({arm: {key: report["arms"][arm][key] for key, _ in SUMMARY_KEYS} for arm in ARMS}))


def _self_instruct(settings, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..sandbox.report import SUMMARY_KEYS
    from ..sandbox.selfinstruct import ARMS, SelfInstructSettings, run_selfinstruct

    experiment = SelfInstructSettings(seeds=24, seed_families=6, teacher_per_family=20, teacher_list_prompts=60,
                                      teacher_classification_prompts=30, teacher_instance_prompts=60,
                                      teacher_steps=20, tasks=40, requests_per_round=16, budget=20, steps=10,
                                      eval_per_family=3) if quick else SelfInstructSettings()
    report = run_selfinstruct(settings, experiment)
    table = Table(title=f"Self-Instruct in the sandbox — {report['generated_kept']:,} generated tasks, same "
                        f"{experiment.steps} steps per student — {report['seconds']:.0f} s — "
                        f"report: {settings.out / 'selfinstruct.md'}")
    table.add_column("metric")
    for arm in ARMS:
        table.add_column(arm, justify="right")
    for key, label in SUMMARY_KEYS:
        table.add_row(label, *(f"{report['arms'][a][key]:.1%}" for a in ARMS))
    Console().print(table)
    typer.echo(json.dumps({"selfinstruct": str(settings.out / "selfinstruct.json"),
                           "inherited_correlation": report["inherited_correlation"],
                           "arms": {arm: {key: report["arms"][arm][key] for key, _ in SUMMARY_KEYS} for arm in ARMS}}))
