"""The one trainer registry: every trainer tuneful ships, by name → its command, settings class, run function and
recipes. The CLI's training commands, the UI's Train page and the README's trainer table are all made from it, so
adding a trainer is its package (config, data, losses, trainer) plus one entry here (docs/architecture.md).

Each entry's ``load`` imports the trainer when a run (or its settings) is first needed: the trainer modules load
torch and transformers, which ``tuneful --help`` must not wait for. That is the one reason these imports are lazy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple


class TrainerParts(NamedTuple):
    settings: type  # the typed config a recipe builds (``tuneful <command> --settings`` lists it)
    run: Callable[[Any], Any]  # config → :class:`tuneful.train.loop.RunResult` (setup → train → save)
    errors: tuple[type[Exception], ...]  # data errors the CLI prints as one line (they name the fix)


@dataclass(frozen=True)
class Flag:
    """A CLI option of one trainer that stands for a setting: ``override`` turns its value into ``key=value``."""

    option: str  # e.g. --add-template-tokens
    help: str
    override: Callable[[Any], str | None]
    repeatable: bool = False  # a list option (given several times); otherwise an on/off switch

    @property
    def param(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class TrainerEntry:
    command: tuple[str, ...]  # the words after ``tuneful``
    help: str  # one line: the CLI's help, the UI's and the README's description
    load: Callable[[], TrainerParts]
    recipes: tuple[str, ...] = ()  # file patterns under recipes/ that train with it
    flags: tuple[Flag, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.command[0]

    def settings_class(self) -> type:
        return self.load().settings


def _sft() -> TrainerParts:
    from .sft.config import SFTConfig
    from .sft.trainer import run_sft
    from .tokenization.preflight import PreflightError

    return TrainerParts(SFTConfig, run_sft, (PreflightError,))


def _dpo() -> TrainerParts:
    from .dpo.config import DPOConfig
    from .dpo.trainer import run_dpo

    return TrainerParts(DPOConfig, run_dpo, _preference_errors())


def _kto() -> TrainerParts:
    from .kto.config import KTOConfig
    from .kto.trainer import run_kto

    return TrainerParts(KTOConfig, run_kto, _preference_errors())


def _reward() -> TrainerParts:
    from .reward.config import RewardConfig
    from .reward.trainer import run_reward

    return TrainerParts(RewardConfig, run_reward, _preference_errors())


def _grpo() -> TrainerParts:
    from .rl.config import GRPOConfig
    from .rl.trainer import run_grpo

    return TrainerParts(GRPOConfig, run_grpo, _online_errors())


def _online_dpo() -> TrainerParts:
    from .rl.online_dpo import OnlineDPOConfig, run_online_dpo

    return TrainerParts(OnlineDPOConfig, run_online_dpo, _online_errors())


def _preference_errors() -> tuple[type[Exception], ...]:
    from .preference.pairs import PreferenceDataError
    from .tokenization.preflight import PreflightError

    return PreflightError, PreferenceDataError


def _online_errors() -> tuple[type[Exception], ...]:
    from .rl.rewards import RewardSpecError
    from .tokenization.preflight import PreflightError

    return PreflightError, RewardSpecError


def _reward_fns(section: str) -> Flag:
    return Flag("--reward-fn", "MODULE:FUNCTION or FILE.py:FUNCTION called as fn(prompt=, completion=, record=) -> "
                "number; repeatable, added to the reward sources.",
                lambda specs: f"{section}.rewards=" + ",".join(f"python:{s}" for s in specs) if specs else None,
                repeatable=True)


TEMPLATE_TOKENS = Flag("--add-template-tokens", "Same as data.add_template_tokens=true: the template's markers "
                       "become special tokens of a base tokenizer that lacks them.",
                       lambda on: "data.add_template_tokens=true" if on else None)

TRAINERS: dict[str, TrainerEntry] = {entry.name: entry for entry in [
    TrainerEntry(("sft",), "Supervised fine-tuning, full or LoRA, causal or encoder-decoder.", _sft,
                 ("sft_*.yaml", "seq2seq_*.yaml"), (TEMPLATE_TOKENS,)),
    TrainerEntry(("dpo",), "Preference tuning after SFT: DPO, robust DPO, IPO, hinge, SimPO or ORPO.", _dpo,
                 ("dpo_*.yaml", "orpo_*.yaml")),
    TrainerEntry(("kto",), "KTO on unpaired replies labelled desirable / undesirable (thumbs up / down).", _kto,
                 ("kto_*.yaml",)),
    TrainerEntry(("rm", "train"), "A reward model (Bradley–Terry on preference pairs).", _reward, ("rm_*.yaml",)),
    TrainerEntry(("grpo",), "Online RL with verifiable rewards (GRPO): sample groups, reward them, learn from the "
                 "differences.", _grpo, ("grpo_*.yaml",), (_reward_fns("grpo"),)),
    TrainerEntry(("online-dpo",), "Online DPO: each step, DPO on the best and worst of replies the policy just "
                 "sampled, ranked by the reward sources.", _online_dpo, (), (_reward_fns("online_dpo"),)),
]}


def run_summary(result: Any) -> dict:
    """A training command's JSON summary: what every run has, what its trainer adds (``details``), and the last
    logged mean reward of an online run."""
    summary = {"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
               "eval": result.eval_metrics, **result.details}
    rewards = [row["reward_mean"] for row in result.history if "reward_mean" in row]
    if rewards:
        summary["reward_mean"] = rewards[-1]
    summary["model_dir"] = str(result.model_dir)
    return summary


TABLE_START, TABLE_END = "<!-- trainers:start -->", "<!-- trainers:end -->"


def trainer_table(recipes_dir: Path) -> str:
    """The README's trainer table (between its markers), from the registry and the recipes that exist."""
    rows = ["| Command | Trains | Recipes |", "|---|---|---|"]
    for entry in TRAINERS.values():
        files = sorted(p.name for pattern in entry.recipes for p in recipes_dir.glob(pattern))
        rows.append(f"| `tuneful {' '.join(entry.command)}` | {entry.help} | "
                    f"{', '.join(f'`recipes/{f}`' for f in files) or '—'} |")
    return "\n".join(rows)


def update_readme(readme: Path, recipes_dir: Path) -> bool:
    """Rewrite the table between the README's markers; whether it changed."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    new = text[:start] + "\n" + trainer_table(recipes_dir) + "\n" + text[end:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text
