"""The demo's report: a Markdown page a person can read, and its plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from .agent import MAX_ROUNDS
from .tasks import FAMILIES, HELDOUT_FAMILIES


SUMMARY_KEYS = (("heldout_phrasing_accuracy", "held-out phrasings"), ("heldout_family_accuracy", "held-out families"),
                ("stop_rate", "answers that end their turn"))


def stderr_points(accuracy: float, n: int) -> float:
    """The standard error of a mean of ``n`` right/wrong answers, in percentage points: ``100 √(p(1-p)/n)``."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arm_bars(ax: Any, arms: dict[str, dict], names: Sequence[str],
             label: Callable[[str], str] = lambda name: name) -> None:
    """Grouped bars on ``ax``: every summary metric (``SUMMARY_KEYS``) of every arm named, in order."""
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(SUMMARY_KEYS))]
        ax.bar(xs, [arms[name][key] for key, _ in SUMMARY_KEYS], width=width, label=label(name))
    ax.set_xticks(range(len(SUMMARY_KEYS)), [text for _, text in SUMMARY_KEYS], fontsize=8)
    ax.set_ylim(0, 1)


def write_experiment(out: Path, name: str, report: dict, markdown: str, plot: Callable[[dict, Path], None]) -> None:
    """An experiment's three outputs: ``OUT/NAME.json`` (the report), ``NAME.md`` and the plot ``NAME.png``."""
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(markdown)
    plot(report, out / f"{name}.png")


def plot_families(report: dict, path: Path) -> None:
    plt = _pyplot()
    names = [f.name for f in FAMILIES]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [report["base"]["by_family"][n] for n in names], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [report["tuned"]["by_family"][n] for n in names], width=0.4, label="tuned")
    ax.set_xticks(list(xs), [n + (" *" if n in HELDOUT_FAMILIES else "") for n in names], rotation=60, ha="right",
                  fontsize=8)
    ax.set_ylabel("accuracy (verifier)")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by task family (* = family held out of training)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [label for _, label in SUMMARY_KEYS]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [report["base"][k] for k, _ in SUMMARY_KEYS], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [report["tuned"][k] for k, _ in SUMMARY_KEYS], width=0.4, label="tuned")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Base vs instruction-tuned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines()) or "> (empty)"


def render_markdown(report: dict, answers: dict[str, list[dict]]) -> str:
    base, tuned = report["base"], report["tuned"]
    lines = ["# tuneful demo: base model vs instruction-tuned", "",
             f"Run time {report['seconds']:.0f} s. SFT: {report['sft']['kind']} fine-tuning, "
             f"{report['sft']['train_conversations']} conversations, {report['sft']['steps']} steps, final loss "
             f"{report['sft']['final_loss']:.3f}.", "",
             "| metric | base | tuned |", "|---|---:|---:|"]
    for key, label in SUMMARY_KEYS:
        lines.append(f"| {label} | {base[key]:.1%} | {tuned[key]:.1%} |")
    lines += ["", "![summary](summary.png)", "", "## By task family", "",
              "| family | held out | base | tuned |", "|---|---|---:|---:|"]
    for f in FAMILIES:
        held = "family" if f.name in HELDOUT_FAMILIES else "phrasings"
        lines.append(f"| {f.name} | {held} | {base['by_family'][f.name]:.0%} | {tuned['by_family'][f.name]:.0%} |")
    seed = report["seed_example"]
    lines += ["", "![by family](accuracy_by_family.png)", "", "## The seed's example", "",
              f"Prompt: **{seed['prompt']}**", "", "Base model, given the plain text (it continues it):", "",
              _quote(seed["base_continuation"]), "", "Base model, given the chat template:", "",
              _quote(seed["base_with_template"]), "", "Instruction-tuned model:", "", _quote(seed["tuned"]), "",
              "## Sample answers (held-out phrasings)", "", "| prompt | base | tuned | tuned correct |",
              "|---|---|---|---|"]
    tuned_rows = [r for r in answers["tuned"] if r["set"] == "heldout_phrasing"]
    base_rows = [r for r in answers["base"] if r["set"] == "heldout_phrasing"]
    seen = set()
    for b, t in zip(base_rows, tuned_rows):
        if t["family"] in seen:
            continue
        seen.add(t["family"])
        cell = lambda s: s.replace("|", "/").replace("\n", " ⏎ ")[:80]  # noqa: E731
        lines.append(f"| {cell(t['prompt'])} | {cell(b['answer'])} | {cell(t['answer'])} | {'yes' if t['correct'] else 'no'} |")
    if "tools" in report:
        lines += tools_section(report["tools"])
    if "dpo" in report:
        lines += dpo_section(report)
    if "after_sft" in report:
        lines += after_sft_section(report["after_sft"])
    lines += ["", "Every answer is in `answers.jsonl`; the SFT loss curve is `sft_loss.png`."]
    return "\n".join(lines) + "\n"


def tools_section(tools: dict) -> list[str]:
    by = tools["by_family"]
    recovery = (f" In {tools['missed_a_lookup']} tasks a lookup of the tuned model found no country (a misspelt "
                f"name); {tools['recovered']} of them were still answered right." if "missed_a_lookup" in tools else "")
    lines = ["", "## The sandbox agent: tools", "",
             f"SFT also saw {tools['traces']} tool-use traces (call `lookup_country` → its result → the answer; for "
             "population sums two lookups, then `add`) about the training countries of a second world the base model "
             "never read about"
             + (" (and training-only countries of a third draw; chosen by the piece their name opens with, sampled "
                "with temperature, so rare openings are copied in training too)" if tools.get("coverage") else "")
             + ("; the first lookup says what it looks up (\"Looking up the capital of X.\")" if tools.get("announce") else "")
             + (f"; in {tools['recovering']:.0%} of them the first lookup is misspelt, the tool answers with an error "
                "and the closest name, and the agent looks that up (the mistaken turn has weight 0: context, not "
                "trained)" if tools.get("recovering") else "")
             + f". Evaluated: {tools['tasks']} questions in held-out phrasings about its "
             f"{len(tools['heldout_countries'])} held-out countries, the agent loop run by the demo (model → parse → "
             f"run the tool → model, at most {MAX_ROUNDS} rounds). Valid calls (parsed, an offered tool, its arguments "
             f"and types): {tools['valid_call_rate']:.1%} of the tuned model's {tools['calls']['tuned_with_tools']}."
             + recovery, "",
             "| family | tuned, with tools | tuned, without tools | base, with tools |", "|---|---:|---:|---:|"]
    for family in by["tuned_with_tools"]:
        lines.append(f"| {family} | {by['tuned_with_tools'][family]:.0%} | {by['tuned_without_tools'][family]:.0%} "
                     f"| {by['base_with_tools'][family]:.0%} |")
    lines.append(f"| **all** | **{tools['tuned_with_tools']:.1%}** | {tools['tuned_without_tools']:.1%} | "
                 f"{tools['base_with_tools']:.1%} |")
    lines += ["", "Every transcript is in `agent_transcripts.jsonl`."]
    rl = tools.get("after_rl")
    if rl:
        lines += ["", "### After agentic GRPO (`--rl`)", "",
                  "GRPO over agent episodes from the SFT model: training phrasings about training countries, every "
                  f"call run by the sandbox's tools, reward 1 when the final answer holds the answer word "
                  f"({rl['turns_per_episode']:.2f} policy turns per episode). The same held-out tasks:", "",
                  "| family | SFT, with tools | + agentic GRPO |", "|---|---:|---:|"]
        for family in by["tuned_with_tools"]:
            lines.append(f"| {family} | {by['tuned_with_tools'][family]:.0%} | {rl['by_family'][family]:.0%} |")
        lines += [f"| **all** | {tools['tuned_with_tools']:.1%} | **{rl['tuned_with_tools']:.1%}** |",
                  f"| valid calls | {tools['valid_call_rate']:.1%} | {rl['valid_call_rate']:.1%} |",
                  f"| recovered after a missed lookup | {tools.get('recovered', 0)} of {tools.get('missed_a_lookup', 0)} "
                  f"| {rl['recovered']} of {rl['missed_a_lookup']} |"]
    return lines


def dpo_section(report: dict) -> list[str]:
    dpo, tuned, after = report["dpo"], report["tuned"], report["tuned+dpo"]
    pref = dpo["preference"]
    held = dpo["eval"] or {}
    lines = ["", "## DPO after SFT", "",
             f"DPO (sigmoid, β = {dpo['beta']}, lr {dpo['lr']}, reference log-probs {dpo['reference']}) on "
             f"{dpo['pairs']} preference pairs in training phrasings: chosen = the correct, concise answer; rejected "
             f"= a wrong answer (half) or the correct answer wrapped in filler (half). {dpo['steps']} steps, final "
             f"loss {dpo['final_loss']:.3f}; on its held-out pairs reward accuracy "
             f"{held.get('eval_accuracy', float('nan')):.1%}.", "",
             f"Measured on the {dpo['heldout_pairs']} pairs built from the held-out-phrasing prompts (never trained "
             "on) and by generating answers to them:", "",
             "| metric | tuned (SFT) | tuned + DPO |", "|---|---:|---:|",
             f"| prefers the correct answer over a wrong one (mean log-prob per token) | {pref['tuned']['prefers_chosen_over_wrong']:.1%} "
             f"| {pref['tuned+dpo']['prefers_chosen_over_wrong']:.1%} |",
             f"| prefers the concise answer over a rambling one (mean log-prob per token) | "
             f"{pref['tuned']['prefers_chosen_over_rambling']:.1%} | {pref['tuned+dpo']['prefers_chosen_over_rambling']:.1%} |"]
    for key, label in SUMMARY_KEYS:
        lines.append(f"| {label} (generated) | {tuned[key]:.1%} | {after[key]:.1%} |")
    return lines


AFTER_SFT_ARMS = (("sft", "SFT"), ("dpo", "+ offline DPO"), ("grpo", "+ GRPO (verifier)"),
                  ("online_dpo", "+ online DPO (verifier-ranked)"), ("grpo_rm", "+ GRPO (reward model)"))


def after_sft_section(after: dict) -> list[str]:
    online = after["settings"]
    arms = [(key, label) for key, label in AFTER_SFT_ARMS if key in after]
    lines = ["", "## After SFT: offline DPO, GRPO, online DPO, a reward model", "",
             f"From the SFT model, each online method ran {online['steps']} steps on prompts of training phrasings "
             f"of training families ({online['prompts_per_step']} prompts per step; GRPO {online['group_size']} "
             f"completions per prompt, lr {online['grpo_lr']}; online DPO best-vs-worst of {online['online_dpo_group']}, "
             f"lr {online['online_dpo_lr']}). The reward model, trained on the DPO pairs, prefers the right reply on "
             f"{after['rm_heldout_pair_accuracy']:.1%} of the held-out-phrasing pairs.", "",
             "| metric | " + " | ".join(label for _, label in arms) + " |", "|---|" + "---:|" * len(arms)]
    for key, label in SUMMARY_KEYS:
        lines.append(f"| {label} | " + " | ".join(f"{after[arm][key]:.1%}" for arm, _ in arms) + " |")
    shares = {k: v for k, v in after.get("signal_share", {}).items() if v is not None}
    if shares:
        lines += ["", "Groups with signal (rewards not all equal; a group whose completions all scored the same has "
                      "zero advantage and teaches nothing), mean over steps: "
                  + ", ".join(f"{name} {share:.0%}" for name, share in shares.items()) + "."]
    swapped = {k: v for k, v in after.get("swapped_share", {}).items() if v is not None}
    if online.get("dynamic_sampling") and swapped:
        lines += ["", "Dynamic sampling (prompts drawn by their family's recent signal rate) swapped, of the prompts "
                      "the plan drew, mean over steps: "
                  + ", ".join(f"{name} {share:.0%}" for name, share in swapped.items()) + "."]
    return lines
