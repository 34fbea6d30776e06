"""``tuneful curate``: dedup, filter, score and select instruction data down to a budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import fail


def curate_cmd(
    source: str = typer.Argument(..., help="Input: file, dataset folder or Hugging Face id (any supported format)."),
    out: Path = typer.Option(..., "--out", help="Kept records (canonical JSONL); OUT.rejected.jsonl gets the rest."),
    budget: int = typer.Option(0, "--budget", help="Records to keep (0 = all that pass the filters)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder for report.md, report.json and PNGs "
                                          "(default: OUT's folder / <name>-report)."),
    selection: str = typer.Option("quality-diverse", "--selection", help="quality-diverse, k-center, cluster, random "
                                  "or first."),
    reference_model: str = typer.Option("", "--reference-model", help="Local causal LM (e.g. your base model) whose "
                                        "likelihood of each reply is a quality signal."),
    judge_model: str = typer.Option("", "--judge-model", help="OpenAI-compatible model rating each record 1-5."),
    judge_base_url: str = typer.Option("", "--judge-base-url", help="Judge endpoint (empty = OpenAI's)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env", help="Env var with the key."),
    ifd_model: str = typer.Option("", "--ifd-model", help="Small local causal LM for IFD scores."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Any curation setting as key=value, e.g. "
                                                 "--set near_threshold=0.7 --set semantic=false"),
    data_format: str = typer.Option("auto", "--format", help="Input format (auto-detected by default)."),
    on_error: str = typer.Option("fail", "--on-error", help="fail, or skip bad records (listed as stage 'load')."),
    show_settings: bool = typer.Option(False, "--settings", help="List every curation setting and exit."),
) -> None:
    """Curate instruction data: quality filters, exact/near/semantic dedup, scores, diversity-aware selection.

    The last stdout line is JSON: {"records_in", "kept", "rejected_by_stage"}.
    """
    from ..config import ConfigError, build, describe
    from ..curate.config import CurateSettings

    if show_settings:
        for key, default, help_text in describe(CurateSettings):
            typer.echo(f"{key} = {default}\n    {help_text}")
        return
    flags = [f"budget={budget}", f"selection={selection}", f"judge_model={judge_model}",
             f"judge_base_url={judge_base_url}", f"judge_api_key_env={judge_api_key_env}", f"ifd_model={ifd_model}",
             f"reference_model={reference_model}"]
    try:
        cfg = build(CurateSettings, None, flags + list(settings or []))
    except ConfigError as exc:
        fail(str(exc))
    from ..curate.pipeline import Curator
    from ..curate.report import rejected_path, write_outputs, write_report

    judge = None
    if cfg.judge_model:
        from ..selfinstruct.teacher import EndpointSettings, EndpointTeacher

        judge = EndpointTeacher(EndpointSettings(cfg.judge_model, cfg.judge_base_url or None, cfg.judge_api_key_env))
    try:
        result = Curator(cfg, judge=judge).run(source, format=data_format, on_error=on_error)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    finally:
        if judge is not None:
            judge.close()
    write_outputs(result, out)
    folder = report or out.parent / f"{out.stem}-report"
    write_report(result, cfg, folder, source=source)
    typer.echo(f"kept {len(result.kept)} of {result.records_in} -> {out}; removed -> {rejected_path(out)}; "
               f"report -> {folder / 'report.md'}")
    typer.echo(json.dumps({"records_in": result.records_in, "kept": len(result.kept),
                           "rejected_by_stage": result.rejected_by_stage()}))
