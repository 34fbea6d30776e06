"""``tuneful data ...``: convert instruction data to canonical JSONL and inspect it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail

data_app = typer.Typer(help="Instruction data: convert and inspect.", no_args_is_help=True)

FORMAT_HELP = ("auto, alpaca, dolly, self_instruct, flan, sharegpt, lima, messages, oasst, oasst_rows, preference, "
               "hh_rlhf, sharegpt_preference, unpaired")


def _load(source: str, format: str, on_error: str, split: str, **options):
    from ..data.loader import load
    from ..data.messages import ConvertOptions
    from ..data.types import RecordError

    try:
        result = load(source, format=format, on_error=on_error, split=split, options=ConvertOptions(**options))
    except RecordError as exc:
        fail(f"{exc}\n(use --on-error skip to skip and count bad records)")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if result.report.records_in == 0:
        fail(f"{source}: empty input, no records in it")
    return result


@data_app.command("convert")
def convert(
    source: str = typer.Argument(..., help="Local .jsonl/.json/.parquet/.csv, dataset folder, or Hugging Face dataset id."),
    out: Path = typer.Option(..., "--out", help="Output canonical JSONL."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    on_error: str = typer.Option("fail", "--on-error", help="fail: stop at the first bad record; skip: count and report it."),
    oasst_paths: str = typer.Option("all", "--oasst-paths", help="OpenAssistant trees: all root-to-leaf paths, or top (best-ranked)."),
    oasst_lang: Optional[str] = typer.Option(None, "--lang", help="OpenAssistant: keep only messages in this language (e.g. en)."),
    allow_empty_assistant: bool = typer.Option(False, "--allow-empty-assistant", help="Keep empty assistant turns."),
    think: str = typer.Option("keep", "--think", help="A <think>...</think> block opening a reply: keep it verbatim, or split it into reasoning_content."),
    parse_text_tool_calls: bool = typer.Option(False, "--parse-text-tool-calls", help="Hermes-style <tool_call>{json}</tool_call> text in replies (and <tool_response> results) becomes structured tool calls and tool messages."),
    split: str = typer.Option("train", "--split", help="Split of a Hugging Face dataset."),
) -> None:
    """Convert any supported format to canonical JSONL; the last stdout line is a JSON summary."""
    from ..data.loader import write_jsonl

    result = _load(source, format, on_error, split, oasst_paths=oasst_paths, oasst_lang=oasst_lang,
                   allow_empty_assistant=allow_empty_assistant, think=think,
                   parse_text_tool_calls=parse_text_tool_calls)
    write_jsonl(result.items, out)
    for where, message in result.report.skipped[:20]:
        typer.echo(f"skipped {message}", err=True)
    if len(result.report.skipped) > 20:
        typer.echo(f"... and {len(result.report.skipped) - 20} more skipped", err=True)
    report = result.report
    if report.ignored_fields:
        fields = ", ".join(f"{name} ({count})" for name, count in report.ignored_fields.most_common(12))
        typer.echo(f"fields the {report.format} loader does not use (not written): {fields}", err=True)
    for note, count in sorted(report.notes.items()):
        typer.echo(f"note: {note} = {count}", err=True)
    typer.echo(f"format: {report.format}; wrote {report.written} item(s) to {out}")
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

    from ..data.types import RecordError
    from ..tokenization.view import highlighted, inspect_data

    try:
        seen = inspect_data(source, tokenizer=tokenizer, template=template, shown=n, max_length=max_length,
                            overlong=overlong, format=format, on_error=on_error, last_turn_only=last_turn_only)
    except RecordError as exc:
        fail(f"{exc}\n(use --on-error skip to skip and count bad records)")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))

    console = Console()
    console.print(f"[bold]{seen.source}[/] — format {seen.loaded.report.format}, template {seen.template.origin}")
    for i, (conversation, example) in enumerate(seen.shown):
        title = f"example {i + 1}: {example.trained_tokens}/{len(example.input_ids)} tokens trained (highlighted)"
        console.print(Panel(highlighted(conversation, example), title=title, expand=False))
    table = Table(title="dataset")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    stats, report = seen.stats, seen.report
    for name, value in stats.rows():
        table.add_row(name, value)
    console.print(table)
    for finding in report.findings:
        console.print(f"[{'red' if finding.severity == 'error' else 'yellow'}]{finding}[/]")
    if not report.findings:
        console.print("[green]preflight: all checks passed[/]")


@data_app.command("mix")
def mix_cmd(
    recipe: Path = typer.Argument(..., help="Mixture recipe (YAML): sources with weight or count, total, seed, "
                                            "templates for labelled data, cap, temperature, template_types."),
    out: Path = typer.Option(..., "--out", help="Output canonical JSONL; the report goes to OUT.mixture.json/.md."),
) -> None:
    """Mix sources (and labelled task data through templates) by weight or count; the last stdout line is a JSON
    summary with written, by_source and by_template_type."""
    from ..data.loader import write_jsonl
    from ..data.mix_recipe import RecipeError, read_recipe
    from ..data.mixture import mix, render_report
    from ..data.types import RecordError

    if not recipe.is_file():
        fail(f"{recipe}: no such recipe file")
    try:
        result = mix(read_recipe(recipe))
    except RecipeError as exc:
        fail(str(exc))
    except RecordError as exc:
        fail(f"{exc}\n(set on_error: skip in the recipe to skip and count bad records)")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    write_jsonl(result.items, out)
    stem = out.with_suffix("")
    Path(f"{stem}.mixture.json").write_text(json.dumps(result.report, indent=2, ensure_ascii=False))
    Path(f"{stem}.mixture.md").write_text(render_report(result.report))
    for where, message in result.load_report.skipped[:20]:
        typer.echo(f"skipped {message}", err=True)
    if result.load_report.ignored_fields:
        fields = ", ".join(f"{name} ({n})" for name, n in result.load_report.ignored_fields.most_common(12))
        typer.echo(f"fields no template or setting reads (not written): {fields}", err=True)
    typer.echo(render_report(result.report))
    summary = {key: result.report[key] for key in ("written", "by_source", "by_template_type", "skipped_by_reason")}
    typer.echo(json.dumps({**summary, "report": f"{stem}.mixture.json"}))
