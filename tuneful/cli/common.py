"""Helpers shared by CLI commands: loading tokenizers and reading conversation arguments."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_tokenizer(spec: str | None, *, trust_remote_code: bool = False) -> Any:
    """A tokenizer folder or hub id; ``None`` or ``starter`` gives the tiny tokenizer trained on the sample."""
    if spec in (None, "starter"):
        from ..samples import starter_tokenizer

        return starter_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, use_fast=True, trust_remote_code=trust_remote_code)


def parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(f"--now {value!r} is not an ISO date-time such as 2024-07-26T12:00:00")


def read_conversations(path: Path) -> tuple[list[list[dict]], bool]:
    """CONV.json holds one conversation (a list of messages) or a list of them.

    A conversation may also be written as ``{"messages": [...]}``. Returns (conversations, was_single).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"--messages {path}: {exc}")
    if isinstance(data, dict) and "messages" in data:
        return [data["messages"]], True
    if not isinstance(data, list):
        fail(f"--messages {path}: expected a list of messages or a list of conversations")
    if data and all(isinstance(m, dict) and "role" in m for m in data):
        return [data], True
    convs = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "messages" in item:
            item = item["messages"]
        if not isinstance(item, list):
            fail(f"--messages {path}: item {i} is neither a message list nor {{'messages': [...]}}")
        convs.append(item)
    return convs, False
