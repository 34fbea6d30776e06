"""What the pages of ``tuneful ui`` share: the names a page offers besides paths (the sandbox model, a model's
own template), how a failure is shown, the template a dropdown stands for, and what the pages read from run
folders (the latest run, a run's pictures, the models trained under the root). No page layout here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..templates.registry import builtin_names
from . import runs
from .paths import RootFolder

OWN_TEMPLATE = "(the model's or tokenizer's own)"
SANDBOX = "sandbox"


def failed(exc: BaseException) -> str:
    return f"❌ {exc}"


def chosen_template(root: RootFolder, choice: str | None) -> str | None:
    """The template setting a page's dropdown stands for: None (the own one), a built-in name, or a .jinja file."""
    if not choice or choice == OWN_TEMPLATE:
        return None
    return choice if choice in builtin_names() else str(root.path(choice, must_exist=True))


def latest_run(root: RootFolder, kinds: tuple[str, ...]) -> str:
    """The most recently started run of these kinds (what a reloaded page watches again)."""
    found = [f for f in runs.find_runs(root.root) if runs.read_info(f).kind in kinds]
    return root.relative(found[0]) if found else ""


def picture(path: Path) -> Any:
    """A PNG a run wrote, as an image the page shows (None when it is not there)."""
    if not path.exists():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def model_choices(root: RootFolder) -> list[str]:
    """Models a page can offer: the shipped sandbox base, and every trained model (or adapter) under the root."""
    return [SANDBOX, *(root.relative(f / "model") for f in runs.find_runs(root.root)
                       if (f / "model" / "tuneful.json").exists())]
