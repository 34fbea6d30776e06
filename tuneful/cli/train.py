"""``tuneful sft``, ``dpo``, ``kto``, ``grpo``, ``online-dpo`` and ``merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

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


def sft(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
        show_settings: bool = SETTINGS_OPT,
        add_template_tokens: bool = typer.Option(False, "--add-template-tokens",
                                                 help="Same as data.add_template_tokens=true: the template's markers "
                                                      "become special tokens of a base tokenizer that lacks them.")) -> None:
    """Supervised fine-tuning (full or LoRA). The last stdout line is a JSON summary."""
    from ..sft.config import SFTConfig

    if add_template_tokens:
        overrides = [*(overrides or []), "data.add_template_tokens=true"]
    cfg = _recipe(SFTConfig, recipe, overrides, show_settings)
    if cfg is None:
        return
    from ..tokenization.preflight import PreflightError
    from ..sft.trainer import run_sft

    try:
        result = run_sft(cfg)
    except PreflightError as exc:
        fail(str(exc))
    echo_summary({"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
                  "model_dir": str(result.model_dir)})


def dpo(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
        show_settings: bool = SETTINGS_OPT) -> None:
    """Preference tuning after SFT: DPO, robust DPO, IPO, hinge, SimPO or ORPO. The last stdout line is JSON."""
    from ..dpo.config import DPOConfig

    cfg = _recipe(DPOConfig, recipe, overrides, show_settings)
    if cfg is None:
        return
    from ..dpo.trainer import run_dpo

    _run_preference(run_dpo, cfg)


def kto(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
        show_settings: bool = SETTINGS_OPT) -> None:
    """KTO on unpaired replies labelled desirable / undesirable (thumbs up / down). The last stdout line is JSON."""
    from ..kto.config import KTOConfig

    cfg = _recipe(KTOConfig, recipe, overrides, show_settings)
    if cfg is None:
        return
    from ..kto.trainer import run_kto

    _run_preference(run_kto, cfg)


REWARD_FN_OPT = typer.Option(None, "--reward-fn", help="MODULE:FUNCTION or FILE.py:FUNCTION called as "
                             "fn(prompt=, completion=, record=) -> number; repeatable, added to the reward sources.")


def grpo(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
         show_settings: bool = SETTINGS_OPT, reward_fn: Optional[List[str]] = REWARD_FN_OPT) -> None:
    """Online RL with verifiable rewards (GRPO): sample groups, reward them, learn from the differences.
    The last stdout line is JSON."""
    from ..rl.config import GRPOConfig
    from ..rl.trainer import run_grpo

    _run_online(GRPOConfig, run_grpo, "grpo", recipe, overrides, show_settings, reward_fn)


def online_dpo(recipe: Optional[Path] = RECIPE_ARG, overrides: Optional[List[str]] = OVERRIDES_ARG,
               show_settings: bool = SETTINGS_OPT, reward_fn: Optional[List[str]] = REWARD_FN_OPT) -> None:
    """Online DPO: each step, DPO on the best-vs-worst of replies the policy just sampled, ranked by the
    reward sources. The last stdout line is JSON."""
    from ..rl.online_dpo import OnlineDPOConfig, run_online_dpo

    _run_online(OnlineDPOConfig, run_online_dpo, "online_dpo", recipe, overrides, show_settings, reward_fn)


def _run_online(cls: type, run_fn: Any, section: str, recipe: Optional[Path], overrides: Optional[List[str]],
                show_settings: bool, reward_fn: Optional[List[str]]) -> None:
    if reward_fn:
        overrides = [*(overrides or []), f"{section}.rewards=" + ",".join(f"python:{spec}" for spec in reward_fn)]
    cfg = _recipe(cls, recipe, overrides, show_settings)
    if cfg is None:
        return
    from ..tokenization.preflight import PreflightError
    from ..rl.rewards import RewardSpecError

    try:
        result = run_fn(cfg)
    except (PreflightError, RewardSpecError) as exc:
        fail(str(exc))
    last = next((r for r in reversed(result.history) if "reward_mean" in r), {})
    echo_summary({"steps": result.steps, "final_loss": result.final_loss, "reward_mean": last.get("reward_mean"),
                  "eval": result.eval_metrics, "model_dir": str(result.model_dir)})


def _run_preference(run_fn: Any, cfg: Any) -> None:
    """Run a trainer with a reference policy (DPO, KTO) and print its JSON summary."""
    from ..dpo.data import PreferenceDataError
    from ..tokenization.preflight import PreflightError

    try:
        result = run_fn(cfg)
    except (PreflightError, PreferenceDataError) as exc:
        fail(str(exc))
    echo_summary({"steps": result.steps, "final_loss": result.final_loss, "eval": result.eval_metrics,
                  "reference": result.reference, "reference_cached": result.reference_cached,
                  "model_dir": str(result.model_dir)})


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
