"""Seed tasks in Self-Instruct's format: ``{"instruction", "instances": [{"input", "output"}], "is_classification"}``.

``tuneful`` (the default) is the project's own seed set shipped in the package; any file in the
same format works, e.g. Self-Instruct's 175 ``seed_tasks.jsonl`` or Alpaca's.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..data.sources import read_jsonl
from .prompts import Instance, Task

BUILTIN = "tuneful"


def builtin_seed_path() -> Path:
    return Path(str(resources.files("tuneful.samples") / "seed_tasks.jsonl"))


def load_seeds(source: str = BUILTIN) -> list[Task]:
    """Every line is checked; bad lines are reported together with file:line."""
    path = builtin_seed_path() if source == BUILTIN else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"seed file {source} does not exist (or use '{BUILTIN}' for the built-in seeds)")
    tasks, errors = [], []
    for raw in read_jsonl(path):
        if raw.error is not None:
            errors.append(f"{raw.where}: not JSON ({raw.error.detail})")
            continue
        try:
            record = raw.value
            instances = tuple(Instance(str(i.get("input") or ""), str(i["output"])) for i in record.get("instances", []))
            if not isinstance(record.get("instruction"), str) or not record["instruction"].strip():
                raise ValueError("needs a non-empty 'instruction'")
            tasks.append(Task(record["instruction"].strip(), instances, bool(record.get("is_classification", False))))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            errors.append(f"{raw.where}: {exc}")
    if errors:
        raise ValueError(f"{len(errors)} bad seed line(s):\n  " + "\n  ".join(errors[:20]))
    if len(tasks) < 3:
        raise ValueError(f"{path} has {len(tasks)} seed tasks; Self-Instruct needs at least 3")
    return tasks
