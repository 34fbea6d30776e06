"""Where a chat template comes from: a built-in name, a user's ``.jinja`` file, or a tokenizer.

The resolved :class:`ChatTemplate` keeps its origin so that reports, preflight messages and saved
models can say exactly which template was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

TOKENIZER_TEMPLATE = "tokenizer"


@dataclass(frozen=True)
class ChatTemplate:
    """A template source string and where it came from (``builtin:chatml``, ``file:...``, ``tokenizer:...``)."""

    source: str
    origin: str

    @property
    def name(self) -> str:
        return self.origin.split(":", 1)[1] if ":" in self.origin else self.origin


def builtin_names() -> list[str]:
    folder = resources.files("tuneful.templates") / "builtin"
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


@lru_cache(maxsize=None)  # ChatTemplate is immutable; the demo renders hundreds of prompts with one
def builtin(name: str) -> ChatTemplate:
    path = resources.files("tuneful.templates") / "builtin" / f"{name}.jinja"
    if not path.is_file():
        raise ValueError(f"unknown built-in template {name!r}; built-ins are: {', '.join(builtin_names())}")
    return ChatTemplate(path.read_text(encoding="utf-8"), f"builtin:{name}")


def from_tokenizer(tokenizer: Any, where: str = "tokenizer") -> ChatTemplate:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is what HF applies
        template = template.get("default")
    if not template:
        raise ValueError(
            f"{where} has no chat_template; choose one with --template NAME|FILE "
            f"(built-ins: {', '.join(builtin_names())})"
        )
    return ChatTemplate(template, f"tokenizer:{where}")


def resolve(spec: str | None, tokenizer: Any = None, tokenizer_where: str = "tokenizer") -> ChatTemplate:
    """``spec`` is a built-in name, a path to a ``.jinja`` file, or None/"tokenizer" for the tokenizer's own."""
    if spec is None or spec == TOKENIZER_TEMPLATE:
        if tokenizer is None:
            raise ValueError("no template given and no tokenizer to take one from; pass --template NAME|FILE")
        return from_tokenizer(tokenizer, tokenizer_where)
    path = Path(spec)
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"template file {spec} does not exist")
        return ChatTemplate(path.read_text(encoding="utf-8"), f"file:{path}")
    return builtin(spec)


def run_template(settings: Any, tokenizer: Any) -> ChatTemplate:
    """The template a run trains with, from any trainer's data section: ``settings.template`` (the
    tokenizer's own, a built-in name or a .jinja file) and ``settings.tokenizer`` (where it came from)."""
    return resolve(settings.template, tokenizer, settings.tokenizer or "the model's tokenizer")
