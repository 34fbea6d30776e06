"""The one conversation type of tuneful, and its validation.

Every loader converts its format into these types; every later stage (templates, masks, SFT, DPO,
eval) reads only these. Validation errors name the record (``file:line`` or dataset row) and the
rule that failed, so a bad line can be found and fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A record that breaks a rule. ``rule`` is a short machine-readable reason used in skip reports."""

    def __init__(self, rule: str, detail: str, where: str = ""):
        self.rule = rule
        self.detail = detail
        self.where = where
        super().__init__(f"{where + ': ' if where else ''}{rule}: {detail}")

    def at(self, where: str) -> "RecordError":
        """The same error, located at ``where`` (e.g. ``data.jsonl:12``)."""
        return RecordError(self.rule, self.detail, where)


@dataclass(frozen=True)
class Message:
    """One turn. ``role`` is system, user or assistant; ``content`` is plain text."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """An ordered list of messages plus free-form metadata (source, id, ...), never rendered."""

    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dicts(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.to_dicts()}
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages ending with a user turn) and two candidate final assistant replies."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        if self.meta:
            out["meta"] = self.meta
        return out


def make_message(role: Any, content: Any) -> Message:
    if not isinstance(role, str) or role not in ROLES:
        raise RecordError("unknown_role", f"role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise RecordError("content_not_string", f"{role} content is {type(content).__name__}, not a string")
    return Message(role, content)


def validate_messages(
    messages: tuple[Message, ...] | list[Message],
    *,
    require_assistant: bool = True,
    allow_empty_assistant: bool = False,
) -> None:
    """Check the rules every conversation must meet; raise :class:`RecordError` on the first break."""
    if not messages:
        raise RecordError("empty_conversation", "the conversation has no messages")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise RecordError("unknown_role", f"message {i} has role {m.role!r}")
        if not isinstance(m.content, str):
            raise RecordError("content_not_string", f"message {i} content is not a string")
        if m.role == "system" and i != 0:
            raise RecordError("system_not_first", f"message {i} is a system message; only the first may be")
        if m.role == "assistant" and not m.content.strip() and not allow_empty_assistant:
            raise RecordError(
                "empty_assistant",
                f"message {i} is an empty assistant turn (allow with allow_empty_assistant=True)",
            )
    if require_assistant and not any(m.role == "assistant" for m in messages):
        raise RecordError("no_assistant_turn", "an SFT conversation needs at least one assistant turn")


def make_conversation(
    messages: list[Message],
    meta: dict[str, Any] | None = None,
    *,
    require_assistant: bool = True,
    allow_empty_assistant: bool = False,
) -> Conversation:
    validate_messages(messages, require_assistant=require_assistant, allow_empty_assistant=allow_empty_assistant)
    return Conversation(tuple(messages), dict(meta or {}))


def make_preference(
    prompt: list[Message], chosen: Any, rejected: Any, meta: dict[str, Any] | None = None
) -> PreferencePair:
    if not prompt:
        raise RecordError("empty_prompt", "the preference prompt has no messages")
    validate_messages(prompt, require_assistant=False, allow_empty_assistant=True)
    if prompt[-1].role != "user":
        raise RecordError("prompt_not_ending_with_user", "a preference prompt must end with a user turn")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise RecordError("content_not_string", f"{name} is {type(text).__name__}, not a string")
        if not text.strip():
            raise RecordError("empty_response", f"{name} is empty")
    if chosen == rejected:
        raise RecordError("chosen_equals_rejected", "chosen and rejected are identical")
    return PreferencePair(tuple(prompt), chosen, rejected, dict(meta or {}))
