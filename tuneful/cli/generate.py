"""``tuneful generate``: Self-Instruct with any OpenAI-compatible teacher or a local model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail


def generate_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder: journal.jsonl (resumable), data.jsonl, tasks.jsonl, report.md/json."),
    n: int = typer.Option(..., "--n", min=1, help="Accepted tasks wanted."),
    seeds: str = typer.Option("tuneful", "--seeds", help="Seed tasks (Self-Instruct format), or 'tuneful' for the built-in set."),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="Model name on an OpenAI-compatible endpoint."),
    teacher_base_url: Optional[str] = typer.Option(None, "--teacher-base-url", help="e.g. http://127.0.0.1:8000/v1"),
    teacher_api_key_env: str = typer.Option("OPENAI_API_KEY", "--teacher-api-key-env",
                                            help="Environment variable holding the endpoint's API key."),
    teacher_local: Optional[str] = typer.Option(None, "--teacher-local",
                                                help="A local model instead (folder, hub id, adapter or 'sandbox')."),
    style: str = typer.Option("self-instruct", "--style", help="self-instruct (paper loop) or alpaca (20 triples per request)."),
    requests_per_round: int = typer.Option(8, "--requests-per-round", min=1),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight to the endpoint."),
    timeout_s: float = typer.Option(60.0, "--timeout", min=1.0, help="Seconds per request."),
    max_retries: int = typer.Option(4, "--max-retries", min=0, help="Retries on 429/5xx/timeouts, exponential backoff."),
    max_rounds: Optional[int] = typer.Option(None, "--max-rounds", min=1, help="Stop after this many rounds (default 20 + n)."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    rouge_threshold: float = typer.Option(0.7, "--rouge-threshold", help="Drop instructions with ROUGE-L F1 above this."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Grow an instruction dataset from seed tasks (Self-Instruct); rerun the same command to resume."""
    from ..selfinstruct.loop import GenerateSettings, run_generate
    from ..selfinstruct.teacher import EndpointSettings, EndpointTeacher, LocalTeacher

    if (teacher_model is None) == (teacher_local is None):
        fail("name exactly one teacher: --teacher-model (with --teacher-base-url) or --teacher-local")
    try:
        settings = GenerateSettings(out=out, n=n, seeds=seeds, style=style, requests_per_round=requests_per_round,
                                    rouge_threshold=rouge_threshold, max_rounds=max_rounds, max_tokens=max_tokens,
                                    temperature=temperature, seed=seed)
        if teacher_model is not None:
            teacher = EndpointTeacher(EndpointSettings(teacher_model, teacher_base_url, teacher_api_key_env,
                                                       concurrency, timeout_s, max_retries))
        else:
            teacher = LocalTeacher(teacher_local)
        try:
            report = run_generate(settings, teacher)
        finally:
            teacher.close()
    except (ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{report['accepted']} / {report['target']} tasks, {report['instances']} instances → {out / 'data.jsonl'}"
               f"; rejected {report['rejected']}; report: {out / 'report.md'}")
    if not report["reached_target"]:
        typer.echo(f"warning: stopped after {report['rounds']} rounds without reaching --n {n} (see the rejection "
                   "reasons; raise --max-rounds or use a stronger teacher)", err=True)
    summary = {k: report[k] for k in ("accepted", "target", "instances", "rounds", "rejected", "failed_requests")}
    typer.echo(json.dumps(summary))
