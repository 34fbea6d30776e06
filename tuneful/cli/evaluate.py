"""``tuneful eval``: base vs tuned (vs more) on the same prompts, one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def evaluate(
    models: str = typer.Option(..., "--models", help="Comma-separated MODEL specs (folders, hub ids, adapters, 'sandbox'); "
                                                    "the first is the judge's baseline."),
    prompts: str = typer.Option(..., "--prompts", help="JSONL prompt file (IFEval input_data.jsonl works as is), "
                                                      "or 'sandbox' for the sandbox's held-out set."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md, answers.jsonl and PNGs."),
    names: Optional[str] = typer.Option(None, "--names", help="Comma-separated report names, one per model."),
    template: Optional[str] = typer.Option(None, "--template", help="Use this template for every model "
                                                                    "(default: each model's own)."),
    ablate_template: Optional[str] = typer.Option(None, "--ablate-template",
                                                  help="Also evaluate every model with this template, to show the drop."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (default); > 0 samples."),
    seed: int = typer.Option(0, "--seed"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model name on an OpenAI-compatible "
                                                                          "endpoint: adds pairwise win rates."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="e.g. http://127.0.0.1:8000/v1"),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env",
                                          help="Environment variable holding the judge's API key."),
    lm_eval: Optional[str] = typer.Option(None, "--lm-eval", help="Comma-separated lm-evaluation-harness tasks run "
                                                                 "on every model (e.g. ifeval,mmlu; needs lm-eval)."),
    lm_eval_include: Optional[Path] = typer.Option(None, "--lm-eval-include", help="Folder of lm-eval task YAML "
                                                                                   "files (tasks on local data)."),
    lm_eval_chat_template: bool = typer.Option(True, "--lm-eval-chat-template/--lm-eval-raw",
                                               help="lm-eval prompts through the model's chat template (default), "
                                                    "or raw text (for base models)."),
    tools: Optional[Path] = typer.Option(None, "--tools", help="A Python file whose public functions (type hints, "
                                         "docstring with Args:) are the tools: every prompt becomes an episode whose "
                                         "calls are run until the model answers (task success needs an 'answer' field)."),
    max_turns: int = typer.Option(5, "--max-turns", min=1, help="Model turns in an episode (with --tools)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Evaluate models on the same prompts: IFEval checks, sandbox accuracy, held-out loss, stop rate, judge, and
    with --tools end-to-end tool-use episodes."""
    from ..infer.judge import JudgeSettings
    from ..eval.prompts import PromptFileError
    from ..eval.runner import EvalSettings, run_eval
    from ..sandbox.evaluation import SandboxTasks

    judge = JudgeSettings(judge_model, judge_base_url, judge_api_key_env) if judge_model else None
    try:
        settings = EvalSettings(models=_split(models), prompts=prompts, out=out, template=template,
                                ablate_template=ablate_template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                temperature=temperature, seed=seed, limit=limit, judge=judge,
                                trust_remote_code=trust_remote_code, device=device,
                                names=_split(names) if names else [], lm_eval_tasks=_split(lm_eval or ""),
                                lm_eval_include=str(lm_eval_include) if lm_eval_include else None,
                                lm_eval_chat_template=lm_eval_chat_template, tasks=SandboxTasks(), tools=tools,
                                max_turns=max_turns)
        report = run_eval(settings)
    except (PromptFileError, ValueError, OSError, RuntimeError) as exc:  # a judge failure too (JudgeError)
        fail(str(exc))
    _print_table(report, out)
    summary = {name: {k: m[k] for k in ("stop_rate",) if k in m} | _headline(m) for name, m in report["models"].items()}
    typer.echo(json.dumps({"report": str(out / "report.json"), "models": summary}))


def _headline(metrics: dict) -> dict:
    out = {}
    if "ifeval" in metrics:
        out["ifeval_prompt_strict"] = metrics["ifeval"]["prompt_strict"]
    if "sandbox" in metrics:
        out["sandbox_accuracy"] = metrics["sandbox"]["accuracy"]
    if "heldout_loss" in metrics:
        out["heldout_loss"] = metrics["heldout_loss"]["loss"]
    if "judge_win_rate" in metrics:
        out["judge_win_rate"] = metrics["judge_win_rate"]
    if "lm_eval" in metrics:
        out["lm_eval"] = metrics["lm_eval"]
    if "episodes" in metrics:
        out["task_success"] = metrics["episodes"]["task_success"]
        out["valid_call_rate"] = metrics["episodes"]["valid_call_rate"]
    return out


def _print_table(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..eval.report import format_cell, get_metric, metric_rows

    names = list(report["models"])
    table = Table(title=f"tuneful eval — {report['prompts']['count']} prompts — {out / 'report.md'}")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for title, rows in metric_rows(report).items():
        for label, key, rate in rows:
            table.add_row(f"{title}: {label}", *(format_cell(get_metric(report["models"][n], key), rate) for n in names))
    Console().print(table)
