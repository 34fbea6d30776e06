"""``tuneful data ...``: convert instruction data to canonical JSONL and inspect it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail, load_tokenizer

data_app = typer.Typer(help="Instruction data: convert and inspect.", no_args_is_help=True)

FORMAT_HELP = "auto, alpaca, dolly, self_instruct, sharegpt, lima, messages, oasst, preference, hh_rlhf, sharegpt_preference"


def _load(source: str, format: str, on_error: str, oasst_paths: str, allow_empty_assistant: bool, split: str):
    from ..data.formats import ConvertOptions
    from ..data.loader import load
    from ..data.types import RecordError

    try:
        options = ConvertOptions(oasst_paths=oasst_paths, allow_empty_assistant=allow_empty_assistant)
        return load(source, format=format, on_error=on_error, split=split, options=options)
    except RecordError as exc:
        fail(f"{exc}\n(use --on-error skip to skip and count bad records)")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


@data_app.command("convert")
def convert(
    source: str = typer.Argument(..., help="Local .jsonl/.json/.parquet/.csv, dataset folder, or Hugging Face dataset id."),
    out: Path = typer.Option(..., "--out", help="Output canonical JSONL."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    on_error: str = typer.Option("fail", "--on-error", help="fail: stop at the first bad record; skip: count and report it."),
    oasst_paths: str = typer.Option("all", "--oasst-paths", help="OpenAssistant trees: all root-to-leaf paths, or top (best-ranked)."),
    allow_empty_assistant: bool = typer.Option(False, "--allow-empty-assistant", help="Keep empty assistant turns."),
    split: str = typer.Option("train", "--split", help="Split of a Hugging Face dataset."),
) -> None:
    """Convert any supported format to canonical JSONL; the last stdout line is a JSON summary."""
    from ..data.loader import write_jsonl

    result = _load(source, format, on_error, oasst_paths, allow_empty_assistant, split)
    write_jsonl(result.items, out)
    for where, message in result.report.skipped[:20]:
        typer.echo(f"skipped {message}", err=True)
    if len(result.report.skipped) > 20:
        typer.echo(f"... and {len(result.report.skipped) - 20} more skipped", err=True)
    typer.echo(f"format: {result.report.format}; wrote {result.report.written} item(s) to {out}")
    typer.echo(json.dumps(result.report.summary()))


@data_app.command("inspect")
def inspect_cmd(
    source: Optional[str] = typer.Argument(None, help="Data to inspect; default: the starter sample shipped with tuneful."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder; default: a tiny one trained on the sample."),
    template: Optional[str] = typer.Option(None, "--template", help="Built-in name or .jinja file; default: the tokenizer's own."),
    n: int = typer.Option(3, "-n", help="How many examples to show."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Token limit to check truncation against."),
    overlong: str = typer.Option("drop", "--overlong", help="Overlong examples: drop, truncate, or fail."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    on_error: str = typer.Option("skip", "--on-error", help="fail or skip (skips are counted in the table)."),
    last_turn_only: bool = typer.Option(False, "--last-turn-only", help="Train only the final assistant turn."),
) -> None:
    """Render examples with trained tokens highlighted, plus a statistics table and preflight findings."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from ..inspect import dataset_stats, highlighted
    from ..masking import ConversationTokenizer
    from ..preflight import preflight
    from ..samples import starter_path
    from ..templates.registry import resolve

    source = source or str(starter_path())
    result = _load(source, format, on_error, "all", False, "train")
    conversations = result.conversations
    if not conversations:
        fail(f"{source}: no conversations to inspect ({len(result.preferences)} preference pairs; skipped: {result.report.summary()['skipped_by_reason']})")
    tok = load_tokenizer(tokenizer)
    try:
        chat_template = resolve(template, tok, tokenizer or "starter tokenizer")
        ctok = ConversationTokenizer(tok, chat_template, last_turn_only=last_turn_only)
        report = preflight(tok, ctok, conversations, max_length=max_length, overlong=overlong)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))

    console = Console()
    console.print(f"[bold]{source}[/] — format {result.report.format}, template {chat_template.origin}")
    for i, example in enumerate(report.examples[:n]):
        title = f"example {i + 1}: {example.trained_tokens}/{len(example.input_ids)} tokens trained (highlighted)"
        console.print(Panel(highlighted(example), title=title, expand=False))
    stats = dataset_stats(result.report, conversations, report)
    table = Table(title="dataset")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in stats.rows():
        table.add_row(name, value)
    console.print(table)
    for finding in report.findings:
        console.print(f"[{'red' if finding.severity == 'error' else 'yellow'}]{finding}[/]")
    if not report.findings:
        console.print("[green]preflight: all checks passed[/]")
