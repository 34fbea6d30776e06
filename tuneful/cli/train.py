"""The training commands, one per trainer of :mod:`tuneful.registry`, and ``tuneful merge``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from ..registry import TrainerEntry, run_summary
from .common import echo_summary, fail


def _recipe(cls: type, recipe: Optional[Path], overrides: Optional[List[str]], show_settings: bool) -> Any:
    """The typed config from a YAML recipe plus key=value overrides (None after listing the settings)."""
    from ..config import ConfigError, build, describe

    if show_settings:
        for key, default, help_text in describe(cls):
            typer.echo(f"{key} = {default}\n    {help_text}")
        return None
    overrides = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides.insert(0, str(recipe))  # no recipe file: the first argument is already an override
        recipe = None
    try:
        return build(cls, recipe, overrides)
    except ConfigError as exc:
        fail(str(exc))


RECIPE_ARG = typer.Argument(None, help="YAML recipe; settings below override it.")
OVERRIDES_ARG = typer.Argument(None, help="key=value settings, e.g. train.lr=1e-4 lora.enabled=true")
SETTINGS_OPT = typer.Option(False, "--settings", help="List every setting with its default and help.")


def trainer_command(entry: TrainerEntry) -> Callable[..., None]:
    """The command of a registered trainer: ``tuneful <command> [RECIPE] [key=value ...] [--settings]`` plus the
    entry's own flags; runs it and prints the JSON summary last."""

    def command(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
                show_settings: bool = SETTINGS_OPT, **flags: Any) -> None:
        overrides = [*(overrides or []), *(o for f in entry.flags if (o := f.override(flags[f.param])))]
        parts = entry.load()
        cfg = _recipe(parts.settings, recipe, overrides, show_settings)
        if cfg is None:
            return
        try:
            result = parts.run(cfg)
        except parts.errors as exc:
            fail(str(exc))
        echo_summary(run_summary(result))

    base = list(inspect.signature(command).parameters.values())[:3]
    extra = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]] if f.repeatable
                               else bool, default=typer.Option(None if f.repeatable else False, f.option, help=f.help))
             for f in entry.flags]
    command.__signature__ = inspect.Signature(base + extra)  # type: ignore[attr-defined]  # typer reads it
    command.__doc__ = f"{entry.help} The last stdout line is a JSON summary."
    command.__name__ = entry.name.replace("-", "_")
    return command


def merge(
    adapter: Path = typer.Argument(..., help="PEFT adapter folder written by tuneful sft with lora.enabled=true."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model; default: the one named in the adapter."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the checkpoint."),
) -> None:
    """Merge a LoRA adapter into its base model (safetensors, loads in transformers and vLLM)."""
    from ..train.output import merge_adapter

    try:
        path = merge_adapter(adapter, out, base=base, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"merged model written to {path}")
