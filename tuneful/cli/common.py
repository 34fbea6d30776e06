"""Helpers shared by CLI commands: loading tokenizers and reading conversation arguments."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import typer


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def echo_summary(summary: dict) -> None:
    """A training command's last stdout line, JSON. Under ``accelerate launch`` only the main process (rank 0)
    prints it: the other ranks' results lack what the main one logs, and their lines would interleave."""
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(summary))


def parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(f"--now {value!r} is not an ISO date-time such as 2024-07-26T12:00:00")


def read_conversations(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """CONV.json holds one conversation or a list of them, each as given to ``apply_chat_template``.

    A conversation is a list of messages, or an object ``{"messages": [...], "tools": [...],
    "chat_template_kwargs": {...}}`` (tools and kwargs optional). Returns
    (``[{"messages", "tools", "template_kwargs"}]``, was_single).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"--messages {path}: {exc}")
    if isinstance(data, dict) and "messages" in data:
        return [_conversation_item(data, path, 0)], True
    if not isinstance(data, list):
        fail(f"--messages {path}: expected a list of messages or a list of conversations")
    if data and all(isinstance(m, dict) and "role" in m for m in data):
        return [_conversation_item(data, path, 0)], True
    return [_conversation_item(item, path, i) for i, item in enumerate(data)], False


def _conversation_item(item: Any, path: Path, index: int) -> dict[str, Any]:
    if isinstance(item, list):
        return {"messages": item, "tools": None, "template_kwargs": None}
    if not (isinstance(item, dict) and isinstance(item.get("messages"), list)):
        fail(f"--messages {path}: item {index} is neither a message list nor {{'messages': [...]}}")
    unknown = set(item) - {"messages", "tools", "chat_template_kwargs"}
    if unknown:
        fail(f"--messages {path}: item {index} has unknown keys {sorted(unknown)} "
             "(a conversation object holds messages, tools and chat_template_kwargs)")
    kwargs = item.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        fail(f"--messages {path}: item {index}: chat_template_kwargs must be an object")
    return {"messages": item["messages"], "tools": item.get("tools"), "template_kwargs": kwargs}
