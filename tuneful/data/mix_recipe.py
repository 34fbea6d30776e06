"""The mixture recipe: typed sources and settings, read from YAML (or a trainer's ``data.train`` list) with
every problem — unknown keys, wrong shapes, failed cross-checks — reported at once, each with where it is.

Boundary: mappings in, a checked :class:`MixRecipe` out; reading data and mixing are :mod:`.mixture`'s.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """Every problem of a mixture recipe at once (what :class:`tuneful.config.ConfigError` is for settings; the data
    layer sits below the settings machinery, so it raises its own)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid recipe:\n" + "\n".join(f"  - {p}" for p in problems))


TEMPLATE_TYPES = ("zero_shot", "few_shot", "cot")
# meta keys that name a loaded record's task / template type (FLAN rows keep both, with or without "_")
TASK_KEYS = ("task_name", "_task_name", "task", "family")
TEMPLATE_TYPE_KEYS = ("template_type", "_template_type")


@dataclass
class TaskTemplate:
    input: str = ""  # the user turn: a Python format string or Jinja over the record's fields
    target: str = ""  # the assistant turn (the answer), the same way


@dataclass
class SourceSpec:
    path: str = ""  # a file, dataset folder or Hugging Face id
    recipe: str = ""  # or another mixture recipe (YAML), mixed first
    name: str = ""  # the name in reports; default: path or recipe
    weight: float | None = None  # share of what counts leave of the total
    count: int | None = None  # exactly this many records
    format: str = "auto"  # data format of a loaded source
    split: str = "train"  # split of a dataset id
    task: str = ""  # one task name for every record of the source
    task_field: str = ""  # a record field naming its task (default: task_name, task, family in meta)
    templates: list[TaskTemplate] = field(default_factory=list)  # labelled data: how a record becomes a turn
    options_field: str = ""  # a field holding the answer options (a list), appended when the template lacks them
    options_rate: float = 0.5  # share of records whose options are shown (FLAN renders with and without)
    rationale_field: str = ""  # a field holding a rationale: the record can be a chain-of-thought example
    template_types: dict[str, float] | None = None  # this source's template-type proportions (default: recipe's)

    @property
    def label(self) -> str:
        return self.name or self.path or self.recipe


@dataclass
class MixRecipe:
    sources: list[SourceSpec] = field(default_factory=list)
    total: int | None = None  # records to write when weights are used (default: the weighted sources' records)
    seed: int = 0
    cap: int | None = None  # examples-proportional mixing cap per task (None: no cap)
    temperature: float = 1.0  # task shares ∝ min(n, cap) ** (1 / temperature): > 1 flattens towards uniform
    categories: str = ""  # CSV with a task column and a category column (FLAN's flan_collection_info.csv)
    category_column: str = "Generic Task Category"
    task_column: str = "Dataset"
    category_weights: dict[str, float] = field(default_factory=dict)  # category → weight (others 1.0)
    template_types: dict[str, float] = field(default_factory=lambda: {"zero_shot": 1.0})
    shots: int = 2  # exemplars in a few-shot prompt (fewer when the budget or the task is short)
    shot_budget: int = 512  # tokens a few-shot prompt may hold (words without a tokenizer)
    shot_separator: str = "\n\n"
    tokenizer: str = ""  # tokenizer folder/id to count tokens for the budget; empty: count words
    cot_trigger: str = "Think step by step, then give the answer."  # appended to a chain-of-thought prompt
    cot_target: str = "{rationale}\nSo the answer is {answer}."  # the chain-of-thought reply
    options_header: str = "OPTIONS:"
    on_error: str = "fail"  # fail on a bad record, or skip it (counted with its reason and location)


def _problems_of_source(spec: SourceSpec, where: str) -> list[str]:
    problems = []
    if bool(spec.path) == bool(spec.recipe):
        problems.append(f"{where}: give exactly one of path or recipe")
    if (spec.weight is None) == (spec.count is None):
        problems.append(f"{where}: give exactly one of weight or count")
    if spec.weight is not None and spec.weight <= 0:
        problems.append(f"{where}.weight: {spec.weight} must be > 0")
    if spec.count is not None and spec.count < 0:
        problems.append(f"{where}.count: {spec.count} must be >= 0")
    if spec.recipe and spec.templates:
        problems.append(f"{where}: templates apply to labelled records (path), not to a recipe's conversations")
    for i, t in enumerate(spec.templates):
        if not t.input or not t.target:
            problems.append(f"{where}.templates[{i}]: needs both input and target")
    if (spec.options_field or spec.rationale_field) and not spec.templates:
        problems.append(f"{where}: options_field/rationale_field need templates (labelled records)")
    if not 0 <= spec.options_rate <= 1:
        problems.append(f"{where}.options_rate: {spec.options_rate} must be in [0, 1]")
    if spec.template_types is not None:
        problems += _template_type_problems(spec.template_types, f"{where}.template_types")
    return problems


def _template_type_problems(proportions: dict, where: str) -> list[str]:
    problems = [f"{where}: {k!r} is not one of {', '.join(TEMPLATE_TYPES)}" for k in proportions
                if k not in TEMPLATE_TYPES]
    if any(not isinstance(v, (int, float)) or v < 0 for v in proportions.values()) or not sum(proportions.values()):
        problems.append(f"{where}: proportions must be numbers >= 0 with a positive sum")
    return problems


def _from_mapping(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """A dataclass from a YAML mapping: unknown keys and wrong shapes reported with where they are."""
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {data!r}")
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"{where}.{key}: unknown key; known: {', '.join(names)}")
            continue
        if key == "sources":
            if not isinstance(value, list) or not value:
                problems.append(f"{where}.sources: a non-empty list of {{path|recipe, weight|count}}")
                continue
            value = [_from_mapping(SourceSpec, v, f"{where}.sources[{i}]", problems) for i, v in enumerate(value)]
        elif key == "templates":
            if isinstance(value, dict):
                value = [value]
            if not isinstance(value, list):
                problems.append(f"{where}.templates: a list of {{input, target}}")
                continue
            value = [_from_mapping(TaskTemplate, v, f"{where}.templates[{i}]", problems) for i, v in enumerate(value)]
        elif key in ("weight", "temperature", "options_rate") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{where}.{key}: expected a number, got {value!r}")
                continue
            value = float(value)
        elif key in ("count", "total", "cap", "seed", "shots", "shot_budget") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{where}.{key}: expected a whole number, got {value!r}")
                continue
        elif key in ("template_types", "category_weights") and not isinstance(value, dict):
            problems.append(f"{where}.{key}: expected a mapping, got {value!r}")
            continue
        elif names[key].type in ("str", str) and not isinstance(value, str):
            value = str(value)
        values[key] = value
    return cls(**values)


def recipe_problems(recipe: MixRecipe) -> list[str]:
    problems = []
    for i, spec in enumerate(recipe.sources):
        problems += _problems_of_source(spec, f"sources[{i}]")
    if not recipe.sources:
        problems.append("sources: at least one source is required")
    if recipe.total is not None and recipe.total < 0:
        problems.append(f"total: {recipe.total} must be >= 0")
    if recipe.total is not None and not any(s.weight is not None for s in recipe.sources):
        problems.append("total: only applies to sources with a weight; every source here has a count")
    if recipe.cap is not None and recipe.cap < 1:
        problems.append(f"cap: {recipe.cap} must be >= 1")
    if recipe.temperature <= 0:
        problems.append(f"temperature: {recipe.temperature} must be > 0")
    if recipe.shots < 1 or recipe.shot_budget < 1:
        problems.append("shots and shot_budget: must be >= 1")
    if recipe.on_error not in ("fail", "skip"):
        problems.append(f"on_error: {recipe.on_error!r} is not fail or skip")
    problems += _template_type_problems(recipe.template_types, "template_types")
    names = Counter(s.label for s in recipe.sources)
    problems += [f"sources: the name {n!r} is used {k} times; give each source its own name" for n, k in names.items()
                 if k > 1]
    return problems


def recipe_from_dict(data: Any, origin: str = "recipe") -> MixRecipe:
    """A checked recipe, or a RecipeError naming every problem at once."""
    problems: list[str] = []
    recipe = _from_mapping(MixRecipe, data, origin, problems)
    problems += [f"{origin}: {p}" for p in recipe_problems(recipe)]  # with the parse problems: all at once
    if problems:
        raise RecipeError(problems)
    return recipe


def read_recipe(path: str | Path) -> MixRecipe:
    import yaml

    path = Path(path)
    recipe = recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))
    base = path.parent  # relative paths in a recipe are relative to the recipe
    for spec in recipe.sources:
        spec.name = spec.name or spec.path or spec.recipe  # a source is named by its path as the recipe writes it
        for attr in ("path", "recipe"):
            value = getattr(spec, attr)
            if value and not Path(value).is_absolute() and (base / value).exists():
                setattr(spec, attr, str(base / value))
    if recipe.categories and not Path(recipe.categories).is_absolute() and (base / recipe.categories).exists():
        recipe.categories = str(base / recipe.categories)
    return recipe
