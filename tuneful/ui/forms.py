"""The Train page's form: each trainer's typed settings as fields, and the fields back to a recipe.

Fields, defaults and help text come from the trainers' settings dataclasses (the source of
``tuneful sft --settings`` too); a filled form is checked by :func:`tuneful.config.build`, so the page
shows exactly the errors the command would print, all at once, each under the setting it names.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import ConfigError, build, problems_by_setting, settings_of


@dataclass(frozen=True)
class Field:
    """One setting as the form shows it."""

    key: str  # dotted, e.g. train.lr
    value: Any  # what the recipe (or the default) sets
    default: Any
    help: str
    annotation: Any

    @property
    def section(self) -> str:
        return self.key.rsplit(".", 1)[0] if "." in self.key else "general"

    @property
    def boolean(self) -> bool:
        return self.annotation is bool

    @property
    def text(self) -> str:
        """The value in a text box: strings as they are, None as empty, the rest as YAML (lists as ``[a, b]``)."""
        if self.value is None:
            return ""
        if isinstance(self.value, str):
            return self.value
        return yaml.safe_dump(self.value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")

    def parse(self, shown: Any) -> Any:
        """A text box's (or check box's) content back to a recipe value, for :func:`build` to check."""
        if self.boolean:
            return bool(shown)
        shown = "" if shown is None else str(shown)
        optional = type(None) in typing.get_args(self.annotation)
        if not shown.strip():
            return None if optional or self.default is None else ("" if self._is_text else shown)
        if self._is_text:
            return shown
        try:
            return yaml.safe_load(shown)
        except yaml.YAMLError:
            return shown  # build() names the setting and the type it expected

    @property
    def _is_text(self) -> bool:
        if typing.get_origin(self.annotation) in (typing.Union, types.UnionType):
            return [a for a in typing.get_args(self.annotation) if a is not type(None)] == [str]
        return self.annotation is str


def fields(cls: type, recipe: dict | None = None) -> list[Field]:
    """Every setting of ``cls``: its value in ``recipe`` (a nested mapping, e.g. a loaded YAML) or its default."""
    out = []
    for key, default, help_text, annotation in settings_of(cls):
        node: Any = recipe or {}
        for part in key.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        out.append(Field(key, default if node is _UNSET else node, default, help_text, annotation))
    return out


_UNSET = object()


def unknown_settings(cls: type, recipe: dict) -> list[str]:
    """Keys of ``recipe`` that ``cls`` has no setting for (a form would not show them: the page names them)."""
    known = {f.key for f in fields(cls)}
    sections = {key.rsplit(".", 1)[0] for key in known if "." in key}

    def walk(values: dict, prefix: str) -> list[str]:
        out = []
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and dotted in sections:
                out += walk(value, f"{dotted}.")
            elif dotted not in known:
                out.append(dotted)
        return out

    return walk(recipe, "")


def recipe_values(form_fields: list[Field], shown: list[Any]) -> dict:
    """The nested recipe the form holds (every setting, as typed)."""
    out: dict = {}
    for field, value in zip(form_fields, shown):
        node = out
        *parents, leaf = field.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = field.parse(value)
    return out


@dataclass
class FormCheck:
    """What checking a filled form gave: the settings, or the problems by setting ("" for the rest)."""

    settings: Any | None
    problems: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return self.settings is not None

    def markdown(self) -> str:
        if self.ok:
            return "✅ settings are valid"
        lines = [f"❌ {sum(map(len, self.problems.values()))} problem(s):"]
        for key, problems in self.problems.items():
            for problem in problems:
                detail = re.sub(r"^ ?(\([^)]*\))?:? ?", "", problem.removeprefix(key))
                lines.append(f"- **{key or 'recipe'}**: {detail}")
        return "\n".join(lines)


def check_form(cls: type, form_fields: list[Field], shown: list[Any]) -> FormCheck:
    try:
        return FormCheck(build(cls, values=recipe_values(form_fields, shown)), {})
    except ConfigError as exc:
        return FormCheck(None, problems_by_setting(exc.problems, [f.key for f in form_fields]))


def load_recipe(text: str) -> dict:
    """A recipe YAML's mapping (ValueError when it is not one)."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("a recipe must be a YAML mapping")
    return data
