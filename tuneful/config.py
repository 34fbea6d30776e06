"""Typed configuration helpers shared by every recipe (SFT now, DPO later).

A recipe is a tree of dataclasses; each field carries its help text in ``metadata["help"]``. YAML
files and ``key=value`` CLI overrides are both applied through :func:`build`, so they cannot drift
apart. All problems (unknown keys, wrong types, failed cross-checks) are collected and raised
together in one :class:`ConfigError`, each naming the setting, where it came from, and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _coerce(value: Any, annotation: Any, key: str, origin: str, problems: list[str]) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's annotated type."""
    kind = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if kind in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        # the alternative whose shape the value has (a YAML list for ``str | list[dict]``), else the first
        shaped = [a for a in inner if typing.get_origin(a) in (list, dict) and isinstance(value, typing.get_origin(a))]
        return _coerce(value, (shaped or inner)[0], key, origin, problems)
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{key} ({origin}): expected a list, got {value!r}")
            return value
        return [_coerce(v, args[0] if args else Any, key, origin, problems) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        problems.append(f"{key} ({origin}): expected true/false, got {value!r}")
        return value
    if annotation in (int, float):
        try:
            number = annotation(value) if not isinstance(value, bool) else None
            if number is None or (annotation is int and float(value) != number):
                raise ValueError
            return number
        except (TypeError, ValueError):
            problems.append(f"{key} ({origin}): expected {annotation.__name__}, got {value!r}")
            return value
    if annotation is str:
        return str(value)
    return value


def _apply(obj: Any, values: dict, origin: str, prefix: str, problems: list[str]) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(fields)
            problems.append(f"{dotted} ({origin}): unknown setting; known here: {known}")
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                problems.append(f"{dotted} ({origin}): expected a section (mapping), got {value!r}")
                continue
            _apply(current, value, origin, f"{dotted}.", problems)
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, origin, problems))


def _nest(dotted: dict[str, str]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def parse_overrides(items: list[str]) -> tuple[dict[str, str], list[str]]:
    values, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"{item!r} (command line): overrides are key=value, e.g. train.lr=1e-4")
            continue
        values[key.strip()] = value
    return values, problems


def _validate(obj: Any, prefix: str, problems: list[str]) -> None:
    """Run every ``check()`` in the tree (the cross-checks), collecting their messages."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, f"{prefix}{f.name}.", problems)
    check = getattr(obj, "check", None)
    if callable(check):
        problems.extend(f"{prefix}{msg}" for msg in check())


def build(cls: type[T], yaml_path: str | Path | None = None, overrides: list[str] | None = None, *,
          values: dict | None = None, values_origin: str = "form") -> T:
    """A recipe from defaults, then a YAML file, then ``values`` (a parsed recipe, e.g. the UI's form, named
    ``values_origin`` in errors), then ``key=value`` overrides; all errors at once."""
    import yaml

    obj = cls()
    problems: list[str] = []
    if yaml_path is not None:
        data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            problems.append(f"{yaml_path}: a recipe must be a YAML mapping")
        else:
            _apply(obj, data, str(yaml_path), "", problems)
    if values is not None:
        _apply(obj, values, values_origin, "", problems)
    dotted, bad = parse_overrides(overrides or [])
    problems += bad
    _apply(obj, _nest(dotted), "command line", "", problems)
    try:
        _validate(obj, "", problems)
    except (TypeError, ValueError):  # a cross-check tripped over a value already reported as mistyped
        pass
    if problems:
        raise ConfigError(problems)
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def to_yaml(obj: Any) -> str:
    """The whole recipe as YAML that :func:`build` reads back to the same settings."""
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def problems_by_setting(problems: list[str], keys: list[str]) -> dict[str, list[str]]:
    """Each problem of a :class:`ConfigError` under the setting it names ("" for those naming none)."""
    import re

    known, out = set(keys), {}
    for problem in problems:
        match = re.match(r"([\w.]+)", problem)
        key = match.group(1) if match and match.group(1) in known else ""
        out.setdefault(key, []).append(problem)
    return out


def settings_of(cls: type) -> list[tuple[str, Any, str, Any]]:
    """(dotted key, default, help, annotation) for every setting of a recipe class, sections walked in order."""
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", value, f.metadata.get("help", ""), hints[f.name]))

    walk(cls(), "")
    return rows


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every setting: the reference for docs and ``--help``."""
    return [(key, repr(default), help_text) for key, default, help_text, _ in settings_of(cls)]
