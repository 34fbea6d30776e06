"""``tuneful model ...``: what tuneful will do with a model (``check``), and the architecture matrix (``matrix``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail

model_app = typer.Typer(help="Models: what tuneful does with an architecture, and which it supports.",
                        no_args_is_help=True)


@model_app.command("check")
def check_cmd(
    name_or_path: str = typer.Argument(..., help="Model folder, hub id, or a folder / config.json with a config only "
                                                 "(then random weights of that shape are probed)."),
    max_length: int = typer.Option(2048, "--max-length", help="Row length a run would use (sliding-window checks)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as one JSON object (last line)."),
) -> None:
    """Architecture, head (split or the model's own forward), MoE loss, LoRA targets, attention, packing, chat
    template and any refusal with its fix: the probes every trainer runs when it loads the model."""
    from ..models.check import chat_template_finding, check_model, load_for_check

    try:
        model, read = load_for_check(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:
        fail(f"{name_or_path}: cannot load a causal LM ({type(error).__name__}: {error}). Fix: a folder with "
             "config.json (and weights), or a hub id; --trust-remote-code for code shipped with it")
    findings = check_model(model, name=name_or_path, max_length=max_length)
    findings["weights"] = "read" if read else "random (config only)"
    findings["chat_template"] = chat_template_finding(name_or_path)
    if as_json:
        typer.echo(json.dumps(findings))
        return
    for key, value in findings.items():
        if key != "problems":
            typer.echo(f"{key:>24}: {value}")
    typer.echo(f"{'problems':>24}: {'none' if not findings['problems'] else ''}")
    for problem in findings["problems"]:
        typer.echo(f"  - {problem}")


@model_app.command("matrix")
def matrix_cmd(
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the support table (docs/models.md)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Rewrite the README's generated model-support "
                                                                 "paragraph (between its markers)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also save each built tiny model under this folder."),
) -> None:
    """Build a tiny random model of every causal-LM architecture transformers ships and probe each: the table of
    what tuneful does with it, or why it was skipped."""
    from ..models.matrix import markdown_table, matrix_rows, update_readme

    rows = matrix_rows(save_to=save)
    table = markdown_table(rows)
    if markdown:
        markdown.write_text(table)
    if readme:
        update_readme(readme, rows)
    typer.echo(table)
    built = sum(1 for r in rows if not r["skipped"])
    typer.echo(json.dumps({"architectures": len(rows), "built": built, "skipped": len(rows) - built}))
