"""The house plan (docs/architecture.md), measured from the code: every internal import, at module level and inside
functions alike, must point down the floors; no package cycle; trainers never import each other.

A failure names the importing module and what it imports, so a new edge is seen where it is written.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tuneful"

# The plan: a package's floor; imports go only to lower floors (and inside a package).
FLOORS = {
    "config": 1, "templates": 1, "data": 1, "samples": 1,
    "tokenization": 2, "models": 2,
    "train": 3, "infer": 3, "preference": 3,
    "sft": 4, "dpo": 4, "kto": 4, "reward": 4, "rl": 4,
    "eval": 4, "curate": 4, "selfinstruct": 4, "export": 4, "serve": 4,
    "sandbox": 5, "registry": 5,
    "ui": 6, "cli": 7,
}
TRAINERS = {"sft", "dpo", "kto", "reward", "rl"}


def _unit(module: str) -> str:
    """The plan's unit of a module: its package (``tuneful.train.loop`` → ``train``) or a top-level module."""
    return module.split(".")[1]


@cache
def imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, line) for every import of a tuneful module inside the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                    if not node.module:
                        targets = [f"{targets[0]}.{alias.name}" for alias in node.names]
                else:
                    targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("tuneful.") and _unit(target) != "__init__":
                    found.append((module, target, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"))
    return found


def edges() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, target, where in imports():
        if module.count(".") == 0:
            continue  # tuneful/__init__.py
        a, b = _unit(module), _unit(target)
        if a != b:
            out[(a, b)].append(f"{where} imports {target}")
    return out


def test_every_package_has_a_floor():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert units == set(FLOORS), f"add new packages to FLOORS here and to docs/architecture.md: {units ^ set(FLOORS)}"


def test_imports_point_down():
    wrong = [f"{a} (floor {FLOORS[a]}) -> {b} (floor {FLOORS[b]}): {where[0]}"
             for (a, b), where in sorted(edges().items()) if FLOORS[b] >= FLOORS[a]]
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_package_cycle_and_at_most_seven_floors():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges():
        graph[a].add(b)

    @cache
    def height(unit: str, seen: frozenset = frozenset()) -> int:
        assert unit not in seen, f"package cycle through {unit}: {sorted(seen)}"
        return 1 + max((height(b, seen | {unit}) for b in graph[unit]), default=0)

    tallest = max(FLOORS, key=height)
    assert height(tallest) <= 7, f"{height(tallest)} floors under {tallest}"
    assert height("cli") == 7  # the plan's 7 floors are all in use: the check above measures something


@pytest.mark.parametrize("rule", ["trainers", "train", "infer", "sandbox"])
def test_the_named_rules(rule: str):
    e = edges()
    if rule == "trainers":
        bad = [(a, b) for a, b in e if a in TRAINERS and b in TRAINERS]
    elif rule == "train":  # the shared loop imports nothing above it
        bad = [(a, b) for a, b in e if a == "train" and FLOORS[b] >= FLOORS["train"]]
    elif rule == "infer":  # the generation engine never imports the HTTP layer
        bad = [(a, b) for a, b in e if a == "infer" and b == "serve"]
    else:  # the sandbox is an application: only the CLI and the UI import it
        bad = [(a, b) for a, b in e if b == "sandbox" and a not in ("cli", "ui")]
    assert not bad, [f"{a} -> {b}: {e[(a, b)][0]}" for a, b in bad]


def test_each_package_says_what_it_is_for_and_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.splitlines()) == 2 and "import" in doc.splitlines()[1], \
            f"{init.relative_to(PACKAGE.parent)}: two lines: what the package is for, then what it may import"


def test_the_checks_see_a_wrong_import(tmp_path: Path, monkeypatch):
    """The measurement itself: an upward import written into a copy of the package is reported."""
    import shutil

    copy = tmp_path / "tuneful"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "sandbox_base"))
    loop = copy / "train" / "loop.py"
    loop.write_text(loop.read_text(encoding="utf-8") + "\n\ndef _upward():\n    from ..sft.trainer import SFTTrainer\n",
                    encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    imports.cache_clear()
    try:
        with pytest.raises(AssertionError, match=r"train \(floor 3\) -> sft \(floor 4\)"):
            test_imports_point_down()
    finally:
        imports.cache_clear()


def test_a_registered_trainer_appears_everywhere(tmp_path: Path, monkeypatch):
    """One registry entry is all the CLI, the UI's Train page and the README table need (docs/architecture.md)."""
    import json

    import gradio as gr
    from typer.testing import CliRunner

    from tuneful import registry
    from tuneful.cli.main import make_app
    from tuneful.sft.config import SFTConfig
    from tuneful.train.loop import RunResult
    from tuneful.ui.paths import RootFolder
    from tuneful.ui.train_page import train_page

    ran = []

    def run_cpo(cfg):
        ran.append(cfg)
        return RunResult(3, 0.5, {"eval_loss": 0.7}, tmp_path, model_dir=tmp_path / "model", details={"beta": 2.0})

    entry = registry.TrainerEntry(("cpo",), "CPO: preference pairs without a reference.",
                                  lambda: registry.TrainerParts(SFTConfig, run_cpo, ()), ("cpo_*.yaml",))
    monkeypatch.setitem(registry.TRAINERS, "cpo", entry)
    app = make_app(registry.TRAINERS)
    runner = CliRunner()
    assert "cpo" in runner.invoke(app, ["--help"]).output
    listed = runner.invoke(app, ["cpo", "--settings"])
    assert listed.exit_code == 0 and "train.lr = " in listed.output
    result = runner.invoke(app, ["cpo", "model.name_or_path=m", "data.train=t.jsonl", "train.lr=0.5"])
    assert result.exit_code == 0, result.output
    assert ran[0].train.lr == 0.5
    assert json.loads(result.output.strip().splitlines()[-1]) == {
        "steps": 3, "final_loss": 0.5, "eval_loss": 0.7, "eval": {"eval_loss": 0.7}, "beta": 2.0,
        "model_dir": str(tmp_path / "model")}

    with gr.Blocks() as page:
        train_page(page, RootFolder(tmp_path))
    choices = [c for block in page.blocks.values() if getattr(block, "elem_id", None) == "train-trainer"
               for c in block.choices]
    assert ("cpo", "cpo") in choices and ("sft", "sft") in choices

    (tmp_path / "cpo_tiny.yaml").write_text("model: {}\n")
    assert "| `tuneful cpo` | CPO: preference pairs without a reference. | `recipes/cpo_tiny.yaml` |" in \
        registry.trainer_table(tmp_path)


def test_the_readme_trainer_table_is_the_registry():
    from tuneful.registry import TABLE_END, TABLE_START, trainer_table

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    shown = readme[readme.index(TABLE_START) + len(TABLE_START): readme.index(TABLE_END)].strip()
    assert shown == trainer_table(PACKAGE.parent / "recipes"), \
        "the README's trainer table is stale: python -c 'from pathlib import Path; from tuneful.registry import " \
        "update_readme; update_readme(Path(\"README.md\"), Path(\"recipes\"))'"
