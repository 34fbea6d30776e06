"""``tuneful template ...``: render conversations and show token-level train masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..tokenization.masking import load_tokenizer
from .common import fail, parse_now, read_conversations

CONV_HELP = ("CONV.json: one conversation or a list of them; each a message list or "
             "{messages, tools, chat_template_kwargs}.")

template_app = typer.Typer(help="Chat templates: list, render, and token masks.", no_args_is_help=True)


@template_app.command("list")
def list_templates() -> None:
    """List the built-in templates."""
    from ..templates.registry import builtin_names

    for name in builtin_names():
        typer.echo(name)


@template_app.command("render")
def render_cmd(
    messages: Path = typer.Option(..., "--messages", help=CONV_HELP),
    template: Optional[str] = typer.Option(None, "--template", help="Built-in name, .jinja file, or 'tokenizer'."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder: its template and special tokens."),
    add_generation_prompt: bool = typer.Option(False, "--add-generation-prompt", help="End with the assistant header."),
    bos_token: Optional[str] = typer.Option(None, "--bos-token", help="Value of bos_token in the template."),
    eos_token: Optional[str] = typer.Option(None, "--eos-token", help="Value of eos_token in the template."),
    now: Optional[str] = typer.Option(None, "--now", help="Clock for strftime_now, e.g. 2024-07-26T12:00:00."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of {rendered} / {error} objects."),
) -> None:
    """Render conversations exactly as transformers' apply_chat_template(tokenize=False) does."""
    from ..tokenization.masking import special_tokens_of
    from ..templates.registry import resolve
    from ..templates.render import error_json, render

    convs, _ = read_conversations(messages)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    try:
        chat_template = resolve(template, tok, tokenizer or "tokenizer")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    special = special_tokens_of(tok) if tok is not None else {}
    if bos_token is not None:
        special["bos_token"] = bos_token
    if eos_token is not None:
        special["eos_token"] = eos_token
    clock = parse_now(now)
    results = []
    for conv in convs:
        try:
            text = render(conv["messages"], chat_template.source, add_generation_prompt=add_generation_prompt,
                          special_tokens=special, now=clock, tools=conv["tools"], template_kwargs=conv["template_kwargs"])
            results.append({"rendered": text})
        except Exception as exc:  # template errors are part of the output, as in the goldens
            results.append({"error": error_json(exc)})
    if as_json:
        typer.echo(json.dumps(results, ensure_ascii=False))
        return
    for i, result in enumerate(results):
        if "error" in result:
            typer.echo(f"error in conversation {i}: {result['error']['type']}: {result['error']['message']}", err=True)
        else:
            typer.echo(result["rendered"], nl=False)
            if len(results) > 1:
                typer.echo("\n----")
    if any("error" in r for r in results):
        raise typer.Exit(1)


@template_app.command("mask")
def mask_cmd(
    messages: Path = typer.Option(..., "--messages", help=CONV_HELP),
    tokenizer: str = typer.Option(..., "--tokenizer", help="Tokenizer folder (or hub id)."),
    template: Optional[str] = typer.Option(None, "--template", help="Built-in name or .jinja file; default: the tokenizer's own."),
    last_turn_only: bool = typer.Option(False, "--last-turn-only", help="Train only the final assistant turn."),
    reasoning: str = typer.Option("keep", "--reasoning", help="Turns the template rewrites in history: keep (trained "
                                  "on their own, listed under examples) or drop_earlier (not trained)."),
    now: Optional[str] = typer.Option(None, "--now", help="Clock for strftime_now, e.g. 2024-07-26T12:00:00."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array of {input_ids, train_mask[, examples]} / {error}."),
) -> None:
    """Tokens and train mask (1 = trained) of each conversation, for any template.

    input_ids / train_mask: the whole conversation as apply_chat_template renders it, every assistant
    turn marked as printed there. When the template rewrites history (Qwen3 drops earlier reasoning),
    what training uses differs: then "examples" lists each training example's input_ids / train_mask.
    """
    from ..tokenization.masking import ConversationTokenizer
    from ..templates.registry import resolve
    from ..templates.render import error_json

    convs, _ = read_conversations(messages)
    tok = load_tokenizer(tokenizer)
    try:
        chat_template = resolve(template, tok, tokenizer)
        ctok = ConversationTokenizer(tok, chat_template, last_turn_only=last_turn_only, now=parse_now(now),
                                     reasoning=reasoning)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    results = []
    for conv in convs:
        try:
            example = ctok(conv["messages"], tools=conv["tools"], template_kwargs=conv["template_kwargs"])
            result = {"input_ids": example.input_ids, "train_mask": example.train_mask}
            trains_on = [(e.input_ids, e.train_mask) for e in example.examples]
            if example.rendered.turns and trains_on != [(example.input_ids, example.train_mask)]:
                # training differs from the full rendering as shown: say what it trains on
                result["examples"] = [{"input_ids": e.input_ids, "train_mask": e.train_mask} for e in example.examples]
            results.append(result)
        except Exception as exc:
            results.append({"error": error_json(exc)})
    if as_json:
        typer.echo(json.dumps(results))
        return
    for i, result in enumerate(results):
        if "error" in result:
            typer.echo(f"conversation {i}: error {result['error']['type']}: {result['error']['message']}")
            continue
        pieces = [f"[{tok.decode([t])!r}]" if m else tok.decode([t]) for t, m in zip(result["input_ids"], result["train_mask"])]
        typer.echo(f"conversation {i}: {sum(result['train_mask'])}/{len(result['train_mask'])} tokens trained "
                   "(trained tokens in [brackets])")
        typer.echo("".join(pieces))
        for k, extra in enumerate(result.get("examples", [])):
            pieces = [f"[{tok.decode([t])!r}]" if m else tok.decode([t]) for t, m in zip(extra["input_ids"], extra["train_mask"])]
            typer.echo(f"  training example {k}: {sum(extra['train_mask'])}/{len(extra['train_mask'])} tokens trained")
            typer.echo("  " + "".join(pieces))
