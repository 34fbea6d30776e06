"""The evaluation report: report.json, answers.jsonl, report.md (a table per metric, a column per model), PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .prompts import EvalPrompt


def metric_rows(report: dict) -> dict[str, list[tuple[str, str, bool]]]:
    """Sections of (label, dotted key, is_a_rate) present in at least one model's results."""
    sections = {
        "Ending the turn": [("stop rate", "stop_rate", True)],
        "Instruction following (IFEval checks)": [
            ("prompt-level strict", "ifeval.prompt_strict", True), ("prompt-level loose", "ifeval.prompt_loose", True),
            ("instruction-level strict", "ifeval.instruction_strict", True),
            ("instruction-level loose", "ifeval.instruction_loose", True)],
        "Sandbox tasks (verifier)": [("accuracy", "sandbox.accuracy", True)],
        "Tool use": [("call accuracy (name and arguments)", "tools.call_accuracy", True),
                     ("no-call accuracy (no tool needed)", "tools.no_call_accuracy", True),
                     ("calls that do not parse", "tools.parse_failure_rate", True)],
        "Episodes with tools (calls run until the answer)": [
            ("task success (the answer holds the expected word)", "episodes.task_success", True),
            ("valid calls (parsed, tool answered without error)", "episodes.valid_call_rate", True),
            ("calls per task", "episodes.calls_per_task", False), ("model turns per task", "episodes.turns_per_task", False),
            ("answered within the turn cap", "episodes.answered", True),
            ("solved after a failed call", "episodes.recovered_after_a_failed_call", True)],
        "Held-out loss on reference replies": [("loss (nats/token)", "heldout_loss.loss", False),
                                               ("perplexity", "heldout_loss.perplexity", False)],
        "Judge": [("win rate vs the first model", "judge_win_rate", True)],
    }
    models = report["models"].values()
    return {title: [r for r in rows if any(get_metric(m, r[1]) is not None for m in models)]
            for title, rows in sections.items() if any(get_metric(m, r[1]) is not None for r in rows for m in models)}


def get_metric(metrics: dict, dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def format_cell(value: Any, rate: bool) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}" if rate else f"{value:.3f}"


def render_markdown(report: dict, prompts: list[EvalPrompt], answers: dict[str, list[dict]]) -> str:
    names = list(report["models"])
    lines = [f"# tuneful eval — {report['prompts']['count']} prompts from `{report['prompts']['source']}`", ""]
    lines += ["| model | template | seconds | notes |", "|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['template']} | {m['seconds']:.1f} | {'; '.join(m['notes']) or ''} |")
    for title, rows in metric_rows(report).items():
        lines += ["", f"## {title}", "", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for label, key, rate in rows:
            lines.append(f"| {label} | " + " | ".join(format_cell(get_metric(report["models"][n], key), rate) for n in names) + " |")
    families = sorted({f for m in report["models"].values() for f in (get_metric(m, "sandbox.by_family") or {})})
    if families:
        lines += ["", "### Sandbox accuracy by family", "", "| family | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for f in families:
            lines.append(f"| {f} | " + " | ".join(format_cell(get_metric(report["models"][n], f"sandbox.by_family.{f}"), True)
                                                  for n in names) + " |")
    if "error" in report.get("judge", {}):
        lines += ["", f"The judge failed: {report['judge']['error']}"]
    elif "judge" in report:
        judge = report["judge"]
        lines += ["", f"Judge `{judge['judge_model']}`, each pair judged in both orders (a split verdict is a tie); "
                      f"baseline **{judge['baseline']}**.", "", "| model | wins | ties | losses | win rate | "
                      "order consistency |", "|---|---|---|---|---|---|"]
        for name, r in judge["pairs"].items():
            lines.append(f"| {name} | {r['wins']} | {r['ties']} | {r['losses']} | {r['win_rate']:.1%} | "
                         f"{r['order_consistency']:.1%} |")
    lines += _ablation_lines(report)
    lines += ["", "## Answers to the first prompts", ""]
    for k, p in enumerate(prompts[:3]):
        lines += [f"**{p.id}** — {p.messages[-1]['content']}", ""]
        for name in names:
            lines.append(f"- *{name}*: {answers[name][k]['answer'][:300]!r}")
        lines.append("")
    lines += ["Plots: `summary.png`" + (", `heldout_loss.png`" if any(
        "heldout_loss" in m for m in report["models"].values()) else "") + ". Every answer: `answers.jsonl`."]
    return "\n".join(lines) + "\n"


def _ablation_lines(report: dict) -> list[str]:
    """Each model with its own template beside the same model with the ablation template."""
    models = report["models"]
    pairs = [(name, f"{name} [template {report['settings']['ablate_template']}]") for name in models
             if report["settings"].get("ablate_template")
             and f"{name} [template {report['settings']['ablate_template']}]" in models]
    if not pairs:
        return []
    rows = [r for rows in metric_rows(report).values() for r in rows if r[1] != "judge_win_rate"]
    lines = ["", "## Template ablation", "",
             f"The same weights prompted with `{report['settings']['ablate_template']}` instead of their own template.",
             "", "| model | metric | own template | ablation | change |", "|---|---|---|---|---|"]
    for own, ablated in pairs:
        for label, key, rate in rows:
            a, b = get_metric(models[own], key), get_metric(models[ablated], key)
            if a is None or b is None:
                continue
            change = f"{(b - a) * 100:+.1f} pts" if rate else f"{b - a:+.3f}"
            lines.append(f"| {own} | {label} | {format_cell(a, rate)} | {format_cell(b, rate)} | {change} |")
    return lines


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(report: dict, path: Path) -> None:
    rows = [(label, key) for rows in metric_rows(report).values() for label, key, rate in rows if rate]
    names = list(report["models"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) * max(1, len(names) / 2)), 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [get_metric(report["models"][name], key) or 0.0 for _, key in rows]
        ax.bar([x + (k - (len(names) - 1) / 2) * width for x in range(len(rows))], values, width=width, label=name)
    ax.set_xticks(list(range(len(rows))), [label for label, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.legend(fontsize=7)
    ax.set_title("Same prompts, every model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(report: dict, path: Path) -> None:
    names = [n for n, m in report["models"].items() if "heldout_loss" in m]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    ax.bar(range(len(names)), [report["models"][n]["heldout_loss"]["loss"] for n in names])
    ax.set_xticks(list(range(len(names))), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("nats per reference token")
    ax.set_title("Held-out loss (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, report: dict, prompts: list[EvalPrompt], answers: dict[str, list[dict]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for name, rows in answers.items():
            for p, row in zip(prompts, rows):
                f.write(json.dumps({"model": name, "prompt": p.messages[-1]["content"], **row}) + "\n")
    plot_rates(report, out / "summary.png")
    if any("heldout_loss" in m for m in report["models"].values()):
        plot_loss(report, out / "heldout_loss.png")
    (out / "report.md").write_text(render_markdown(report, prompts, answers), encoding="utf-8")
