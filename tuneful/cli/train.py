"""``tuneful sft`` and ``tuneful merge``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import fail


def sft(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe; settings below override it."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value settings, e.g. train.lr=1e-4 lora.enabled=true"),
    show_settings: bool = typer.Option(False, "--settings", help="List every setting with its default and help."),
) -> None:
    """Supervised fine-tuning (full or LoRA). The last stdout line is a JSON summary."""
    from ..config import ConfigError, build, describe
    from ..sft.config import SFTConfig

    if show_settings:
        for key, default, help_text in describe(SFTConfig):
            typer.echo(f"{key} = {default}\n    {help_text}")
        return
    overrides = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides.insert(0, str(recipe))  # no recipe file: the first argument is already an override
        recipe = None
    try:
        cfg = build(SFTConfig, recipe, overrides)
    except ConfigError as exc:
        fail(str(exc))
    from ..preflight import PreflightError
    from ..sft.trainer import run_sft

    try:
        result = run_sft(cfg)
    except PreflightError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
                           "model_dir": str(result.model_dir)}))


def merge(
    adapter: Path = typer.Argument(..., help="PEFT adapter folder written by tuneful sft with lora.enabled=true."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model; default: the one named in the adapter."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the checkpoint."),
) -> None:
    """Merge a LoRA adapter into its base model (safetensors, loads in transformers and vLLM)."""
    from ..sft.output import merge_adapter

    try:
        path = merge_adapter(adapter, out, base=base, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"merged model written to {path}")
